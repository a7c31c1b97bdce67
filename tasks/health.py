"""`worktask health`: one task per check, fanned out as a chord, then a finalize that writes the report."""

from __future__ import annotations

import base64
import binascii
import json
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import redis
from botocore.exceptions import BotoCoreError, ClientError
from sqlalchemy.exc import SQLAlchemyError

from worker import backups, jobs, migrator, quarantine, workers
from worker.app import app
from worker.connections import pg_connect, redis_client, shared_aws_client
from worker.constants import (
    LAST_VALIDATION_KEY,
    QUEUE_BULK,
    QUEUE_CONTROL,
    TASK_HEALTH_CHECK,
    TASK_HEALTH_FINALIZE,
    TASK_HEALTH_START,
)
from worker.errors import CheckFailed, WorktaskError
from worker.reports import Check, HealthReport
from worker.settings import Settings, mask_url
from worker.taskbase import JobTask, fan_out

CHECKS = ("postgres", "redis", "dynamodb", "backup_store", "workers", "migrations", "validation", "backups",
          "queues")
# The status rule: a failing check named here makes `unhealthy` (nothing works without it: no data, no job
# store, nobody to run jobs); any other failing check makes `degraded`; none failing is `healthy`.
CRITICAL = {"postgres", "redis", "workers"}

# What to do when a check fails, unless the check says something more precise (CheckFailed's hint).
HINTS = {
    "postgres": "start PostgreSQL or fix POSTGRES_HOST/POSTGRES_PORT/POSTGRES_DATABASE (or POSTGRES_SECRET_ARN)",
    "redis": "start Redis or fix CELERY_BROKER_URL / CELERY_RESULT_BACKEND",
    "dynamodb": "check AWS credentials, AWS_REGION and AWS_ENDPOINT_URL; a missing table: run worktask migrate",
    "backup_store": "check S3_BUCKET_NAME and its permissions, or that BACKUP_DIR exists and is writable",
    "workers": "start workers: worktask stack up or celery -A worker worker -Q control,bulk",
    "migrations": "run worktask migrate (drift: a migration file changed after it was applied; restore it)",
    "validation": "run worktask validate and read its issues (worktask validate --fix fixes the fixable ones)",
    "backups": "run worktask backup",  # a quarantine past retention: worktask backup cleanup (the check's hint)
    "queues": "check that Redis answers (worktask health --json shows the error)",
}


def check_postgres(settings: Settings) -> str:
    with pg_connect(settings) as conn:
        version, size = conn.execute(
            "select current_setting('server_version'), pg_size_pretty(pg_database_size(current_database()))"
        ).fetchone()
        where = f"{conn.info.host}:{conn.info.port}/{conn.info.dbname}"
    return f"PostgreSQL {version} at {where} ({size})"


def check_redis(settings: Settings) -> str:
    client = redis_client(settings, settings.celery_broker_url)
    info = client.info("server") | client.info("memory")
    return f"Redis {info['redis_version']} at {mask_url(settings.celery_broker_url)}, {info['used_memory_human']} used"



def check_dynamodb(settings: Settings) -> str:
    client = shared_aws_client(settings, "dynamodb")  # each check still asks DynamoDB itself
    where = settings.aws_endpoint_url or settings.aws_region
    try:
        table = client.describe_table(TableName=settings.dynamo_table_name)["Table"]
    except ClientError as err:
        if err.response.get("Error", {}).get("Code") == "ResourceNotFoundException":
            raise WorktaskError(f"DynamoDB at {where} answers but table {settings.dynamo_table_name} does not exist: "
                                "run worktask migrate") from None
        raise
    return f"table {settings.dynamo_table_name} {table['TableStatus']} at {where}, {table.get('ItemCount', 0)} items"


def check_backup_store(settings: Settings) -> str:
    return backups.store_for(settings).check()


def check_workers(settings: Settings) -> str:
    live = workers.live_workers(app, timeout=1.5)  # done when every bound worker answered; at most 1.5 s
    if not live:
        raise WorktaskError("no worker answered within 1.5 s")
    missing = {QUEUE_CONTROL, QUEUE_BULK} - {q for qs in live.values() for q in qs}
    if missing:
        raise WorktaskError(f"no worker consumes {', '.join(sorted(missing))}")
    names = ", ".join(f"{w} [{','.join(q)}]" for w, q in sorted(live.items()))
    return f"{len(live)} worker(s): {names}"


