"""`worktask migrate` / `migrate rollback`: one task on `control` runs the migrations in order.

Migrations are sequential by nature; the job's chunks are the migrations, counted as each commits.
"""

from __future__ import annotations

from typing import Any

from worker import jobs, migrator, snapshot
from worker.app import app
from worker.constants import TASK_MIGRATE_START
from worker.reports import MigrateReport, utcnow
from worker.settings import Settings
from worker.taskbase import JobTask


def run_migrate(settings: Settings, options: dict[str, Any], on_total: Any = None,
                on_step: Any = None) -> MigrateReport:
    """Upgrade or roll back as `options` say; a dry run returns the SQL and changes nothing."""
    path = migrator.script_path(settings, options.get("migrations_path"))
    action, target, dry_run = options.get("action", "upgrade"), options.get("target"), bool(options.get("dry_run"))
    before = migrator.status(settings, path)
    started = utcnow()
    sql, versions = None, []
    if on_total:
        on_total(len(before["pending"]) if action == "upgrade" else len(before["applied"]))
    if dry_run:
        sql = migrator.dry_run_sql(settings, path, action, target or ("head" if action == "upgrade" else "-1"))
    elif action == "upgrade":
        versions = migrator.upgrade(settings, path, target or "head", settings.migration_lock_wait,
                                    settings.migration_lock_timeout, on_step)
    else:
        versions = migrator.downgrade(settings, path, target or "-1", settings.migration_lock_wait,
                                      settings.migration_lock_timeout, on_step)
    ensured = migrator.ensure(settings, path) if action == "upgrade" and not dry_run else []
    after = migrator.status(settings, path) if not dry_run else before
    return MigrateReport(job_id=options.get("job_id", ""), state="succeeded", ok=True, action=action,
                         dry_run=dry_run, started_at=started, finished_at=utcnow(), before=before["current"],
                         after=after["current"], versions=versions, sql=sql,
                         pending=[p["version"] for p in after["pending"]], drift=after["drift"],
                         migrations_path=str(path), ensured=ensured)


@app.task(name=TASK_MIGRATE_START, base=JobTask, bind=True, max_retries=0)
def start(self: JobTask, job_id: str, options: dict[str, Any]) -> dict[str, Any]:
    jobs.start(self.redis, job_id, 0)  # a redelivered run re-checks the state under the lock
    if not options.get("dry_run"):
        snapshot.refuse_during_backup(self.redis, "migration")
    report = run_migrate(self.settings, {**options, "job_id": job_id},
                         on_total=lambda n: jobs.set_total(self.redis, job_id, n),
                         on_step=lambda _v: jobs.add(self.redis, job_id))
    jobs.finish(self.redis, job_id, report)
    return {"job_id": job_id, "versions": report.versions}

