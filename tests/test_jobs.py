"""Jobs: counters readable from any process while the job runs, ETA, failure naming the chunk, bounded waits."""

from __future__ import annotations

import json
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


def test_the_waiter_is_woken_by_each_change_of_the_job_not_by_polling(settings: Any) -> None:
    """Each change the waiter sees makes the next one (as a worker would): with the fallback read an hour away,
    only the job's own announcements can carry the wait through start, every chunk and the finish."""
    r = redis_client(settings)
    job_id = jobs.create(r, "demo", {})
    seen: list[tuple[str, int]] = []

    def next_step(p: Any) -> None:
        seen.append((p.state, p.chunks_done))
        if p.state == "queued":
            jobs.start(r, job_id, 3)
        elif p.chunks_done < 3:
            jobs.add(r, job_id, rows=10)
        elif not p.finished:
            jobs.finish(r, job_id, {"job_id": job_id, "kind": "demo", "state": "succeeded", "ok": True})

    report = jobs.wait(r, job_id, timeout=60, on_progress=next_step, interval=3600)
    assert report["ok"] and report["job_id"] == job_id
    assert seen == [("queued", 0), ("running", 0), ("running", 1), ("running", 2), ("running", 3), ("succeeded", 3)]


def test_a_failure_wakes_the_waiter_with_the_error(settings: Any) -> None:
    r = redis_client(settings)
    job_id = jobs.create(r, "demo", {})

    def fail_once_running(p: Any) -> None:
        if p.state == "queued":
            jobs.start(r, job_id, 2)
        elif p.state == "running":
            jobs.fail(r, job_id, "worktask.demo.x chunk=0: boom")

    report = jobs.wait(r, job_id, timeout=60, on_progress=fail_once_running, interval=3600)
    assert report["state"] == "failed" and report["error"] == "worktask.demo.x chunk=0: boom"


def test_a_missed_announcement_is_caught_by_the_fallback_read(settings: Any) -> None:
    """A change nobody announced (a worker of an older version) is still seen: the record is read again."""
    r = redis_client(settings)
    job_id = jobs.create(r, "demo", {})
    key = jobs.JOB_KEY.format(job_id=job_id)

    def finish_silently(p: Any) -> None:
        if p.state == "queued":
            r.hset(key, mapping={"state": "succeeded", "report": json.dumps(
                {"job_id": job_id, "kind": "demo", "state": "succeeded", "ok": True})})

    report = jobs.wait(r, job_id, timeout=60, on_progress=finish_silently, interval=0.2)
    assert report["ok"]


def test_a_failed_job_is_shown_failed_only_after_its_release_ran(settings: Any) -> None:
    """The waiting CLI wakes on `failed`: by then the snapshot lease, replacement tables and locks the job held
    are let go (an operator who reruns at once must not meet them). A finish racing the release keeps it failed."""
    from worker import taskbase

    r = redis_client(settings)
    job_id = jobs.create(r, "releasetest", {})
    jobs.start(r, job_id, 2)
    seen: list[str | None] = []

    def release(_settings: Any, rr: Any, jid: str) -> None:
        seen.append(jobs.state(rr, jid))
        jobs.finish(rr, jid, {"job_id": jid, "kind": "releasetest", "state": "succeeded", "ok": True})

    taskbase.on_job_failure("releasetest", release)
    try:
        taskbase.fail_job(settings, r, job_id, "worktask.releasetest.x table=t chunk=1: boom", "tid-1")
        taskbase.fail_job(settings, r, job_id, "worktask.releasetest.x table=t chunk=2: later", "tid-2")
    finally:
        taskbase.RELEASES.pop("releasetest", None)
    assert seen == ["running"]  # released once, before anyone could see the job failed
    report = jobs.report(r, job_id)
    assert report["state"] == "failed" and report["error"] == "worktask.releasetest.x table=t chunk=1: boom"


def test_one_call_ends_a_job_a_finalize_that_claimed_it_or_the_failure_that_did(settings: Any) -> None:
    """A backup's finalize writes the manifest, a failure's release deletes the chunks: whichever claims the
    job's end first owns it, so a manifest is never written over a failed backup's deleted chunks."""
    r = redis_client(settings)
    finishing = jobs.create(r, "demo", {})
    jobs.start(r, finishing, 2)
    assert jobs.claim_end(r, finishing, "finish:tid-f")
    assert jobs.claim_end(r, finishing, "finish:tid-f")  # the same finalize redelivered goes on
    released: list[str] = []
    assert not jobs.fail(r, finishing, "late duplicate: boom", "tid-dup", lambda: released.append("x"))
    assert released == [] and jobs.state(r, finishing) == "running"
    jobs.finish(r, finishing, {"job_id": finishing, "kind": "demo", "state": "succeeded", "ok": True})
    assert jobs.report(r, finishing)["ok"]

    failing = jobs.create(r, "demo", {})
    jobs.start(r, failing, 2)
    assert jobs.fail(r, failing, "worktask.demo.x table=t chunk=1: boom", "tid-1", lambda: released.append("y"))
    assert not jobs.claim_end(r, failing, "finish:tid-f2")  # the finalize must not write its manifest
    assert released == ["y"] and jobs.state(r, failing) == "failed"

    broken = jobs.create(r, "demo", {})  # the finalize that claimed the end fails itself: the job fails
    jobs.start(r, broken, 1)
    assert jobs.claim_end(r, broken, "finish:tid-b")
    assert jobs.fail(r, broken, "worktask.demo.finalize: disk full", "tid-b")
    assert jobs.state(r, broken) == "failed"


def test_a_job_whose_end_is_claimed_is_never_started_over_nor_running_again(settings: Any) -> None:
    """Seen in a run: a failed backup's release let go of its snapshot; a chunk of it that found the snapshot
    gone started the backup over (a new generation), and its start set the job running again, for good."""
    r = redis_client(settings)
    job_id = jobs.create(r, "demo", {})
    jobs.start(r, job_id, 2)
    assert jobs.claim_end(r, job_id, "fail:tid-1")
    assert not jobs.next_generation(r, job_id, 0)
    jobs.fail(r, job_id, "worktask.demo.x table=t chunk=1: boom", "tid-1")
    r.hdel(jobs.JOB_KEY.format(job_id=job_id), "planned")  # as a start-over clears it
    assert not jobs.start(r, job_id, 2)
    assert jobs.state(r, job_id) == "failed"


def test_a_failure_reported_again_after_its_release_was_cut_short_still_ends_the_job(settings: Any) -> None:
    """A chunk's on_failure killed inside the release (hard time limit, OOM) is reported again for the same
    task (Celery runs on_failure from the main process): the job must still end, not stay running."""
    r = redis_client(settings)
    job_id = jobs.create(r, "demo", {})
    jobs.start(r, job_id, 2)

    def killed() -> None:
        raise SystemExit("killed in the release")

    with pytest.raises(SystemExit):
        jobs.fail(r, job_id, "worktask.demo.x table=t chunk=1: boom", "tid-1", killed)
    r.hset(jobs.JOB_KEY.format(job_id=job_id), "state", "running")  # the process died before its `finally`
    released: list[int] = []
    assert jobs.fail(r, job_id, "worktask.demo.x table=t chunk=1: killed at its time limit", "tid-1",
                     lambda: released.append(1))
    assert released == [1] and jobs.state(r, job_id) == "failed"
