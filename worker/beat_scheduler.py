"""celery beat's scheduler, kept as JSON: what celery's own PersistentScheduler keeps in a shelve (pickle)
file — when each entry last ran, so that a beat restarted after a missed due time runs it once, late —
written as one small JSON object instead (the project serialises nothing with pickle).

`celery -A worker beat -s FILE` names the file (the app configures `beat_scheduler` to this class). A file
that is not this JSON (say celery's old shelve file at the same path) is ignored and written over; each run
is still started once per schedule slot by the start task itself (worker/jobs.py `scheduled`).
"""

from __future__ import annotations

import json
import os
from datetime import datetime
from pathlib import Path
from typing import Any

from celery.beat import Scheduler


class JsonFileScheduler(Scheduler):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.schedule_filename = kwargs.get("schedule_filename")
        super().__init__(*args, **kwargs)

    def _path(self) -> Path | None:
        return Path(self.schedule_filename) if self.schedule_filename else None

    def setup_schedule(self) -> None:
        super().setup_schedule()
        path = self._path()
        try:
            saved = json.loads(path.read_text()) if path and path.exists() else {}
        except (OSError, ValueError):
            saved = {}
        if not isinstance(saved, dict):
            saved = {}
        for name, entry in self.schedule.items():
            try:
                entry.last_run_at = datetime.fromisoformat(saved[name])
            except (KeyError, TypeError, ValueError):
                pass  # never ran (or an unreadable record): celery's default, now

    def sync(self) -> None:
        path = self._path()
        if path is None:
            return
        data = {name: entry.last_run_at.isoformat() for name, entry in self.schedule.items() if entry.last_run_at}
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(data, sort_keys=True))
        os.replace(tmp, path)  # whole or not at all

    @property
    def info(self) -> str:
        return f"    . db -> {self.schedule_filename}"
