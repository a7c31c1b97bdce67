"""Hostile and careless input (issue 16): exit 2, one line on stderr naming the fix, nothing changed."""

from __future__ import annotations

import base64
import json
import os
import secrets
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from conftest import ROOT, run_cli
from test_backup import backup, data, make_data  # noqa: F401 - `data` is a fixture
from test_restore import hashes
from worker import backups, commands
from worker.connections import aws_client
from worker.dynamo import drop_table, ensure_table


def one_line_exit_2(proc: subprocess.CompletedProcess, *words: str) -> str:
    line = proc.stderr.strip()
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert len(line.splitlines()) == 1, proc.stderr
    for w in words:
        assert w in line, line
    return line


@pytest.fixture(scope="module")
def backup_id(migrated: Any) -> str:
    make_data(migrated)
    report = backup(migrated)
    assert report["ok"], report
    return report["backup_id"]


@pytest.mark.parametrize("value", ["", " ", " , ", ","])
def test_an_empty_tables_option_is_refused_never_a_full_restore(data: Any, backup_id: str, value: str) -> None:  # noqa: F811
    before = hashes(data)
    one_line_exit_2(run_cli("restore", backup_id, "--tables", value), "--tables")
    assert hashes(data) == before


def test_a_blank_tables_only_variable_is_refused(data: Any, backup_id: str) -> None:  # noqa: F811
    before = hashes(data)
    for value in ("", "  "):
        one_line_exit_2(run_cli("restore", backup_id, env={"TABLES_ONLY": value}), "TABLES_ONLY")
    assert hashes(data) == before


def migrations_copy(tmp_path: Path) -> Path:
    path = tmp_path / "migrations"
    shutil.copytree(ROOT / "migrations", path, ignore=shutil.ignore_patterns("__pycache__"))
    return path


def test_migrate_create_never_runs_code_from_its_name(tmp_path: Path) -> None:
    path = migrations_copy(tmp_path)
    marker = tmp_path / "pwned"
    before = sorted(p.name for p in (path / "versions").iterdir())
    env = {"MIGRATIONS_PATH": str(path)}
    hostile = f'add_x"""; import os; os.system("touch {marker}"); """'
    one_line_exit_2(run_cli("migrate", "create", hostile, env=env), "[a-z0-9_]")
    one_line_exit_2(run_cli("migrate", "create", 'broken"""', env=env))
    one_line_exit_2(run_cli("migrate", "create", "x" * 200, env=env))
    assert not marker.exists()
    assert sorted(p.name for p in (path / "versions").iterdir()) == before
    # a description is data, whatever it holds
    proc = run_cli("migrate", "create", "add_labels", f'"""; import os; os.system("touch {marker}") #', env=env)
    assert proc.returncode == 0, proc.stderr
    made = Path(proc.stdout.strip())
    assert made.exists() and not marker.exists()
    namespace: dict[str, Any] = {}
    exec(compile(made.read_text(), str(made), "exec"), namespace)  # noqa: S102 - our own generated file
    assert namespace["description"].startswith('"""; import os') and not marker.exists()


def test_a_backup_made_with_another_key_is_refused_by_the_cli_naming_both_keys(data: Any, backup_id: str) -> None:  # noqa: F811
    other = base64.b64encode(secrets.token_bytes(32)).decode()
    before = hashes(data)
    for args in (("restore", backup_id, "--tables", "services"), ("backup", "validate", backup_id)):
        line = one_line_exit_2(run_cli(*args, env={"BACKUP_ENCRYPTION_KEY": other}), "BACKUP_ENCRYPTION_KEY")
        assert "key" in line and backups.master_key_id(base64.b64decode(other)) in line
    assert hashes(data) == before


@pytest.mark.parametrize("prefix", ["..", "a/../b", "/abs", "back ups", "a//b"])
def test_a_backup_prefix_that_leaves_the_store_is_refused(data: Any, prefix: str) -> None:  # noqa: F811
    for args in (("backup",), ("backup", "list")):
        one_line_exit_2(run_cli(*args, env={"BACKUP_PREFIX": prefix}), "BACKUP_PREFIX")


def test_retention_days_has_one_bound_for_flag_and_variable(data: Any) -> None:  # noqa: F811
    one_line_exit_2(run_cli("backup", "cleanup", "--retention-days", "9999999999"), "--retention-days")
    one_line_exit_2(run_cli("backup", "cleanup", env={"RETENTION_DAYS": "9999999999"}), "RETENTION_DAYS")


@pytest.mark.parametrize("content,line_no", [(b"DRY_RUN=true\nBAD=\xff\xfe\n", 2),
                                             (b"DRY_RUN=true\nthis is not a setting\n", 2)])
def test_a_bad_env_file_is_named_with_its_line(tmp_path: Path, content: bytes, line_no: int) -> None:
    (tmp_path / ".env").write_bytes(content)
    proc = subprocess.run([sys.executable, "-m", "worker.cli", "config"], capture_output=True, text=True,
                          cwd=tmp_path, env={**os.environ}, timeout=60)
    one_line_exit_2(proc, ".env", f"line {line_no}")


def test_usage_errors_and_echoed_values_stay_on_one_line(data: Any) -> None:  # noqa: F811
    one_line_exit_2(run_cli("backup", "--chunk-rows", "5", "--compress", "--encrypt"), "--chunk-rows")
    one_line_exit_2(run_cli("backup", "validate", "20261124T101500Z-backup-1a2b3c\n"), "malformed")
    one_line_exit_2(run_cli("jobs", "show", "20261124T101500Z-backup-1a2b3c\n"), "malformed")
    proc = run_cli("migrate", "rollback", "\x1b[2J\x1b[31mred")
    line = one_line_exit_2(proc)
    assert "\x1b" not in line and "\\x1b" in line


def test_stack_children_get_only_the_secrets_they_need(settings: Any) -> None:
    from worker.stack import Stack

    key = os.environ["BACKUP_ENCRYPTION_KEY"]
    state = Stack(settings).read()
    seen = {}
    for s in state["services"]:
        if s.get("pid") and s.get("started"):
            environ = Path(f"/proc/{s['pid']}/environ").read_bytes().split(b"\0")
            seen[s["name"]] = any(e.startswith(b"BACKUP_ENCRYPTION_KEY=") and key.encode() in e for e in environ)
    assert seen["worker1"] and seen["worker2"]  # the workers encrypt: they need it
    assert not seen["moto"] and not seen["beat"] and not seen["flower"], seen


def test_a_dry_run_restore_checks_what_the_real_one_needs(data: Any, backup_id: str) -> None:  # noqa: F811
    client = aws_client(data, "dynamodb")
    drop_table(client, data.dynamo_table_name)  # as after moto restarted
    try:
        one_line_exit_2(run_cli("restore", backup_id, "--tables", data.dynamo_table_name, "--dry-run"),
                        data.dynamo_table_name, "worktask migrate")
    finally:
        ensure_table(client, data.dynamo_table_name)
        restored = run_cli("restore", backup_id, "--tables", data.dynamo_table_name, "--json")
        assert restored.returncode == 0, restored.stdout + restored.stderr
    assert json.loads(restored.stdout)["ok"]
    assert commands.backup_list(data)[0]["state"] == "complete"
