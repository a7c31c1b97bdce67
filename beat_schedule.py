"""celery beat's schedule, read by the Celery app (worker/app.py): the nightly cycle and the health check.

Each entry names its task by string (worker/ never imports tasks/) and its time by a 5-field crontab from
the environment (BACKUP_SCHEDULE, CLEANUP_SCHEDULE, MAINTENANCE_SCHEDULE, HEALTH_SCHEDULE, DRILL_SCHEDULE;
validated with the settings). Each start task called with job_id=None makes its beat trigger idempotent per
schedule slot (worker/jobs.py `scheduled`: a Redis SET NX on the crontab's due time), so a second beat, or one
restarted within the slot, starts nothing more; and it records a skipped run while a job of its kind is running.
"""

from __future__ import annotations

from typing import Any

from worker.constants import (
    TASK_BACKUP_START,
    TASK_CLEANUP_START,
    TASK_DRILL_START,
    TASK_HEALTH_START,
    TASK_MAINTENANCE_START,
)

# entry -> (job kind, as Settings.schedules names it, start task)
ENTRIES = {
    "nightly-backup": ("backup", TASK_BACKUP_START),
    "backup-retention-cleanup": ("backup_cleanup", TASK_CLEANUP_START),
    "nightly-maintenance": ("maintenance", TASK_MAINTENANCE_START),
    "health-check": ("health", TASK_HEALTH_START),
    "restore-drill": ("drill", TASK_DRILL_START),  # the newest complete backup (DRILL_SCHEDULE, weekly)
}


def build(settings: Any) -> dict[str, dict[str, Any]]:
    """The entries; each passes its crontab expression along, so that the worker names the slot this beat fired
    for (the worker's own settings may differ from the beat's)."""
    return {name: {"task": task, "schedule": settings.crontab(kind),
                   "kwargs": {"job_id": None, "options": {"scheduled": True, "schedule": settings.schedules[kind]}}}
            for name, (kind, task) in ENTRIES.items()}
