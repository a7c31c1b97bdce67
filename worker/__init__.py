"""worktask-data: the Celery app (`celery -A worker …`) and what the jobs share."""

from worker.app import app

__all__ = ["app"]
