"""The nightly cycle: crontab schedules from the environment (a bad one exits 2 naming its variable), one run
per schedule slot however many beats fire, a skipped run recorded while a job of its kind runs, and
`worktask jobs list`. The slow test runs two real `celery beat` processes on the session's workers."""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from conftest import ROOT, cli_json, run_cli
from worker import jobs
from worker.connections import redis_client
from worker.settings import Settings, parse_crontab

LIST_FIELDS = {"job_id", "kind", "trigger", "state", "started_at", "finished_at", "duration_s"}


# settings --------------------------------------------------------------------------------------------------

def test_default_schedules_are_staggered(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("BACKUP_SCHEDULE", "CLEANUP_SCHEDULE", "MAINTENANCE_SCHEDULE", "HEALTH_SCHEDULE", "CLEANUP_HOUR",
                "CLEANUP_MINUTE", "HEALTH_INTERVAL_MINUTES", "DRILL_SCHEDULE"):
        monkeypatch.delenv(var, raising=False)
    s = Settings(_env_file=None)
    assert s.schedules == {"backup": "0 1 * * *", "backup_cleanup": "30 2 * * *", "maintenance": "30 3 * * *",
                           "health": "*/15 * * * *", "drill": "0 5 * * 0"}


def test_the_older_variables_feed_the_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CLEANUP_SCHEDULE", raising=False)
    monkeypatch.delenv("HEALTH_SCHEDULE", raising=False)
    s = Settings(_env_file=None, cleanup_hour=4, cleanup_minute=5, health_interval_minutes=120)
    assert (s.schedules["backup_cleanup"], s.schedules["health"]) == ("5 4 * * *", "0 */2 * * *")
    s = Settings(_env_file=None, cleanup_schedule="0 5 * * 1", health_schedule="*/5  * * * *")
    assert (s.schedules["backup_cleanup"], s.schedules["health"]) == ("0 5 * * 1", "*/5 * * * *")


@pytest.mark.parametrize("value", ["0 25 * * *", "61 * * * *", "0 1 * *", "every night", "0 1 * * * *"])
def test_a_bad_schedule_exits_2_naming_the_variable(value: str) -> None:
    proc = run_cli("config", env={"BACKUP_SCHEDULE": value, "WORKTASK_IGNORE_STACK": "1"}, timeout=60)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "BACKUP_SCHEDULE" in lines[0] and "crontab of 5 fields" in lines[0], proc.stderr


def test_a_health_interval_that_is_no_crontab_step_names_health_schedule() -> None:
    proc = run_cli("config", env={"HEALTH_INTERVAL_MINUTES": "90", "WORKTASK_IGNORE_STACK": "1"}, timeout=60)
    assert proc.returncode == 2 and "HEALTH_SCHEDULE" in proc.stderr, proc.stderr


def test_celery_beat_refuses_a_bad_schedule(tmp_path: Path) -> None:
    env = {**os.environ, "BACKUP_SCHEDULE": "0 25 * * *", "WORKTASK_IGNORE_STACK": "1"}
    proc = subprocess.run([sys.executable, "-m", "celery", "-A", "worker", "beat", "-s", str(tmp_path / "schedule")],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=60)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "BACKUP_SCHEDULE" in proc.stderr


# the slot ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("expr", "now", "due"), [
    ("0 1 * * *", "2026-11-24T01:00:30", "2026-11-24T01:00"),
    ("0 1 * * *", "2026-11-24T00:59:59", "2026-11-23T01:00"),
    ("30 2 * * *", "2026-11-24T13:00:00", "2026-11-24T02:30"),
    ("*/15 * * * *", "2026-11-24T10:44:59", "2026-11-24T10:30"),
    ("0 3 * * 0", "2026-11-24T10:00:00", "2026-11-22T03:00"),  # Sunday
    ("0 0 1 1 *", "2026-11-24T10:00:00", "2026-01-01T00:00"),
    ("* * * * *", "2026-11-24T10:00:59", "2026-11-24T10:00"),
])
def test_the_slot_is_the_crontabs_previous_due_time(expr: str, now: str, due: str) -> None:
    at = datetime.fromisoformat(now).replace(tzinfo=UTC)
    assert jobs.previous_fire(parse_crontab(expr), at) == datetime.fromisoformat(due).replace(tzinfo=UTC)


def test_one_job_per_slot_and_a_skip_while_one_runs(settings: Any) -> None:
    r = redis_client(settings)
    kind = f"beatprobe{secrets.token_hex(3)}"
    first = jobs.scheduled(r, kind, 10**9, {})  # a period form: slot time // 1e9, fixed for years
    assert first is not None and jobs.scheduled(r, kind, 10**9, {}) is None  # a second beat, same slot
    jobs.start(r, first, 1)
    assert jobs.scheduled(r, kind, 10**8, {}) is None  # another slot while `first` runs: a recorded skip
    rows = [j for j in jobs.recent(r, 50) if j["kind"] == kind]
    assert [j["state"] for j in rows] == ["succeeded", "running"]
    assert rows[0]["skipped"] == f"{kind} {first} is running" and rows[0]["trigger"] == "beat"
    assert jobs.report(r, rows[0]["job_id"])["skipped"] == rows[0]["skipped"]


