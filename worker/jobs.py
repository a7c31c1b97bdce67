"""Jobs: one submission each, with counters in Redis readable from any process (DESIGN §7).

The job hash `worktask:job:<id>` holds kind, state, options, counters, the first error and, at the
end, the report as JSON. Chunk tasks add to the counters; the finalize task writes the report.
"""

from __future__ import annotations

import json
import re
import secrets
import time
from collections.abc import Callable
from typing import Any

import redis

from worker.constants import BEAT_SLOT_KEY, ID_PATTERN, JOB_KEY, JOB_TTL_SECONDS, QUEUE_BULK, QUEUE_CONTROL
from worker.errors import BadInput, JobTimeout, ServiceUnavailable
from worker.reports import Progress, utcnow
from worker.settings import Settings, mask_url

COUNTERS = ("chunks_total", "chunks_done", "chunks_failed", "rows", "bytes")


def new_job_id(kind: str) -> str:
    return f"{utcnow():%Y%m%dT%H%M%SZ}-{kind}-{secrets.token_hex(3)}"


def check_id(value: str, what: str = "job") -> str:
    if not re.fullmatch(ID_PATTERN, value or ""):
        raise BadInput(f"{what} id {value!r} is malformed: ids hold only 0-9 A-Z a-z and -")
    return value


def _key(job_id: str) -> str:
    return JOB_KEY.format(job_id=job_id)


def create(r: redis.Redis, kind: str, options: dict[str, Any], job_id: str | None = None) -> str:
    job_id = job_id or new_job_id(kind)
    now = utcnow().isoformat()
    fields = {"kind": kind, "state": "queued", "options": json.dumps(options), "created_at": now,
              "updated_at": now, **{c: 0 for c in COUNTERS}}
    with r.pipeline() as p:
        p.hset(_key(job_id), mapping=fields)
        p.expire(_key(job_id), JOB_TTL_SECONDS)
        p.execute()
    return job_id


