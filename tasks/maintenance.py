"""`worktask maintenance`: backup_cleanup -> validate (--fix) -> optimize, run by worker/pipeline.py; and the
optimize step's job: VACUUM (ANALYZE) of the tables that need it, chosen from pg_stat_user_tables.

Optimize never runs VACUUM FULL. Plain VACUUM takes SHARE UPDATE EXCLUSIVE, which does not block the
application's reads and writes; it runs with a lock_timeout so that it gives way rather than queueing behind
DDL (and making the application queue behind it): a table whose lock is not granted in time is reported
skipped. VACUUM cannot run in a transaction: the connection is in autocommit.
"""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any

import psycopg
from psycopg import sql

from worker import commands, jobs, pipeline
from worker.app import app
from worker.connections import pg_connect
from worker.constants import TASK_MAINTENANCE_ADVANCE, TASK_MAINTENANCE_START, TASK_OPTIMIZE_START
from worker.reports import OptimizeReport, OptimizeTable, utcnow
from worker.settings import Settings
from worker.taskbase import JobTask

SCHEDULE_SLOT_S = 3600  # a scheduled (beat) run: one per hour slot, however many beats fire
STATS = ("n_live_tup", "n_dead_tup", "n_mod_since_analyze", "last_vacuum", "last_autovacuum", "last_analyze",
         "last_autoanalyze")


def table_stats(conn: psycopg.Connection) -> dict[tuple[str, str], dict[str, Any]]:
    conn.execute("select pg_stat_clear_snapshot()")
    cols = sql.SQL(", ").join(map(sql.Identifier, STATS))
    rows = conn.execute(sql.SQL("select schemaname, relname, {} from pg_stat_user_tables").format(cols)).fetchall()
    return {(r[0], r[1]): dict(zip(STATS, r[2:], strict=True)) for r in rows}


def why_optimize(st: dict[str, Any], options: dict[str, Any]) -> str | None:
    """The figure that makes a table need VACUUM (ANALYZE), or None."""
    live, dead, mods = st["n_live_tup"] or 0, st["n_dead_tup"] or 0, st["n_mod_since_analyze"] or 0
    ratio = dead / max(live + dead, 1)
    if dead >= options["min_dead"] and ratio > options["dead_ratio"]:
        return f"{dead:,} dead of {live + dead:,} tuples ({ratio:.0%} > {options['dead_ratio']:.0%})"
    analyzed = max((t for t in (st["last_analyze"], st["last_autoanalyze"]) if t), default=None)
    stale = analyzed is None or utcnow() - analyzed > timedelta(days=options["analyze_age_days"])
    if mods >= options["min_mods"] and stale:
        when = f"last analyzed {analyzed:%Y-%m-%d}" if analyzed else "never analyzed"
        return f"{mods:,} rows modified since the statistics ({when})"
    return None


def vacuum(conn: psycopg.Connection, schema: str, table: str, lock_timeout: float) -> str | None:
    """VACUUM (ANALYZE) one table; the reason when it was skipped (its lock not granted in time, or gone)."""
    conn.execute("select set_config('lock_timeout', %s, false)", (f"{int(lock_timeout * 1000)}ms",))
    try:
        conn.execute(sql.SQL("vacuum (analyze) {}.{}").format(sql.Identifier(schema), sql.Identifier(table)))
    except psycopg.errors.LockNotAvailable:
        return (f"lock not granted within {lock_timeout:g} s (lock_timeout): another session holds a conflicting "
                "lock; not waited on")
    except psycopg.errors.UndefinedTable:
        return "the table was dropped meanwhile"
    return None


def run_optimize(settings: Settings, job_id: str, options: dict[str, Any], on_total: Any = None,
                 on_table: Any = None) -> OptimizeReport:
    dry = bool(options.get("dry_run"))
    tables = []
    with pg_connect(settings, autocommit=True) as conn:
        before = table_stats(conn)
        chosen = [(key, why) for key, st in sorted(before.items()) if (why := why_optimize(st, options))]
        if on_total:
            on_total(len(chosen))
        for (schema, name), why in chosen:
            began = time.monotonic()
            reason = None if dry else vacuum(conn, schema, name, options["lock_timeout"])
            after = {} if dry else table_stats(conn).get((schema, name), {})
            action = "would vacuum" if dry else "skipped" if reason else "vacuumed"
            tables.append(OptimizeTable(name=f"{schema}.{name}", action=action, why=why, reason=reason,
                                        before=before[(schema, name)], after=after,
                                        seconds=round(time.monotonic() - began, 3)))
            if on_table:
                on_table()
    return OptimizeReport(job_id=job_id, state="succeeded", ok=True, dry_run=dry, dead_ratio=options["dead_ratio"],
                          lock_timeout=options["lock_timeout"], tables=tables, checked=len(before))


PRECHECKS: dict[str, pipeline.Precheck] = {}


@app.task(name=TASK_MAINTENANCE_START, base=JobTask, bind=True)
def start(self: JobTask, job_id: str | None, options: dict[str, Any]) -> dict[str, Any]:
    if job_id is None:  # from beat: planned here with the worker's settings, one run per schedule slot
        s = self.settings
        opts = {**commands.maintenance_options(s, s.retention_days, s.fix_issues, False), **options}
        job_id = jobs.scheduled(self.redis, "maintenance", SCHEDULE_SLOT_S, opts)
        if job_id is None:
            return {"skipped": "slot already run"}
    if not pipeline.begin(self.settings, self.redis, job_id, PRECHECKS):
        return {"job_id": job_id, "skipped": "already planned"}
    return {"job_id": job_id}


@app.task(name=TASK_MAINTENANCE_ADVANCE, base=JobTask, bind=True)
def advance(self: JobTask, job_id: str, child: str) -> dict[str, Any]:
    pipeline.advance(self.settings, self.redis, job_id, child, PRECHECKS)
    return {"job_id": job_id, "child": child}


@app.task(name=TASK_OPTIMIZE_START, base=JobTask, bind=True, max_retries=0)
def optimize(self: JobTask, job_id: str, options: dict[str, Any]) -> dict[str, Any]:
    if jobs.is_planned(self.redis, job_id):
        return {"job_id": job_id, "skipped": "already planned"}
    report = run_optimize(self.settings, job_id, options,
                          on_total=lambda n: jobs.start(self.redis, job_id, n),
                          on_table=lambda: jobs.add(self.redis, job_id))
    jobs.finish(self.redis, job_id, report)
    return {"job_id": job_id, "tables": len(report.tables)}
