"""The life of a job, owned in one place: failures of an attempt the job abandoned, chunks failing after
the job ended, tasks killed at their hard time limit (Celery never runs their on_failure), and the
one-restore-at-a-time lock, which belongs to a job and is never taken over while that job runs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from datetime import timedelta
from typing import Any

import pytest

from conftest import ROOT, cli_json
from test_backup import backup, data, validate  # noqa: F401 - `data` is a fixture
from worker import backups, jobs, snapshot, workers
from worker.connections import redis_client
from worker.reports import utcnow


def test_a_failure_from_an_abandoned_attempt_does_not_fail_the_new_one(settings: Any) -> None:
    from tasks.backup import dump_pg

    r = redis_client(settings)
    job_id = jobs.create(r, "backup", backups.store_options(settings))
    jobs.start(r, job_id, 4)
    jobs.next_generation(r, job_id, 0)  # the backup lost its snapshot and started over: attempt 1 runs now
    old = {"job_id": job_id, "table": "work_tasks", "chunk": 1, "gen": 0}
    dump_pg.on_failure(RuntimeError("server closed the connection"), "task-of-attempt-0", (), old, None)
    progress = jobs.read(r, job_id)
    assert (progress.state, progress.error) == ("running", None)  # attempt 1 goes on
    new = {**old, "gen": 1}
    dump_pg.on_failure(RuntimeError("disk full"), "task-of-attempt-1", (), new, None)
    report = jobs.wait(r, job_id, timeout=5)
    assert report["state"] == "failed"
    assert report["error"] == "worktask.backup.dump_chunk table=work_tasks chunk=1: RuntimeError: disk full"


def test_a_chunk_failing_after_the_backup_completed_leaves_it_complete(data: Any) -> None:  # noqa: F811
    from tasks.backup import dump_pg

    done = backup(data)
    assert done["ok"], done
    backup_id = done["backup_id"]
    late = {"job_id": backup_id, "table": "work_tasks", "chunk": 0, "gen": 0}  # a duplicate delivery, late
    dump_pg.on_failure(RuntimeError("late duplicate failed"), "late-task", (), late, None)
    code, listed = cli_json("backup", "list")
    assert code == 0
    assert next(b for b in listed if b["backup_id"] == backup_id)["state"] == "complete"
    assert jobs.report(redis_client(data), backup_id)["ok"]
    opts = backups.store_options(data)
    left = [o.key for o in backups.store_for(data, opts).list(backups.prefix(opts, backup_id))]
    assert not [k for k in left if k.endswith("failed.json")], left  # nothing says failed in a complete backup
    assert validate(data, backup_id)["ok"]


def own_worker(settings: Any, log: Any) -> subprocess.Popen:
    """A worker of the test's own, on both queues, whose tasks are killed 40 s after they start (their soft
    limit is 10 s). The time limits travel in each task's message from the task that sent it, so this
    worker plans the job too (the session's workers stop consuming meanwhile)."""
    env = {**os.environ, "CELERY_BROKER_URL": settings.celery_broker_url,
           "CELERY_RESULT_BACKEND": settings.result_backend, "TASK_TIME_LIMIT": "40"}
    return subprocess.Popen([sys.executable, "-m", "celery", "-A", "worker", "worker", "-Q", "control,bulk", "-c", "2",
                             "-n", f"hardlimit-{os.getpid()}@%h", "--loglevel", "INFO"],
                            env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=open(log, "ab"))


def stop_a_running_chunk(app: Any, deadline: float) -> dict[str, Any]:
    """SIGSTOP a chunk caught running on the test's worker: stuck where no signal reaches it (as in
    uninterruptible I/O), its soft time limit cannot stop it and the hard one kills it."""
    from celery.result import AsyncResult

    while time.monotonic() < deadline:
        for name, active in (app.control.inspect(timeout=0.3).active() or {}).items():
            for t in active:
                if name.startswith("hardlimit-") and t["name"] == "worktask.backup.dump_chunk":
                    os.kill(t["worker_pid"], signal.SIGSTOP)
                    if AsyncResult(t["id"], app=app).state in ("STARTED", "PENDING"):
                        return t
                    os.kill(t["worker_pid"], signal.SIGCONT)  # it had just finished: catch another
    raise AssertionError("no chunk was caught running")


@pytest.mark.slow
def test_a_chunk_killed_at_its_hard_time_limit_fails_the_backup_naming_it_and_lets_go(data: Any) -> None:  # noqa: F811
    from worker.app import app

    r = redis_client(data)
    for queue in ("control", "bulk"):
        app.control.cancel_consumer(queue, reply=True, timeout=5)
    worker = own_worker(data, log=data.worktask_state_dir / "hardlimit-worker.log")
    try:
        deadline = time.monotonic() + 60
        while not any(n.startswith("hardlimit-") for n in workers.live_workers(app)) and time.monotonic() < deadline:
            time.sleep(0.5)
        began = time.monotonic()
        # slowed to 40 kB per second per chunk: each takes a second or two
        proc = subprocess.Popen([sys.executable, "-m", "worker.cli", "backup", "--chunk-rows", "1000", "--json"],
                                env={**os.environ, "BACKUP_RATE_LIMIT": "40000"}, cwd=ROOT, stdout=subprocess.PIPE,
                                text=True)
        victim = stop_a_running_chunk(app, time.monotonic() + 60)
        out, _ = proc.communicate(timeout=150)
        waited = time.monotonic() - began
        report = json.loads(out)
        assert proc.returncode == 1 and report["state"] == "failed", report
        kwargs = victim["kwargs"]
        assert report["error"].startswith(f"worktask.backup.dump_chunk table={kwargs['table']} "
                                          f"chunk={kwargs['chunk']}: "
                                          "killed at its time limit of 40 s"), report["error"]
        assert waited < 100, f"the job took {waited:.0f} s to notice a chunk killed at 40 s"
        assert snapshot.running_backups(r) == []  # the snapshot and its table locks are let go
        code, listed = cli_json("backup", "list")
        assert next(b for b in listed if b["backup_id"] == report["job_id"])["state"] == "failed"
    finally:
        worker.terminate()
        worker.wait(30)
        for queue in ("control", "bulk"):
            app.control.add_consumer(queue, reply=True, timeout=5)


def test_a_restore_lock_is_never_taken_over_while_its_job_runs(settings: Any) -> None:
    r = redis_client(settings)
    first = jobs.create(r, "restore", {})
    jobs.start(r, first, 10)
    assert jobs.lock(r, "restore", first) is None
    # an hour without counter movement: waiting behind backup chunks in the shared queue, or building
    r.hset(jobs.JOB_KEY.format(job_id=first), "updated_at", (utcnow() - timedelta(hours=1)).isoformat())
    second = jobs.create(r, "restore", {})
    assert jobs.lock(r, "restore", second) == first
    jobs.fail(r, first, "worktask.restore.build_table table=x: boom")  # its end lets go (the release unlocks)
    assert jobs.lock(r, "restore", second) is None  # a holder that ended without letting go is taken over
    assert jobs.lock(r, "restore", first) == second
    jobs.unlock(r, "restore", first)  # not the holder: nothing happens
    assert jobs.lock(r, "restore", first) == second
    jobs.unlock(r, "restore", second)
    assert jobs.lock(r, "restore", first) is None
    jobs.unlock(r, "restore", first)


def test_a_restore_is_refused_while_another_waits_however_long(data: Any) -> None:  # noqa: F811
    done = backup(data)
    assert done["ok"], done
    r = redis_client(data)
    first = jobs.create(r, "restore", {})
    jobs.start(r, first, 10)
    assert jobs.lock(r, "restore", first) is None
    r.hset(jobs.JOB_KEY.format(job_id=first), "updated_at", (utcnow() - timedelta(hours=1)).isoformat())
    try:
        code, report = cli_json("restore", done["backup_id"], "--dry-run")
        assert code == 1 and f"another restore is running (job {first})" in report["error"], report
    finally:
        jobs.unlock(r, "restore", first)
