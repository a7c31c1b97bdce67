"""`worktask health`: a chord of one task per check on real workers; exit codes; progress and `jobs show`."""

from __future__ import annotations

import time
from typing import Any

from conftest import cli_json, run_cli
from tasks.health import CHECKS, health_report, run_check
from worker import jobs
from worker.connections import redis_client
from worker.reports import Check


def test_health_json_is_one_object_with_every_check_green(migrated: Any) -> None:
    code, report = cli_json("health")
    assert code == 0, report
    assert report["kind"] == "health" and report["state"] == "succeeded" and report["ok"] is True
    assert report["status"] == "healthy"
    assert [c["name"] for c in report["checks"]] == list(CHECKS)
    assert all(c["ok"] for c in report["checks"]), report["checks"]
    workers = next(c for c in report["checks"] if c["name"] == "workers")
    assert "2 worker(s)" in workers["detail"]
    for key in ("job_id", "started_at", "finished_at", "dry_run", "error"):
        assert key in report


def test_jobs_show_gives_the_counters_and_report_of_a_finished_job(migrated: Any) -> None:
    _, report = cli_json("health")
    code, shown = cli_json("jobs", "show", report["job_id"])
    assert code == 0
    assert shown["progress"]["state"] == "succeeded"
    assert shown["progress"]["chunks_total"] == shown["progress"]["chunks_done"] == len(CHECKS)
    assert shown["report"] == report


def test_no_wait_prints_the_job_id_and_the_job_runs_on(migrated: Any) -> None:
    proc = run_cli("health", "--no-wait")
    assert proc.returncode == 0
    job_id = proc.stdout.strip()
    report = jobs.wait(redis_client(migrated), job_id, timeout=60)
    assert report["job_id"] == job_id and report["status"] == "healthy"


def test_dead_broker_exits_3_within_10_s_naming_redis_and_the_url(settings: Any) -> None:
    began = time.monotonic()
    proc = run_cli("health", env={"CELERY_BROKER_URL": "redis://127.0.0.1:1/0", "WORKTASK_IGNORE_STACK": "1"})
    assert time.monotonic() - began < 10
    assert proc.returncode == 3
    line = proc.stderr.strip()
    assert len(line.splitlines()) == 1 and "Redis" in line and "redis://127.0.0.1:1/0" in line
    assert "Traceback" not in proc.stderr


def test_unknown_or_malformed_job_id_exits_2(settings: Any) -> None:
    proc = run_cli("jobs", "show", "20990101T000000Z-health-000000")
    assert proc.returncode == 2 and "not found" in proc.stderr
    proc = run_cli("jobs", "show", "../etc/passwd")
    assert proc.returncode == 2 and "malformed" in proc.stderr


def test_failing_check_is_reported_not_raised(settings: Any) -> None:
    broken = settings.model_copy(update={"s3_bucket_name": "no-such-bucket-health"})
    check = run_check("backup_store", broken)
    assert not check.ok and "no-such-bucket-health" in check.detail


def test_status_is_degraded_for_a_store_and_unhealthy_for_postgres() -> None:
    ok = [Check(name=n, ok=True, detail="") for n in CHECKS]
    assert health_report("j", ok).status == "healthy"
    store_down = [c if c.name != "backup_store" else Check(name=c.name, ok=False, detail="x") for c in ok]
    rep = health_report("j", store_down)
    assert (rep.status, rep.ok, rep.error) == ("degraded", False, "failing: backup_store")
    pg_down = [c if c.name != "postgres" else Check(name=c.name, ok=False, detail="x") for c in ok]
    assert health_report("j", pg_down).status == "unhealthy"


def test_scheduled_health_runs_once_per_slot(migrated: Any) -> None:
    from tasks.health import start

    r = redis_client(migrated)
    results = [start.apply_async(kwargs={"job_id": None, "options": {"scheduled": True}}) for _ in range(2)]
    first, second = (res.get(timeout=30) for res in results)
    del results  # let the result consumer go while Redis still answers
    ran = [x for x in (first, second) if "job_id" in x]
    skipped = [x for x in (first, second) if x.get("skipped")]
    assert len(skipped) >= 1
    for x in ran:
        assert jobs.wait(r, x["job_id"], timeout=60)["ok"]