def check_migrations(settings: Settings) -> str:
    st = migrator.status(settings, migrator.script_path(settings))
    if st["drift"]:
        raise WorktaskError(f"drift: {', '.join(st['drift'])} changed after being applied")
    if st["pending"]:
        raise WorktaskError(f"{len(st['pending'])} pending ({', '.join(p['version'] for p in st['pending'])}): "
                            "run worktask migrate")
    return f"at head {st['current']}, {len(st['applied'])} applied, no drift"


def check_validation(settings: Settings) -> str:
    raw = redis_client(settings).get(LAST_VALIDATION_KEY)
    if not raw:
        return "no validation has run yet (worktask validate)"
    last = json.loads(raw)
    line = (f"last run {last['finished_at'][:19]}Z ({last['job_id']}): {last['records_checked']:,} records, "
            f"issues {last['by_severity'] or 'none'}, {last['fixed']} fixed")
    if not last["ok"]:
        raise WorktaskError(f"{line}; {last['error']}")
    return line


def _age(seconds: float) -> str:
    seconds = max(seconds, 0)
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    if seconds < 172_800:
        return f"{seconds / 3600:.1f}h"
    return f"{seconds / 86_400:.1f}d"


def _drill(newest: dict[str, Any], complete: list[dict[str, Any]], now: datetime) -> tuple[str, str | None]:
    """The last restore drill, from the verified.json markers the listing read: the newest complete backup's,
    else the newest drilled one's; (the detail's words, the backup id when the newest backup's drill failed).
    An older backup's failed drill is said, not a problem: it says nothing of the newer backups (their own
    drills will), and health would otherwise stay degraded for as long as that backup is kept."""
    drilled = newest if newest["verified"] else next((b for b in complete if b["verified"]), None)
    if drilled is None:
        return "never drilled (worktask backup verify ID --restore-test)", None
    v = drilled["verified"]
    which = "" if drilled is newest else f" of {drilled['backup_id']}"
    ago = _age((now - datetime.fromisoformat(v["at"])).total_seconds())
    return (f"drill{which} {'ok' if v['ok'] else 'FAILED'} {v['at'][:19]}Z ({ago} ago)"
            + ("" if drilled is newest else "; the newest not drilled yet"),
            None if v["ok"] or drilled is not newest else drilled["backup_id"])


# The nightly clean-up runs once a day: a quarantine past RETENTION_DAYS by more than that was missed by it.
CLEANUP_GRACE = timedelta(days=1)


def _quarantines(settings: Settings, store: Any, options: dict[str, Any],
                 now: datetime) -> tuple[str | None, tuple[str, str] | None]:
    """The quarantines of fixes kept (worker/quarantine.py), from one listing of their folder (no read): (the
    detail's words or None when there is none, a problem when one outlived RETENTION_DAYS and a day)."""
    kept = quarantine.list_quarantines(store, options)
    if not kept:
        return None, None
    newest = kept[0]
    ago = _age((now - newest["last_write"]).total_seconds())
    words = (f"{len(kept)} quarantine{'s' if len(kept) > 1 else ''} of fixes kept, newest {newest['job_id']} "
             f"({ago} old): worktask validate undo {newest['job_id']} puts its rows back")
    days = settings.retention_days
    overdue = [q["job_id"] for q in kept if now - q["last_write"] > timedelta(days=days) + CLEANUP_GRACE]
    if not overdue:
        return words, None
    words += (f"; {len(overdue)} older than RETENTION_DAYS ({days} days) and not cleaned up: "
              + ", ".join(overdue[-3:]))
    return words, (f"{len(overdue)} quarantine(s) past retention",
                   "worktask backup cleanup deletes the quarantines older than RETENTION_DAYS (beat runs it "
                   "nightly: check that beat runs, or run it from cron)")


