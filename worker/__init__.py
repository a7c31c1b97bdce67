"""worktask-data: the Celery app (`celery -A worker …`) and what the jobs share.

The app is looked up on first use, not at import: `worktask --help` and the commands that need no Celery do
not pay for importing it. `celery -A worker` finds it as `worker.app` (or `worker.celery`, which Celery tries
next, when the submodule worker.app was imported first and the name `app` is that module).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from worker.app import app

__all__ = ["app"]


def __getattr__(name: str) -> Any:
    if name in ("app", "celery"):
        from worker.app import app

        globals()["app"] = app  # the instance, not the submodule the import just bound to this name
        return app
    raise AttributeError(f"module 'worker' has no attribute {name!r}")
