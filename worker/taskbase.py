"""The base class of every job task and the one place a job's tasks are fanned out and failed.

Cross-cutting work lives here once (as dramatiq's middleware), so each task stays a thin shell:
transient-error retries, the poison-chunk bound, failure recording (the first error names the chunk),
the family's release when its job fails (registered with `on_job_failure`), and no work for a job
that failed meanwhile. A task killed at its hard time limit is failed through the same `on_failure`:
Celery >= 5.7 runs it from the worker's main process (earlier versions did not: the reason for the floor).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import asyncpg
import psycopg
import redis
from botocore.exceptions import ConnectTimeoutError, EndpointConnectionError, ReadTimeoutError
from celery import Task, chord
from celery.canvas import Signature

from worker import jobs
from worker.connections import redis_client
from worker.constants import QUEUE_CONTROL
from worker.errors import PoisonChunk, WorktaskError
from worker.settings import Settings, get_settings

log = logging.getLogger(__name__)

# Worth another try: the service may answer in a moment. Everything else fails at once.
TRANSIENT = (psycopg.OperationalError, redis.ConnectionError, redis.TimeoutError,
             EndpointConnectionError, ConnectTimeoutError, ReadTimeoutError,
             asyncpg.TooManyConnectionsError, asyncpg.CannotConnectNowError, asyncpg.ConnectionDoesNotExistError,
             ConnectionRefusedError, ConnectionResetError)

# What a family lets go of when its job fails (snapshot, replacement tables, lock): kind -> release(settings, r, id)
Release = Callable[[Settings, redis.Redis, str], None]
RELEASES: dict[str, Release] = {}


def on_job_failure(kind: str, release: Release) -> None:
    """Register what a job of this kind lets go of when it fails, however it fails."""
    RELEASES[kind] = release


def describe(kwargs: dict[str, Any]) -> str:
    """The chunk a task works on, from its small arguments (never rows, never secrets)."""
    parts = [f"{k}={v}" for k, v in kwargs.items() if k not in ("job_id", "options", "gen")]
    return " ".join(parts)


def reason(exc: BaseException) -> str:
    if type(exc).__name__ == "TimeLimitExceeded":  # the pool killed it: say so, and which setting bounds it
        limit = exc.args[0] if exc.args else "?"
        return f"killed at its time limit of {limit} s (TASK_TIME_LIMIT) before it reported"
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text and not isinstance(exc, WorktaskError) else (
        text[0] if text else type(exc).__name__)


def stale(r: redis.Redis, job_id: str, gen: int | None) -> bool:
    """A task of an attempt the job abandoned (a backup that started over): its outcome is not the job's."""
    return gen is not None and gen != jobs.generation(r, job_id)


def fail_job(settings: Settings, r: redis.Redis, job_id: str, message: str, task_id: str | None = None) -> None:
    """Fail the job with this first error; the call that ends it runs the family's release."""
    log.error("job %s failed: %s", job_id, message)
    family = RELEASES.get(jobs.job_kind(r, job_id) or "")

    def release() -> None:
        try:
            if family:
                family(settings, r, job_id)
        except Exception:  # noqa: BLE001 - the job fails all the same; the next run cleans up what is left
            log.exception("job %s: releasing after the failure failed", job_id)
    jobs.fail(r, job_id, message, task_id, release)


def finish_owner(task: Task) -> str:
    """The claim a finalize takes on its job's end (jobs.claim_end): its own task id, or, run inline by another
    task (`finalize.run`), that task's id, which its failure reports (and so takes the claim over)."""
    from celery import current_task

    return f"finish:{task.request.id or getattr(getattr(current_task, 'request', None), 'id', None) or 'inline'}"


def notify_parent(app: Any, r: redis.Redis, job_id: str) -> None:
    """The pipeline hook (worker/pipeline.py): when a job that is a step of a pipeline (options["parent"]) has
    ended, however it ended, send `worktask.<parent kind>.advance` to `control`, once. Never waits."""
    if jobs.state(r, job_id) not in ("succeeded", "failed"):
        return
    parent = jobs.options(r, job_id).get("parent")
    if not parent or not jobs.mark(r, job_id, "parent-notified"):
        return
    kind = jobs.job_kind(r, parent)
    app.send_task(f"worktask.{kind}.advance", kwargs={"job_id": parent, "child": job_id}, queue=QUEUE_CONTROL)


class JobTask(Task):
    abstract = True
    autoretry_for = TRANSIENT
    retry_backoff = 2
    retry_backoff_max = 60
    retry_jitter = True
    max_retries = 3
    _redis: redis.Redis | None = None

    @property
    def settings(self) -> Settings:
        return get_settings()

    @property
    def redis(self) -> redis.Redis:
        if JobTask._redis is None:
            JobTask._redis = redis_client(self.settings)
        return JobTask._redis

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        job_id = kwargs.get("job_id")
        if job_id and self.request.id and not self.request.called_directly:
            if jobs.state(self.redis, job_id) == "failed":  # a queued chunk of a job that failed meanwhile
                return {"job_id": job_id, "skipped": "the job failed"}
            if jobs.job_kind(self.redis, job_id) is None:  # its record is gone (Redis restarted or flushed, and
                # the worker restored its unacknowledged messages): nobody waits for it and nothing would finish it
                log.warning("job %s: its record is gone from Redis; %s not run", job_id, self.name)
                return {"job_id": job_id, "skipped": "the job's record is gone from Redis"}
            redeliveries = jobs.count_delivery(self.redis, job_id, self.request.id) - (self.request.retries or 0)
            if redeliveries > self.settings.max_chunk_attempts:
                raise PoisonChunk(f"delivered {redeliveries} times (its worker keeps dying; "
                                  f"MAX_CHUNK_ATTEMPTS={self.settings.max_chunk_attempts})")
        return super().__call__(*args, **kwargs)

    def on_failure(self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: Any) -> None:
        kwargs = kwargs or {}
        job_id = kwargs.get("job_id")
        what = describe(kwargs)
        message = f"{self.name} {what}: {reason(exc)}" if what else f"{self.name}: {reason(exc)}"
        if not job_id:
            log.error("task failed: %s", message)
            return
        if stale(self.redis, job_id, kwargs.get("gen")):
            log.info("job %s: %s (of an abandoned attempt, ignored)", job_id, message)
            return
        fail_job(self.settings, self.redis, job_id, message, task_id)
        notify_parent(self.app, self.redis, job_id)  # a task killed at its time limit gets no after_return

    def after_return(self, status: str, retval: Any, task_id: str, args: Any, kwargs: Any, einfo: Any) -> None:
        job_id = (kwargs or {}).get("job_id")
        if job_id:
            notify_parent(self.app, self.redis, job_id)


def fan_out(header: list[Signature], body: Signature) -> None:
    """Run `header` in parallel, then `body` with their results (a chord): the one way a job fans out."""
    chord(header)(body)