def check_backups(settings: Settings, now: datetime | None = None) -> str:
    """The newest complete backup: its age against BACKUP_MAX_AGE_HOURS, its last validation (never validated,
    or failed, is a problem), the last restore drill (a failed one is a problem, none is not); and any failed
    backup since it; and the quarantines of fixes kept (one past RETENTION_DAYS and a day is a problem). Bounded
    by the store's own timeouts: one listing, then one read per manifest and marker; one listing of the
    quarantines."""
    now = now or datetime.now(UTC)
    options = backups.store_options(settings)
    store = backups.store_for(settings, options)
    listed = backups.list_backups(store, options, settings)
    complete = [b for b in listed if b["state"] == "complete"]
    where = store.url(options["prefix"] + "/")
    held, held_problem = _quarantines(settings, store, options, now)
    if not complete:
        failed = sum(b["state"] == "failed" for b in listed)
        raise CheckFailed(f"no complete backup in {where}" + (f" ({failed} failed)" if failed else "")
                          + (f"; {held}" if held else ""),
                          "run worktask backup" + (f"; {held_problem[1]}" if held_problem else ""))
    newest = complete[0]
    age_h = (now - datetime.fromisoformat(newest["created_at"])).total_seconds() / 3600
    limit = settings.backup_max_age_hours
    parts = [f"newest complete {newest['backup_id']}, {_age(age_h * 3600)} old (limit {limit:g}h)"]
    problems: list[tuple[str, str]] = []  # (what, hint)
    if age_h > limit:
        problems.append(("stale", "run worktask backup (and check that beat or cron takes one daily)"))
    v = newest["validated"]
    if v is None:
        ok_before = next((b["backup_id"] for b in complete if (b["validated"] or {}).get("ok")), None)
        parts.append("never validated" + (f" (newest validated: {ok_before})" if ok_before else ""))
        problems.append(("never validated", f"worktask backup validate {newest['backup_id']}"))
    else:
        ago = _age((now - datetime.fromisoformat(v["at"])).total_seconds())
        if v["ok"]:
            parts.append(f"validated ok {v['at'][:19]}Z ({ago} ago)")
        else:
            parts.append(f"validation FAILED {v['at'][:19]}Z ({ago} ago)")
            problems.append(("its validation failed", f"worktask backup validate {newest['backup_id']} names the "
                             "bad chunks; take a new backup: worktask backup"))
    drill, drill_failed = _drill(newest, complete, now)
    parts.append(drill)
    if drill_failed:
        problems.append(("drill failed", f"worktask backup verify {drill_failed} --restore-test names the tables "
                         "that do not match; take a new backup (worktask backup) and drill it"))
    since = [b for b in listed if b["backup_id"] > newest["backup_id"]]
    failed = [b["backup_id"] for b in since if b["state"] == "failed"]
    running = [b["backup_id"] for b in since if b["state"] == "incomplete"]
    if failed:
        parts.append(f"{len(failed)} failed since: {', '.join(failed[:3])}")
        problems.append((f"{len(failed)} failed since",
                         f"worktask jobs show {failed[0]} gives the error; then worktask backup"))
    if running:  # a backup still running looks the same: reported, not failed
        parts.append(f"{len(running)} incomplete since (running, or abandoned): {', '.join(running[:3])}")
    if held:
        parts.append(held)
    if held_problem:
        problems.append(held_problem)
    detail = "; ".join(parts)
    if problems:
        raise CheckFailed(f"{', '.join(p for p, _ in problems).upper()}: {detail}",
                          "; ".join(dict.fromkeys(h for _, h in problems)))
    return detail


QUEUE_SEP = "\x06\x16"  # kombu's Redis transport: a priority above 0 goes to the list "<queue>\x06\x16<priority>"
PRIORITY_STEPS = (0, 3, 6, 9)


def _waiting_job(raw: str | None) -> str | None:
    """The job id of a waiting kombu message, from its task kwargs (the body), if it has one."""
    if not raw:
        return None
    try:
        message = json.loads(raw)
        body = message["body"]
        if message.get("properties", {}).get("body_encoding") == "base64":
            body = base64.b64decode(body)
        _args, kwargs, _embed = json.loads(body)
        job_id = kwargs.get("job_id")
        return job_id if isinstance(job_id, str) else None
    except (ValueError, KeyError, TypeError, binascii.Error):
        return None


