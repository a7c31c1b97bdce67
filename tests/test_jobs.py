"""Jobs: counters readable from any process while the job runs, ETA, failure naming the chunk, bounded waits."""

from __future__ import annotations

from typing import Any

import pytest

from conftest import cli_json
from worker import jobs
from worker.connections import redis_client
from worker.errors import JobTimeout
from worker.taskbase import JobTask


def test_progress_is_readable_from_another_process_while_the_job_runs(settings: Any) -> None:
    r = redis_client(settings)
    job_id = jobs.create(r, "demo", {"dry_run": False})
    assert jobs.start(r, job_id, 10)
    assert not jobs.start(r, job_id, 10)  # a redelivered start task does not plan twice
    for _ in range(4):
        jobs.add(r, job_id, rows=1000, nbytes=4096)
    code, shown = cli_json("jobs", "show", job_id)
    p = shown["progress"]
    assert code == 0 and shown["report"] is None
    assert (p["state"], p["chunks_total"], p["chunks_done"], p["rows"], p["bytes"]) == ("running", 10, 4, 4000, 16384)
    assert p["eta_seconds"] is not None and p["eta_seconds"] >= 0
    assert p["rate_chunks_per_s"] > 0


def test_a_failed_chunk_fails_the_job_naming_the_chunk(settings: Any) -> None:
    r = redis_client(settings)
    job_id = jobs.create(r, "demo", {})
    jobs.start(r, job_id, 3)
    task = JobTask()
    task.name = "worktask.demo.dump_chunk"
    task.on_failure(ValueError("checksum mismatch"), "tid", (),
                    {"job_id": job_id, "table": "services", "chunk": 2}, None)
    task.on_failure(ValueError("later error"), "tid2", (), {"job_id": job_id, "table": "services", "chunk": 3}, None)
    report = jobs.wait(r, job_id, timeout=5)
    assert report["state"] == "failed" and report["ok"] is False
    assert report["error"] == "worktask.demo.dump_chunk table=services chunk=2: ValueError: checksum mismatch"


def test_waiting_is_bounded(settings: Any) -> None:
    r = redis_client(settings)
    job_id = jobs.create(r, "demo", {})
    with pytest.raises(JobTimeout, match=job_id):
        jobs.wait(r, job_id, timeout=0.5)


def test_finalize_after_a_failure_keeps_the_job_failed(settings: Any) -> None:
    r = redis_client(settings)
    job_id = jobs.create(r, "demo", {})
    jobs.fail(r, job_id, "worktask.demo.x chunk=1: boom")
    jobs.finish(r, job_id, {"job_id": job_id, "kind": "demo", "state": "succeeded", "ok": True})
    report = jobs.report(r, job_id)
    assert report["state"] == "failed" and report["error"] == "worktask.demo.x chunk=1: boom"