def test_jobs_list_json_shape(settings: Any) -> None:
    r = redis_client(settings)
    made = [jobs.create(r, "listprobe", {}) for _ in range(3)]
    code, rows = cli_json("jobs", "list", "--limit", "2")
    assert code == 0 and isinstance(rows, list) and len(rows) == 2
    assert [j["job_id"] for j in rows] == made[:0:-1]  # newest first
    for j in rows:
        assert LIST_FIELDS <= set(j) and j["trigger"] == "cli" and j["state"] == "queued"
    proc = run_cli("jobs", "list", "--limit", "0")
    assert proc.returncode == 2, proc.stderr
    proc = run_cli("jobs", "list")
    assert proc.returncode == 0 and made[-1] in proc.stdout, proc.stdout


# two real beats ------------------------------------------------------------------------------------------------

KINDS = {"backup", "backup_cleanup", "health"}
EVERY_MINUTE = {"BACKUP_SCHEDULE": "* * * * *", "CLEANUP_SCHEDULE": "* * * * *",
                "MAINTENANCE_SCHEDULE": "* * * * *", "HEALTH_SCHEDULE": "* * * * *"}


def maintenance_registered() -> bool:
    import importlib

    from worker.app import app
    from worker.constants import TASK_MAINTENANCE_START, TASK_MODULES

    for module in TASK_MODULES:
        importlib.import_module(module)
    return TASK_MAINTENANCE_START in app.tasks


def beat(tmp: Path, name: str) -> subprocess.Popen:
    log = (tmp / f"{name}.log").open("w")
    return subprocess.Popen([sys.executable, "-m", "celery", "-A", "worker", "beat", "-s", str(tmp / f"{name}.db"),
                             "--max-interval", "1", "--loglevel", "INFO"],
                            env={**os.environ, **EVERY_MINUTE}, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)


def beat_jobs(since: str) -> list[dict[str, Any]]:
    code, rows = cli_json("jobs", "list", "--limit", "200")
    assert code == 0
    return [j for j in rows if j["trigger"] == "beat" and j["created_at"] >= since]


@pytest.mark.slow
def test_two_beats_run_each_scheduled_job_once_per_slot(migrated: Any, tmp_path: Path) -> None:
    kinds = KINDS | ({"maintenance"} if maintenance_registered() else set())
    while not 1 <= datetime.now(UTC).second <= 30:  # start both well before a minute: both fire for it
        time.sleep(0.5)
    since = datetime.now(UTC).isoformat()
    beats = [beat(tmp_path, "beat-1"), beat(tmp_path, "beat-2")]
    logs = [tmp_path / "beat-1.log", tmp_path / "beat-2.log"]
    try:
        deadline = time.monotonic() + 150
        while time.monotonic() < deadline:
            rows = beat_jobs(since)
            done = {j["kind"] for j in rows if j["state"] == "succeeded" and not j["skipped"]}
            fired = all("Sending due task nightly-backup" in log.read_text() for log in logs)
            if kinds <= done and fired:
                break
            assert all(b.poll() is None for b in beats), (tmp_path / "beat-1.log").read_text()[-3000:]
            time.sleep(2)
        else:
            pytest.fail(f"scheduled jobs not all succeeded, or a beat did not fire, in 150 s: {rows}")
    finally:
        for b in beats:
            if b.poll() is None:
                os.killpg(b.pid, signal.SIGTERM)
        for b in beats:
            try:
                b.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(b.pid, signal.SIGKILL)
                b.wait(5)
    first_fire = [min(line[:16] for line in log.read_text().splitlines()
                      if "Sending due task nightly-backup" in line) for log in logs]
    assert first_fire[0] == first_fire[1], first_fire  # both beats fired for the same minute: one was refused
    deadline = time.monotonic() + 120  # let what the beats started end, so later tests find the workers idle
    while time.monotonic() < deadline:
        rows = beat_jobs(since)
        if all(j["state"] in ("succeeded", "failed") for j in rows):
            break
        time.sleep(2)
    rows = [j for j in beat_jobs(since) if j["kind"] in kinds]
    assert rows and all(j["state"] == "succeeded" for j in rows), rows
    per_slot = Counter((j["kind"], j["created_at"][:16]) for j in rows)  # created within the slot's minute
    assert max(per_slot.values()) == 1, per_slot  # never two runs (nor a run and a skip) for one slot
    assert all(j["duration_s"] is not None for j in rows)


def test_beat_keeps_its_schedule_as_json_and_a_restarted_beat_reads_it(tmp_path: Path) -> None:
    """celery's PersistentScheduler keeps when each entry last ran in a shelve (pickle) file; ours keeps the
    same in JSON, so that a beat restarted after a missed due time still runs it once, late."""
    from worker.app import app
    from worker.beat_scheduler import JsonFileScheduler

    path = tmp_path / "beat-schedule"
    path.write_bytes(b"\x80\x04 an old shelve file")  # celery's old file at the same path: ignored, written over
    first = JsonFileScheduler(app, schedule_filename=str(path))
    long_ago = datetime(2026, 1, 1, 1, 0, tzinfo=UTC)
    first.schedule["nightly-backup"].last_run_at = long_ago
    first.sync()
    saved = json.loads(path.read_text())
    assert saved["nightly-backup"] == long_ago.isoformat() and set(saved) >= {"nightly-backup", "health-check"}
    again = JsonFileScheduler(app, schedule_filename=str(path))
    entry = again.schedule["nightly-backup"]
    assert entry.last_run_at == long_ago
    assert entry.is_due()[0]  # missed since: due at once