def check_queues(settings: Settings, now: datetime | None = None,
                 queues: tuple[str, ...] = (QUEUE_CONTROL, QUEUE_BULK)) -> str:
    """Depth of each queue (the Redis lists kombu keeps, priority sub-queues included) and the age of the
    job of the message consumed next (the list's tail): kombu and Celery record no enqueue time in a message,
    so the wait shown is the age of that message's job, an upper bound of its own wait."""
    now = now or datetime.now(UTC)
    client = redis_client(settings, settings.celery_broker_url)
    parts = []
    for queue in queues:
        names = [queue] + [f"{queue}{QUEUE_SEP}{p}" for p in PRIORITY_STEPS[1:]]
        with client.pipeline() as p:
            for name in names:
                p.llen(name)
                p.lindex(name, -1)
            got = p.execute()
        depth = sum(got[0::2])
        if not depth:
            parts.append(f"{queue}: 0 waiting")
            continue
        job_ids = [j for j in map(_waiting_job, got[1::2]) if j]
        stamps = [jobs_created(j) for j in job_ids]
        stamps = [s for s in stamps if s]
        if stamps:
            oldest = min(stamps)
            parts.append(f"{queue}: {depth} waiting, next from a job created {_age((now - oldest).total_seconds())}"
                         " ago")
        else:
            parts.append(f"{queue}: {depth} waiting (no enqueue time recorded)")
    return "; ".join(parts) + " (kombu stores no enqueue time: a wait is its job's age)"


def jobs_created(job_id: str) -> datetime | None:
    try:
        return datetime.strptime(job_id[:16], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    except ValueError:
        return None


RUNNERS = {"postgres": check_postgres, "redis": check_redis, "dynamodb": check_dynamodb,
           "backup_store": check_backup_store, "workers": check_workers, "migrations": check_migrations,
           "validation": check_validation, "backups": check_backups, "queues": check_queues}


def run_check(name: str, settings: Settings) -> Check:
    """Run one check; any failure becomes ok=False with a one-line detail, never an exception."""
    began = time.monotonic()
    hint = None
    try:
        detail, ok = RUNNERS[name](settings), True
    except (WorktaskError, psycopg.Error, SQLAlchemyError, redis.RedisError, BotoCoreError, ClientError,
            OSError) as err:
        text = str(err).strip().splitlines()
        detail, ok = (text[0] if text else type(err).__name__), False
        hint = getattr(err, "hint", None) or HINTS.get(name)
    return Check(name=name, ok=ok, detail=detail, hint=hint, seconds=round(time.monotonic() - began, 3))


def health_report(job_id: str, checks: list[Check]) -> HealthReport:
    failed = {c.name for c in checks if not c.ok}
    status = "healthy" if not failed else ("unhealthy" if failed & CRITICAL else "degraded")
    order = {n: i for i, n in enumerate(CHECKS)}
    checks = sorted(checks, key=lambda c: order.get(c.name, len(order)))
    error = None if not failed else "failing: " + ", ".join(sorted(failed, key=order.get))
    return HealthReport(job_id=job_id, state="succeeded", ok=not failed, status=status, checks=checks,
                        error=error)


@app.task(name=TASK_HEALTH_START, base=JobTask, bind=True)
def start(self: JobTask, job_id: str | None, options: dict[str, Any]) -> dict[str, Any]:
    if job_id is None:  # from beat: one run per schedule slot, however many beats fire
        job_id = jobs.scheduled(self.redis, "health", self.settings.crontab("health"), options)
        if job_id is None:
            return {"skipped": "slot already run, or a health check is running"}
    if not jobs.start(self.redis, job_id, len(CHECKS)):
        return {"job_id": job_id, "skipped": "already planned"}
    header = [check.s(job_id=job_id, name=name) for name in CHECKS]
    fan_out(header, finalize.s(job_id=job_id))
    return {"job_id": job_id, "chunks": len(CHECKS)}


@app.task(name=TASK_HEALTH_CHECK, base=JobTask, bind=True, soft_time_limit=60, time_limit=90)
def check(self: JobTask, job_id: str, name: str) -> dict[str, Any]:
    result = run_check(name, self.settings)
    jobs.add(self.redis, job_id)
    return result.model_dump()


@app.task(name=TASK_HEALTH_FINALIZE, base=JobTask, bind=True)
def finalize(self: JobTask, results: list[dict[str, Any]], job_id: str) -> dict[str, Any]:
    report = health_report(job_id, [Check(**r) for r in results])
    jobs.finish(self.redis, job_id, report)
    return {"job_id": job_id, "status": report.status}
