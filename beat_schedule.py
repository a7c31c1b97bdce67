"""celery beat's schedule, read by the Celery app (worker/app.py).

Each entry names its task by string (worker/ never imports tasks/). Only one beat may run; each
scheduled trigger is also made idempotent per slot by the task it starts.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from celery.schedules import crontab

from worker.constants import TASK_CLEANUP_START, TASK_HEALTH_START


def build(settings: Any) -> dict[str, dict[str, Any]]:
    return {
        "health-check": {
            "task": TASK_HEALTH_START,
            "schedule": timedelta(minutes=settings.health_interval_minutes),
            "kwargs": {"job_id": None, "options": {"scheduled": True}},
        },
        "backup-retention-cleanup": {
            "task": TASK_CLEANUP_START,
            "schedule": crontab(minute=settings.cleanup_minute, hour=settings.cleanup_hour),
            "kwargs": {"job_id": None, "options": {"scheduled": True}},
        },
    }
