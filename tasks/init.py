"""`worktask init`: migrate -> seed -> testdata -> validate -> backup, each step a job of its own family,
run one after another by worker/pipeline.py (the steps were planned by the CLI, worker/commands.py init_options).

Running it twice is safe: seed skips what exists, and the testdata step is skipped when marked test data
exists already (another batch would double it), which its step report says.
"""

from __future__ import annotations

from typing import Any

from worker import pipeline
from worker.app import app
from worker.connections import pg_connect
from worker.constants import TASK_INIT_ADVANCE, TASK_INIT_START
from worker.settings import Settings
from worker.taskbase import JobTask


def existing_test_data(settings: Settings, step: dict[str, Any]) -> str | None:
    """Skip the testdata step when marked test data exists (a second init must not add another batch)."""
    with pg_connect(settings) as conn:
        n = conn.execute("select count(*) from work_tasks where is_test").fetchone()[0]
    if not n:
        return None
    return (f"test data exists already ({n:,} marked work tasks): no second batch; "
            "worktask testdata cleanup first for a fresh one")


PRECHECKS: dict[str, pipeline.Precheck] = {"testdata": existing_test_data}


@app.task(name=TASK_INIT_START, base=JobTask, bind=True)
def start(self: JobTask, job_id: str, options: dict[str, Any]) -> dict[str, Any]:
    if not pipeline.begin(self.settings, self.redis, job_id, PRECHECKS):
        return {"job_id": job_id, "skipped": "already planned"}
    return {"job_id": job_id}


@app.task(name=TASK_INIT_ADVANCE, base=JobTask, bind=True)
def advance(self: JobTask, job_id: str, child: str) -> dict[str, Any]:
    pipeline.advance(self.settings, self.redis, job_id, child, PRECHECKS)
    return {"job_id": job_id, "child": child}
