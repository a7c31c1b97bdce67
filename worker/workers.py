"""The workers seen from the CLI: which ones answer and what they consume, and the submission of a job to
them (refused, naming the queue, when no worker consumes it). Job state itself is worker/jobs.py's."""

from __future__ import annotations

from typing import Any

import redis
from kombu.exceptions import OperationalError

from worker import jobs
from worker.constants import QUEUE_BULK, QUEUE_CONTROL
from worker.errors import ServiceUnavailable
from worker.settings import Settings, mask_url


def _mailboxes(app: Any) -> int:
    """How many workers have their remote-control mailbox bound on the broker: the replies worth waiting for.
    kombu's Redis transport keeps the fanout table in Redis (a worker stopped cleanly unbinds; one killed stays
    listed for up to an hour, and the wait then runs to its bound). 0 when it cannot tell."""
    try:
        with app.connection_for_read() as conn:
            return len(conn.default_channel.get_table(app.control.mailbox.exchange.name))
    except Exception:  # noqa: BLE001 - only a hint to stop waiting early; without it the wait runs to its bound
        return 0


def _active_queues(app: Any, timeout: float, limit: int | None) -> dict[str, list[str]]:
    active = app.control.inspect(timeout=timeout, limit=limit).active_queues() or {}
    return {name: sorted(q["name"] for q in queues) for name, queues in active.items()}


def live_workers(app: Any, timeout: float = 1.0,
                 need: tuple[str, ...] = (QUEUE_CONTROL, QUEUE_BULK)) -> dict[str, list[str]]:
    """Worker name -> the queues it consumes, from those that answer within `timeout`.

    Returns as soon as every worker with a mailbox on the broker answered (not after `timeout`): the usual
    case takes milliseconds. Should those answers leave a queue of `need` without a consumer, the workers are
    asked again and given the whole `timeout` (a worker the mailbox table does not list yet)."""
    expected = _mailboxes(app)
    workers = _active_queues(app, timeout, expected or None)
    consumed = {q for qs in workers.values() for q in qs}
    if expected and len(workers) >= expected and set(need) - consumed:
        workers = _active_queues(app, timeout, None)
    return workers


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
    job_id = jobs.create(r, kind, opts, trigger="cli")
    try:
        app.send_task(task, kwargs={"job_id": job_id, "options": opts}, queue=QUEUE_CONTROL)
    except (OperationalError, redis.RedisError, AttributeError) as err:  # AttributeError: kombu's Redis channel
        # closed under it (seen right after a Redis restart: conn_or_acquire on a channel without a connection)
        raise ServiceUnavailable(f"lost Redis at {mask_url(settings.celery_broker_url)} while sending job {job_id} "
                                 f"({err}); it may not run: see worktask jobs show {job_id}, or run it again") from None
    return job_id
