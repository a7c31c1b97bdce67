"""The base class of every job task: transient-error retries, poison-chunk bound, failure recording.

Cross-cutting work lives here once (as dramatiq's middleware), so each task stays a thin shell.
"""

from __future__ import annotations

import logging
from typing import Any

import asyncpg
import psycopg
import redis
from botocore.exceptions import ConnectTimeoutError, EndpointConnectionError, ReadTimeoutError
from celery import Task

from worker import jobs
from worker.connections import redis_client
from worker.constants import JOB_ATTEMPTS_KEY, JOB_TTL_SECONDS
from worker.errors import PoisonChunk, WorktaskError
from worker.settings import Settings, get_settings

log = logging.getLogger(__name__)

# Worth another try: the service may answer in a moment. Everything else fails at once.
TRANSIENT = (psycopg.OperationalError, redis.ConnectionError, redis.TimeoutError,
             EndpointConnectionError, ConnectTimeoutError, ReadTimeoutError,
             asyncpg.TooManyConnectionsError, asyncpg.CannotConnectNowError, asyncpg.ConnectionDoesNotExistError,
             ConnectionRefusedError, ConnectionResetError)


def describe(kwargs: dict[str, Any]) -> str:
    """The chunk a task works on, from its small arguments (never rows, never secrets)."""
    parts = [f"{k}={v}" for k, v in kwargs.items() if k not in ("job_id", "options", "gen")]
    return " ".join(parts)


def reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text and not isinstance(exc, WorktaskError) else (
        text[0] if text else type(exc).__name__)


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
            key = JOB_ATTEMPTS_KEY.format(job_id=job_id)
            deliveries = self.redis.hincrby(key, self.request.id, 1)
            self.redis.expire(key, JOB_TTL_SECONDS)
            redeliveries = deliveries - (self.request.retries or 0)
            if redeliveries > self.settings.max_chunk_attempts:
                raise PoisonChunk(f"delivered {redeliveries} times (its worker keeps dying; "
                                  f"MAX_CHUNK_ATTEMPTS={self.settings.max_chunk_attempts})")
        return super().__call__(*args, **kwargs)

    def on_failure(self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: Any) -> None:
        job_id = (kwargs or {}).get("job_id")
        what = describe(kwargs or {})
        message = f"{self.name} {what}: {reason(exc)}" if what else f"{self.name}: {reason(exc)}"
        log.error("job %s failed: %s", job_id, message)
        if job_id:
            jobs.fail(self.redis, job_id, message)
