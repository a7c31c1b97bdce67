"""The Celery app. Creating it is the only thing that happens at import; settings are read on first use."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from celery import Celery
from kombu import Queue

from worker.constants import CONTROL_STEPS, QUEUE_BULK, QUEUE_CONTROL, TASK_MODULES

app = Celery("worktask", include=TASK_MODULES)


def route_task(name: str, args: Any, kwargs: Any, options: Any, task: Any = None, **kw: Any) -> dict[str, str]:
    """Coordinators (…start, …finalize, …fail) go to `control`, everything else to `bulk`."""
    step = name.rsplit(".", 1)[-1]
    return {"queue": QUEUE_CONTROL if step in CONTROL_STEPS else QUEUE_BULK}


def celery_config(settings: Any) -> dict[str, Any]:
    import beat_schedule

    transport = {
        # Above the longest chunk: a task still running past it is delivered again (DESIGN §12).
        "visibility_timeout": settings.visibility_timeout,
        "socket_connect_timeout": 5,
        "socket_timeout": 30,
        "max_retries": 3,
    }
    return {
        "broker_url": settings.celery_broker_url,
        "result_backend": settings.result_backend,
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "result_accept_content": ["json"],
        "event_serializer": "json",
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "worker_deduplicate_successful_tasks": True,
        "task_time_limit": settings.task_time_limit,
        "task_soft_time_limit": max(settings.task_time_limit - 30, 5),
        "broker_transport_options": transport,
        "result_backend_transport_options": transport,
        "broker_connection_retry_on_startup": True,
        "broker_connection_timeout": 5,
        "redis_socket_connect_timeout": 5,
        "redis_socket_timeout": 30,
        "result_expires": 7 * 24 * 3600,
        "result_extended": True,
        "task_track_started": True,
        "worker_send_task_events": True,
        "task_send_sent_event": True,
        "task_queues": [Queue(QUEUE_CONTROL), Queue(QUEUE_BULK)],
        "task_default_queue": QUEUE_BULK,
        "task_routes": (route_task,),
        "beat_schedule": beat_schedule.build(settings),
        "beat_scheduler": "worker.beat_scheduler:JsonFileScheduler",  # JSON, not celery's shelve (pickle)
        "timezone": "UTC",
        "enable_utc": True,
        "worker_hijack_root_logger": False,
    }


_pointed: Any = None  # settings given to point_at(), used when the app configures itself


def point_at(settings: Any) -> None:
    """Use these settings (e.g. the embedded stack's broker) instead of the environment's.

    Celery reads CELERY_BROKER_URL and CELERY_RESULT_BACKEND from the environment before its own
    configuration, so both are set too."""
    global _pointed
    _pointed = settings
    os.environ["CELERY_BROKER_URL"] = settings.celery_broker_url
    os.environ["CELERY_RESULT_BACKEND"] = settings.result_backend
    if app.configured:
        app.conf.update(broker_url=settings.celery_broker_url, result_backend=settings.result_backend)
        app._pool = None  # pools made for the old broker (as Celery does after a fork)
        app.amqp._producer_pool = None


@app.on_configure.connect
def _configure(sender: Celery, **kw: Any) -> None:
    from worker.errors import BadInput
    from worker.logs import setup_logging
    from worker.settings import get_settings

    try:
        settings = _pointed or get_settings()
    except BadInput as err:  # celery swallows a signal handler's error and would go on with its defaults
        if Path(sys.argv[0]).name != "celery" and Path(sys.argv[0]).parent.name != "celery":
            raise
        print(f"error: {err.message}", file=sys.stderr)  # noqa: T201 - the `celery` program: no console yet
        sys.exit(2)  # `celery worker` / `celery beat` refuse to start, as `worktask` does
    setup_logging(settings.debug)
    os.environ["CELERY_BROKER_URL"] = settings.celery_broker_url
    os.environ["CELERY_RESULT_BACKEND"] = settings.result_backend
    sender.conf.update(celery_config(settings))
