"""The stack the session runs on: status, Flower behind basic auth, beat, and the embedded path end to end."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import psutil
import pytest

from conftest import ROOT, cli_json


def test_status_json_lists_every_service_answering(stack: Any) -> None:
    code, data = cli_json("stack", "status")
    assert code == 0
    names = [s["name"] for s in data["services"]]
    assert names == ["postgres", "redis", "moto", "worker1", "worker2", "beat", "flower"]
    for s in data["services"]:
        assert set(s) == {"name", "url", "pid", "ok"} and s["ok"], s


def test_flower_needs_basic_auth_and_lists_both_workers(stack: Any) -> None:
    flower = next(s for s in stack.read()["services"] if s["name"] == "flower")
    with pytest.raises(urllib.error.HTTPError) as denied:
        urllib.request.urlopen(flower["url"] + "/api/workers", timeout=5)
    assert denied.value.code == 401
    auth = (Path(stack.dir) / "flower-auth").read_text().strip()
    req = urllib.request.Request(flower["url"] + "/api/workers?refresh=1")
    req.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
    workers = json.load(urllib.request.urlopen(req, timeout=15))
    assert {"worker1", "worker2"} <= {name.split("@")[0] for name in workers}


def test_flower_does_not_show_the_password_in_its_command_line(stack: Any) -> None:
    flower = next(s for s in stack.read()["services"] if s["name"] == "flower")
    auth = (Path(stack.dir) / "flower-auth").read_text().strip()
    assert auth.split(":", 1)[1] not in " ".join(psutil.Process(flower["pid"]).cmdline())


def test_beat_runs_and_loads_the_schedule(stack: Any) -> None:
    beat = next(s for s in stack.read()["services"] if s["name"] == "beat")
    assert psutil.Process(beat["pid"]).is_running()
    log = Path(beat["log"])
    deadline = time.monotonic() + 20
    while "beat: Starting" not in log.read_text() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert "beat: Starting" in log.read_text()


@pytest.mark.embedded
def test_embedded_stack_up_health_down_on_dead_ports(tmp_path: Path, stack: Any) -> None:
    """A machine with nothing on the configured ports: stack up starts embedded PostgreSQL and Redis."""
    state = tmp_path / "st"
    env = {**os.environ, "WORKTASK_STATE_DIR": str(state), "POSTGRES_HOST": "127.0.0.1", "POSTGRES_PORT": "1",
           "CELERY_BROKER_URL": "redis://127.0.0.1:1/0", "POSTGRES_DATABASE": "ai_agent_system"}
    env.pop("BACKUP_DIR", None)

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "worker.cli", *args], env=env, cwd=ROOT,
                              capture_output=True, text=True, timeout=180)
    up = cli("stack", "up", "--json")
    try:
        assert up.returncode == 0, up.stderr
        services = {s["name"]: s for s in json.loads(up.stdout)["services"]}
        assert services["postgres"]["url"].startswith("postgresql://postgres@/postgres?host=")
        assert services["redis"]["url"].startswith("redis+socket://")
        migrate = cli("migrate")
        assert migrate.returncode == 0, migrate.stderr
        backup = cli("backup", "--json")  # without a backup the `backups` check says so (degraded)
        assert backup.returncode == 0, backup.stderr
        checked = cli("backup", "validate", json.loads(backup.stdout)["backup_id"])  # never validated: degraded
        assert checked.returncode == 0, checked.stderr
        health = cli("health", "--json")
        report = json.loads(health.stdout)
        assert health.returncode == 0 and report["status"] == "healthy", report
        assert str(state / "backups") in next(c for c in report["checks"] if c["name"] == "backup_store")["detail"]
        pids = [s["pid"] for s in services.values() if s["pid"]]
    finally:
        down = cli("stack", "down")
    assert down.returncode == 0 and "gone with it" in down.stdout
    time.sleep(0.5)
    assert not [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
    assert not (state / "stack.json").exists()