def scheduled(r: redis.Redis, kind: str, period_s: int, options: dict[str, Any]) -> str | None:
    """A job for a beat trigger, or None when this schedule slot has run already (a second beat)."""
    slot = int(time.time() // period_s)
    if not r.set(BEAT_SLOT_KEY.format(name=kind, slot=slot), "1", nx=True, ex=max(period_s * 2, 3600)):
        return None
    return create(r, kind, options)


def start(r: redis.Redis, job_id: str, chunks_total: int) -> bool:
    """Mark the job planned and running; False when a redelivered start task finds it planned already."""
    if not r.hsetnx(_key(job_id), "planned", "1"):
        return False
    now = utcnow().isoformat()
    r.hset(_key(job_id), mapping={"state": "running", "started_at": now, "updated_at": now,
                                  "chunks_total": chunks_total})
    return True


def set_total(r: redis.Redis, job_id: str, chunks_total: int) -> None:
    r.hset(_key(job_id), "chunks_total", chunks_total)


def add(r: redis.Redis, job_id: str, chunks: int = 1, rows: int = 0, nbytes: int = 0, failed: int = 0) -> None:
    with r.pipeline() as p:
        p.hincrby(_key(job_id), "chunks_done", chunks)
        if rows:
            p.hincrby(_key(job_id), "rows", rows)
        if nbytes:
            p.hincrby(_key(job_id), "bytes", nbytes)
        if failed:
            p.hincrby(_key(job_id), "chunks_failed", failed)
        p.hset(_key(job_id), "updated_at", utcnow().isoformat())
        p.execute()


def _transition(r: redis.Redis, job_id: str, decide: Callable[[str | None], dict[str, Any] | None]) -> None:
    """Read the state and write the next one atomically (WATCH/MULTI): a failing duplicate chunk and a
    finalize racing each other cannot leave a failed job with a report that says ok."""
    key = _key(job_id)
    with r.pipeline() as p:
        while True:
            try:
                p.watch(key)
                fields = decide(p.hget(key, "state"))
                if fields is None:
                    p.unwatch()
                    return
                p.multi()
                p.hset(key, mapping=fields)
                p.execute()
                return
            except redis.WatchError:
                continue


def fail(r: redis.Redis, job_id: str, error: str) -> None:
    """Mark the job failed, keeping the first error (the one that names the chunk). A job that already
    succeeded stays so: a late duplicate of one of its chunks does not undo its report."""
    line = error.splitlines()[0][:500] if error else "failed"
    r.hsetnx(_key(job_id), "error", line)
    r.hincrby(_key(job_id), "chunks_failed", 1)
    now = utcnow().isoformat()
    _transition(r, job_id, lambda state: None if state in ("succeeded", "failed") else
                {"state": "failed", "updated_at": now, "finished_at": now})


def finish(r: redis.Redis, job_id: str, report: dict[str, Any]) -> None:
    """Store the final report. A job already failed by a chunk stays failed."""
    now = utcnow().isoformat()

    def decide(state: str | None) -> dict[str, Any]:
        final = report
        if state == "failed":
            final = {**report, "state": "failed", "ok": False, "error": r.hget(_key(job_id), "error")}
        return {"state": final["state"], "report": json.dumps(final, default=str), "updated_at": now,
                "finished_at": now}
    _transition(r, job_id, decide)


def options(r: redis.Redis, job_id: str) -> dict[str, Any]:
    return json.loads(r.hget(_key(job_id), "options") or "{}")


def read(r: redis.Redis, job_id: str) -> Progress | None:
    raw = r.hgetall(_key(job_id))
    if not raw:
        return None
    p = Progress(job_id=job_id, **{k: v for k, v in raw.items() if k in Progress.model_fields and v != ""})
    if p.started_at and p.chunks_done:
        elapsed = ((p.finished_at or utcnow()) - p.started_at).total_seconds()
        if elapsed > 0:
            p.rate_chunks_per_s = round(p.chunks_done / elapsed, 3)
            p.rate_rows_per_s = round(p.rows / elapsed, 1)
            left = max(p.chunks_total - p.chunks_done, 0)
            p.eta_seconds = 0.0 if p.finished else round(left / p.rate_chunks_per_s, 1)
    return p


def report(r: redis.Redis, job_id: str) -> dict[str, Any] | None:
    raw = r.hget(_key(job_id), "report")
    return json.loads(raw) if raw else None


def failed_report(r: redis.Redis, job_id: str) -> dict[str, Any]:
    """The report of a job that failed before its finalize wrote one."""
    p = read(r, job_id)
    assert p is not None
    opts = options(r, job_id)
    return {"job_id": job_id, "kind": p.kind, "state": "failed", "ok": False,
            "started_at": p.started_at, "finished_at": p.finished_at or utcnow(),
            "dry_run": bool(opts.get("dry_run")), "error": p.error or "failed"}


def wait(r: redis.Redis, job_id: str, timeout: float,
         on_progress: Callable[[Progress], None] | None = None, interval: float = 0.25) -> dict[str, Any]:
    """Poll the job's counters until it has a report (or failed); JobTimeout past `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        p = read(r, job_id)
        if p is None:
            raise BadInput(f"job {job_id} not found (jobs are kept {JOB_TTL_SECONDS // 86400} days)")
        if on_progress:
            on_progress(p)
        if p.state == "failed":
            return report(r, job_id) or failed_report(r, job_id)
        if p.state == "succeeded":
            rep = report(r, job_id)
            if rep is not None:
                return rep
        if time.monotonic() >= deadline:
            raise JobTimeout(f"job {job_id} not finished after {timeout:.0f} s "
                             f"({p.chunks_done}/{p.chunks_total} chunks); see worktask jobs show {job_id}")
        time.sleep(interval)


def live_workers(app: Any, timeout: float = 1.0) -> dict[str, list[str]]:
    """Worker name -> the queues it consumes, from those that answer within `timeout`."""
    inspect = app.control.inspect(timeout=timeout)
    active = inspect.active_queues() or {}
    return {name: sorted(q["name"] for q in queues) for name, queues in active.items()}


def submit(app: Any, settings: Settings, r: redis.Redis, kind: str, task: str,
           opts: dict[str, Any]) -> str:
    """Create the job and send its start task to `control`; ServiceUnavailable when no worker consumes."""
    workers = live_workers(app)
    queues = {q for qs in workers.values() for q in qs}
    missing = {QUEUE_CONTROL, QUEUE_BULK} - queues
    if missing:
        where = mask_url(settings.celery_broker_url)
        raise ServiceUnavailable(
            f"no Celery worker consumes queue {', '.join(sorted(missing))} on {where}; start workers with "
            f"`worktask stack up` or `celery -A worker worker -Q control,bulk`")
    job_id = create(r, kind, opts)
    app.send_task(task, kwargs={"job_id": job_id, "options": opts}, queue=QUEUE_CONTROL)
    return job_id
