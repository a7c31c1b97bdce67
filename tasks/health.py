"""`worktask health`: one task per check, fanned out as a chord, then a finalize that writes the report."""

from __future__ import annotations

import json
import time
from typing import Any

import psycopg
import redis
from botocore.exceptions import BotoCoreError, ClientError
from sqlalchemy.exc import SQLAlchemyError

from worker import backups, jobs, migrator
from worker.app import app
from worker.connections import aws_client, pg_connect, redis_client
from worker.constants import (
    LAST_VALIDATION_KEY,
    QUEUE_BULK,
    QUEUE_CONTROL,
    TASK_HEALTH_CHECK,
    TASK_HEALTH_FINALIZE,
    TASK_HEALTH_START,
)
from worker.errors import WorktaskError
from worker.reports import Check, HealthReport
from worker.settings import Settings, mask_url
from worker.taskbase import JobTask, fan_out

CHECKS = ("postgres", "redis", "dynamodb", "backup_store", "workers", "migrations", "validation")
CRITICAL = {"postgres", "redis"}  # without these nothing works: unhealthy, not degraded


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
    client = aws_client(settings, "dynamodb")
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
    workers = jobs.live_workers(app, timeout=1.5)
    if not workers:
        raise WorktaskError("no worker answered within 1.5 s")
    missing = {QUEUE_CONTROL, QUEUE_BULK} - {q for qs in workers.values() for q in qs}
    if missing:
        raise WorktaskError(f"no worker consumes {', '.join(sorted(missing))}")
    names = ", ".join(f"{w} [{','.join(q)}]" for w, q in sorted(workers.items()))
    return f"{len(workers)} worker(s): {names}"


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


RUNNERS = {"postgres": check_postgres, "redis": check_redis, "dynamodb": check_dynamodb,
           "backup_store": check_backup_store, "workers": check_workers, "migrations": check_migrations,
           "validation": check_validation}


def run_check(name: str, settings: Settings) -> Check:
    """Run one check; any failure becomes ok=False with a one-line detail, never an exception."""
    began = time.monotonic()
    try:
        detail, ok = RUNNERS[name](settings), True
    except (WorktaskError, psycopg.Error, SQLAlchemyError, redis.RedisError, BotoCoreError, ClientError,
            OSError) as err:
        text = str(err).strip().splitlines()
        detail, ok = (text[0] if text else type(err).__name__), False
    return Check(name=name, ok=ok, detail=detail, seconds=round(time.monotonic() - began, 3))


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
