"""`worktask backup validate` (one task per chunk: checksum, decryption, decompression, row count) and
`worktask backup cleanup` (retention of backups and of the quarantines of fixes), the latter also run by beat."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from worker import backups, jobs, markers, quarantine, retention
from worker.app import app
from worker.chunkcheck import check_chunk, unlisted
from worker.constants import (
    TASK_BACKUP_VALIDATE_CHUNK,
    TASK_BACKUP_VALIDATE_FINALIZE,
    TASK_BACKUP_VALIDATE_START,
    TASK_CLEANUP_START,
)
from worker.errors import WorktaskError
from worker.plans import BackupValidatePlan
from worker.reports import BadChunk, CleanupReport, ValidateBackupReport, utcnow
from worker.settings import Settings
from worker.taskbase import JobTask, fan_out


def cleanup(settings: Settings, r: Any, options: dict[str, Any]) -> dict[str, Any]:
    """Every backup with its decision (worker/retention.py), the ones decided `delete` deleted, the unfinished
    uploads of backups whose job is not running (a worker killed, or the store lost, mid-object) aborted; then
    every quarantine of fixes with its decision, the old ones deleted (a failure is reported in
    `quarantine_errors`, never undoes or stops the backups' part). A dry run deletes and aborts nothing, and
    lists the same. {decisions, uploads, quarantines, quarantine_errors}."""
    store = backups.store_for(settings, options)
    listed = backups.list_backups(store, options, settings)
    decisions = retention.decide(listed, retention.Policy.from_options(options))
    dry = bool(options.get("dry_run"))
    if not dry:
        for d in decisions:
            if d["action"] == "delete":
                retention.delete_backup(store, options, d["backup_id"])

    def busy(job_id: str) -> bool:
        return jobs.state(r, job_id) in ("queued", "running")

    uploads = retention.abort_open_uploads(store, options, dry_run=dry, busy=busy)
    held, errors = cleanup_quarantines(store, options, options["retention_days"], dry, busy)
    return {"decisions": decisions, "uploads": uploads, "quarantines": held, "quarantine_errors": errors}


def cleanup_quarantines(store: Any, options: dict[str, Any], retention_days: int, dry: bool,
                        busy: Callable[[str], bool]) -> tuple[list[dict[str, Any]], list[str]]:
    """The quarantines' part of the clean-up: (decisions, errors); a store that cannot be listed is an error
    here, not a failed clean-up (the backups' part is done)."""
    try:
        listed = quarantine.list_quarantines(store, options)
    except (WorktaskError, ClientError, BotoCoreError, OSError) as err:
        lines = str(err).strip().splitlines()
        return [], [f"listing the quarantines: {lines[0] if lines else type(err).__name__}"]
    held = retention.decide_quarantines(listed, retention_days, busy=busy)
    return held, [] if dry else retention.delete_quarantines(store, options, held)


@app.task(name=TASK_BACKUP_VALIDATE_START, base=JobTask, bind=True)
def start(self: JobTask, job_id: str, options: dict[str, Any]) -> dict[str, Any]:
    backup_id = options["backup_id"]
    manifest = backups.read_manifest(backups.store_for(self.settings, options), options, backup_id, self.settings,
                                     options.get("allow_unauthenticated", False))
    header = [check.s(job_id=job_id, table=t["name"], chunk=c["n"], store=t["store"], path=c["key"],
                      sha256=c["sha256"], rows=c["rows"], size=c["bytes_stored"])
              for t in manifest["tables"] for c in t["chunks"]]
    jobs.save_plan(self.redis, job_id, BackupValidatePlan(encryption=manifest["encryption"],
                                                           compressed=manifest["options"]["compress"]))
    if not jobs.start(self.redis, job_id, len(header)):
        return {"job_id": job_id, "skipped": "already planned"}
    fan_out(header, finalize.s(job_id=job_id))
    return {"job_id": job_id, "chunks": len(header)}


@app.task(name=TASK_BACKUP_VALIDATE_CHUNK, base=JobTask, bind=True)
def check(self: JobTask, job_id: str, table: str, chunk: int, store: str, path: str, sha256: str, rows: int,
          size: int) -> dict[str, Any]:
    plan = jobs.load_plan(self.redis, job_id, BackupValidatePlan)
    options = jobs.options(self.redis, job_id)
    c = {"n": chunk, "key": path, "sha256": sha256, "rows": rows, "bytes_stored": size}
    reason = check_chunk(self.settings, options, options["backup_id"], plan.encryption, plan.compressed, store,
                         table, c)
    jobs.add(self.redis, job_id, rows=rows if reason is None else 0, nbytes=size, failed=1 if reason else 0)
    return {"table": table, "chunk": chunk, "path": path, "rows": rows, "reason": reason}


@app.task(name=TASK_BACKUP_VALIDATE_FINALIZE, base=JobTask, bind=True)
def finalize(self: JobTask, results: list[dict[str, Any]], job_id: str) -> dict[str, Any]:
    options = jobs.options(self.redis, job_id)
    bad = [BadChunk(table=r["table"], chunk=r["chunk"], path=r["path"], reason=r["reason"])
           for r in sorted(results, key=lambda r: (r["table"], r["chunk"])) if r["reason"]]
    bad += unlisted(backups.store_for(self.settings, options), options, {r["path"] for r in results})
    error = None
    if bad:
        error = f"{len(bad)} bad chunk(s): " + "; ".join(f"{b.table} chunk {b.chunk}: {b.reason}" for b in bad[:3])
    report = ValidateBackupReport(job_id=job_id, state="succeeded", ok=not bad, backup_id=options["backup_id"],
                                  chunks_checked=len(results),
                                  rows_checked=sum(r["rows"] for r in results if not r["reason"]),
                                  bad_chunks=bad, error=error)
    # The outcome beside the manifest (survives Redis): what `worktask health` reads as "validated".
    markers.write(backups.store_for(self.settings, options), options, options["backup_id"], markers.VALIDATED,
                  {"job_id": job_id, "ok": not bad, "at": utcnow().isoformat(), "chunks_checked": len(results),
                   "bad_chunks": len(bad), "error": error})
    jobs.finish(self.redis, job_id, report)
    return {"job_id": job_id, "bad": len(bad)}


@app.task(name=TASK_CLEANUP_START, base=JobTask, bind=True)
def cleanup_start(self: JobTask, job_id: str | None, options: dict[str, Any]) -> dict[str, Any]:
    if job_id is None:  # from beat: one run per schedule slot, however many beats fire; none while one runs
        options = {**backups.store_options(self.settings), **retention.policy_options(self.settings),
                   "dry_run": False, **options}
        job_id = jobs.scheduled(self.redis, "backup_cleanup", self.settings.crontab("backup_cleanup"), options)
        if job_id is None:
            return {"skipped": "slot already run, or a clean-up is running"}
        self.apply_async(kwargs={"job_id": job_id, "options": options})  # the job's own start: failures fail it
        return {"job_id": job_id, "scheduled": True}
    jobs.start(self.redis, job_id, 1)
    done = cleanup(self.settings, self.redis, options)
    decisions, errors = done["decisions"], done["quarantine_errors"]
    deleted = [{**{k: d[k] for k in ("backup_id", "state", "created_at", "bytes_stored")},
                "reason": "; ".join(d["reasons"])} for d in decisions if d["action"] == "delete"]
    jobs.add(self.redis, job_id, rows=len(deleted))
    policy = retention.Policy.from_options(options)
    error = None
    if errors:
        error = f"{len(errors)} quarantine error(s) (the backups' part is not affected): " + "; ".join(errors[:3])
    report = CleanupReport(job_id=job_id, state="succeeded", ok=not errors, retention_days=policy.retention_days,
                           policy=policy.as_dict(), dry_run=bool(options.get("dry_run")), deleted=deleted,
                           kept=len(decisions) - len(deleted), decisions=decisions, aborted_uploads=done["uploads"],
                           quarantines=done["quarantines"], error=error)
    jobs.finish(self.redis, job_id, report)
    return {"job_id": job_id, "deleted": len(deleted)}
