"""Restore into another target (README "Restore into another target"): another database, a table beside the
live one, another DynamoDB table, a backup read from another installation's store. The live data stays
byte-identical (row hashes) and the target holds the backup's rows. Real PostgreSQL, moto, workers."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from conftest import cli_json, run_cli
from test_backup import backup, make_data, manifest_of
from test_restore import hashes, table_hash
from worker import commands, migrator
from worker.connections import aws_client, pg_connect
from worker.dynamo import drop_table, to_item

AFTER = "added after the backup"


@pytest.fixture(scope="module")
def made(migrated: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """One backup of the session's data; then the live data is changed (a row in work_tasks and services, an
    item in DynamoDB), so that a restore that wrote into the live data could not go unseen."""
    make_data(migrated)
    report = backup(migrated)
    assert report["ok"], report
    at_backup = hashes(migrated)
    with pg_connect(migrated, autocommit=True) as pg:
        pg.execute("insert into work_tasks (title) values (%s)", (AFTER,))
        pg.execute("""insert into services (name, owner_workgroup_id, tier)
                      select %s, owner_workgroup_id, 3 from services order by id limit 1""", (AFTER,))
    aws_client(migrated, "dynamodb").put_item(TableName=migrated.dynamo_table_name,
                                              Item=to_item({"PK": "TASK#after", "SK": "ANALYSIS"}))
    try:
        yield {"settings": migrated, "backup_id": report["backup_id"], "at_backup": at_backup,
               "tmp": tmp_path_factory.mktemp("targets")}
    finally:
        with pg_connect(migrated, autocommit=True) as pg:
            pg.execute("delete from work_tasks where title = %s", (AFTER,))
            pg.execute("delete from services where name = %s", (AFTER,))
        aws_client(migrated, "dynamodb").delete_item(TableName=migrated.dynamo_table_name,
                                                     Key=to_item({"PK": "TASK#after", "SK": "ANALYSIS"}))


@pytest.fixture(scope="module")
def other_db(made: dict[str, Any]) -> Iterator[Any]:
    """An empty database on the same server, migrated to the head (as an operator would before restoring)."""
    live = made["settings"]
    name = f"{live.postgres_database}_target"
    with pg_connect(live, dbname="postgres", autocommit=True) as conn:
        conn.execute(psycopg.sql.SQL("create database {}").format(psycopg.sql.Identifier(name)))
    s = live.model_copy(update={"postgres_database": name,
                                "dynamo_table_name": f"worktask-target-{secrets.token_hex(3)}"})
    try:
        migrator.upgrade(s, migrator.script_path(s))
        yield s
    finally:
        with pg_connect(live, dbname="postgres", autocommit=True) as conn:
            conn.execute(psycopg.sql.SQL("drop database if exists {} with (force)").format(
                psycopg.sql.Identifier(name)))
        drop_table(aws_client(live, "dynamodb"), s.dynamo_table_name)


def test_restore_into_another_database_leaves_the_live_data_identical(made: dict[str, Any], other_db: Any) -> None:
    live = made["settings"]
    before = hashes(live)
    assert before != made["at_backup"]  # the live data differs from the backup's
    code, report = cli_json("restore", made["backup_id"], "--target-database", other_db.postgres_database,
                            "--target-dynamodb-table", other_db.dynamo_table_name, timeout=300)
    assert code == 0 and report["ok"], report
    assert hashes(live) == before
    assert hashes(other_db) == made["at_backup"]  # every PostgreSQL table and the new DynamoDB table
    manifest = manifest_of(live, made["backup_id"])
    assert report["totals"]["rows"] == sum(t["rows"] for t in manifest["tables"])


def test_restore_beside_the_live_table_under_a_new_name(made: dict[str, Any]) -> None:
    live = made["settings"]
    before = hashes(live)
    with pg_connect(live) as conn:
        live_indexes = conn.execute("select indexname from pg_indexes where tablename = 'services'").fetchall()
    try:
        code, report = cli_json("restore", made["backup_id"], "--tables", "services", "--target-table",
                                "services_restored", timeout=300)
        assert code == 0 and report["ok"], report
        assert hashes(live) == before  # the live services (and everything else) untouched
        with pg_connect(live) as conn:
            assert table_hash(conn, "services_restored") == made["at_backup"]["services"]
            assert conn.execute("select obj_description('services_restored'::regclass, 'pg_class')").fetchone()[0] \
                is None  # the restore's marker is gone: no clean-up drops it
            names = {r[0] for r in conn.execute("""select conname from pg_constraint
                                                   where conrelid = 'services_restored'::regclass""")}
            names |= {r[0] for r in conn.execute(
                "select indexname from pg_indexes where tablename = 'services_restored'")}
            assert names and all(n.startswith("services_restored") for n in names), names
            assert "services_restored_pkey" in names
            assert not conn.execute("""select 1 from pg_constraint where contype = 'f'
                                       and conrelid = 'services_restored'::regclass""").fetchone()
            assert conn.execute("select indexname from pg_indexes where tablename = 'services'").fetchall() \
                == live_indexes
            top = conn.execute("select max(id) from services_restored").fetchone()[0]  # ids go on past the rows
            new = conn.execute("insert into services_restored (name, owner_workgroup_id, tier) select 'x', "
                               "owner_workgroup_id, 1 from services_restored limit 1 returning id").fetchone()[0]
            assert new > top
            conn.rollback()
        proc = run_cli("restore", made["backup_id"], "--tables", "services", "--target-table", "services_restored")
        assert proc.returncode == 2 and "exists already" in proc.stderr, proc.stderr
    finally:
        with pg_connect(live, autocommit=True) as conn:
            conn.execute("drop table if exists services_restored")


def test_restore_from_another_installations_folder_and_s3_prefix(made: dict[str, Any], bucket: str) -> None:
    live = made["settings"]
    before = hashes(live)
    folder = made["tmp"] / "other-install"
    other_local = backup(live, backup_dir=folder, backup_prefix="theirs")
    other_s3 = backup(live, s3_bucket_name=bucket, backup_prefix="other/install")
    assert other_local["ok"] and other_s3["ok"], (other_local, other_s3)
    # not found in this installation's own store
    proc = run_cli("restore", other_local["backup_id"], "--dry-run")
    assert proc.returncode == 2 and "not found" in proc.stderr, proc.stderr
    code, report = cli_json("restore", other_local["backup_id"], "--from", str(folder / "theirs"), "--dry-run",
                            timeout=300)
    assert code == 0 and report["ok"] and report["dry_run"], report
    assert report["totals"]["rows"] == other_local["totals"]["rows"]
    try:
        code, report = cli_json("restore", other_s3["backup_id"], "--from", f"s3://{bucket}/other/install",
                                "--tables", "services", "--target-table", "services_from_s3", timeout=300)
        assert code == 0 and report["ok"], report
        with pg_connect(live) as conn:
            assert table_hash(conn, "services_from_s3") == table_hash(conn, "services")  # backed up just now
    finally:
        with pg_connect(live, autocommit=True) as conn:
            conn.execute("drop table if exists services_from_s3")
    assert hashes(live) == before


BAD = {
    "password": (["--target-database", "postgresql://postgres:s3cr3t-pw@127.0.0.1:5432/x"], "password"),
    "missing database": (["--target-database", "worktask_no_such_db", "--tables", "services"], "does not exist"),
    "the live database": (["--target-database", "{live}", "--tables", "services"], "is the live database"),
    "dynamodb into the live table": (["--target-database", "worktask_no_such_db"], "--target-dynamodb-table"),
    "two tables": (["--tables", "services,dependencies", "--target-table", "x_restored"], "exactly one"),
    "every table": (["--target-table", "x_restored"], "exactly one"),
    "the dynamodb table": (["--tables", "{dyn}", "--target-table", "x_restored"], "exactly one PostgreSQL"),
    "existing table": (["--tables", "services", "--target-table", "work_tasks"], "exists already"),
    "same table": (["--tables", "services", "--target-table", "services"], "the table itself"),
    "dotdot": (["--from", "/tmp/../etc/backups"], "'..'"),
    "dotdot s3": (["--from", "s3://b/x/../y"], "'..'"),
    "no such folder": (["--from", "/nonexistent/worktask/backups"], "no such folder"),
    "dynamodb target without its table": (["--tables", "services", "--target-dynamodb-table", "other"],
                                          "no DynamoDB table"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_target_exits_2_naming_the_rule_and_changes_nothing(made: dict[str, Any], case: str) -> None:
    live = made["settings"]
    args, says = BAD[case]
    args = [a.format(live=live.postgres_database, dyn=live.dynamo_table_name) for a in args]
    before, jobs_before = hashes(live), commands.job_list(live, 5)
    proc = run_cli("restore", made["backup_id"], *args)
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert len(proc.stderr.strip().splitlines()) == 1 and says in proc.stderr, proc.stderr
    assert "s3cr3t" not in proc.stderr + proc.stdout
    assert hashes(live) == before and commands.job_list(live, 5) == jobs_before
