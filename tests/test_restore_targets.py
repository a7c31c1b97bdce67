"""Restore into another target (README "Restore into another target"): another database, a table beside the
live one, another DynamoDB table, a backup read from another installation's store. The live data stays
byte-identical (row hashes) and the target holds the backup's rows. Real PostgreSQL, moto, workers."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from conftest import cli_json, run_cli, run_job
from test_backup import backup, make_data, manifest_of
from test_restore import hashes, table_hash
from worker import backups, commands, jobs, migrator
from worker.connections import aws_client, pg_connect, pg_params, redis_client
from worker.constants import TASK_RESTORE_START
from worker.dynamo import drop_table, ensure_table, to_item

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
    with pg_connect(live, autocommit=True) as conn:
        live_indexes = conn.execute("select indexname from pg_indexes where tablename = 'services'").fetchall()
        conn.execute("create statistics services_name_tier_st on name, tier from services")
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
            names |= {r[0] for r in conn.execute(
                "select stxname from pg_statistic_ext where stxrelid = 'services_restored'::regclass")}
            names |= {r[0] for r in conn.execute("select pg_get_serial_sequence('services_restored', 'id')")}
            assert all(n.removeprefix("public.").startswith("services_restored") for n in names), names
            assert {"services_restored_pkey", "services_restored_name_tier_st", "public.services_restored_id_seq"} \
                <= names, names
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
            conn.execute("drop statistics if exists services_name_tier_st")


def test_a_target_table_created_after_the_check_fails_the_job_and_renames_nothing(made: dict[str, Any]) -> None:
    """The finalize's transaction checks again: a script that submits the job itself (no CLI check) or a
    table created meanwhile makes the job fail, naming it; the table and the live one stay as they were."""
    live = made["settings"]
    before = hashes(live)
    with pg_connect(live, autocommit=True) as conn:
        conn.execute("create table services_taken (note text)")
        conn.execute("insert into services_taken values ('mine')")
    try:
        options = {**backups.store_options(live), "backup_id": made["backup_id"], "tables": ["services"],
                   "exact": False, "dry_run": False, "target_database": None, "target_table": "services_taken",
                   "target_dynamodb_table": None, **backups.auth_options(live, False)}
        report = run_job(live, lambda: commands.submit(live, "restore", TASK_RESTORE_START, options), 300)
        assert not report["ok"] and "services_taken exists already" in report["error"], report
        with pg_connect(live) as conn:
            assert conn.execute("select note from services_taken").fetchall() == [("mine",)]
            assert not conn.execute("""select relname from pg_class  -- no replacement or ledger left
                                       where obj_description(oid, 'pg_class') like 'worktask:restore:%'""").fetchall()
        assert hashes(live) == before
    finally:
        with pg_connect(live, autocommit=True) as conn:
            conn.execute("drop table if exists services_taken")


def test_dynamodb_items_into_another_table_with_exact(made: dict[str, Any]) -> None:
    """Into an existing table holding an item the backup does not have: --exact deletes it there; the live
    table is unchanged."""
    live = made["settings"]
    before = hashes(live)
    other = live.model_copy(update={"dynamo_table_name": f"worktask-other-{secrets.token_hex(3)}"})
    client = aws_client(live, "dynamodb")
    ensure_table(client, other.dynamo_table_name)
    client.put_item(TableName=other.dynamo_table_name, Item=to_item({"PK": "TASK#stray", "SK": "ANALYSIS"}))
    try:
        code, report = cli_json("restore", made["backup_id"], "--tables", live.dynamo_table_name,
                                "--target-dynamodb-table", other.dynamo_table_name, "--exact", timeout=300)
        assert code == 0 and report["ok"], report
        assert [t["removed"] for t in report["tables"]] == [1], report
        assert hashes(other)["dynamodb"] == made["at_backup"]["dynamodb"]
        assert hashes(live) == before
    finally:
        drop_table(client, other.dynamo_table_name)


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
    code, listed = cli_json("backup", "list", "--from", str(folder / "theirs"))
    assert code == 0 and [b["backup_id"] for b in listed] == [other_local["backup_id"]], listed
    code, listed = cli_json("backup", "list", "--from", f"s3://{bucket}/other/install")
    assert code == 0 and [b["backup_id"] for b in listed] == [other_s3["backup_id"]], listed
    code, checked = cli_json("backup", "validate", other_s3["backup_id"], "--from", f"s3://{bucket}/other/install",
                             timeout=300)
    assert code == 0 and checked["ok"], checked
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
    # the reviewer's: DynamoDB elsewhere while every PostgreSQL table would be swapped into the live database
    "dynamodb elsewhere, postgres live": (["--target-dynamodb-table", "other-items"], "would replace the live tables"),
    # the reviewer's: the live database under another address is still the live database
    "the live database by another address": (["--target-database", "postgresql://postgres@localhost:{port}/{live}",
                                              "--tables", "services"], "is the live database"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_target_exits_2_naming_the_rule_and_changes_nothing(made: dict[str, Any], case: str) -> None:
    live = made["settings"]
    args, says = BAD[case]
    where = pg_params(live)
    if "{port}" in " ".join(args) and where["host"] != "127.0.0.1":
        pytest.skip(f"the live server is at {where['host']}, not 127.0.0.1: localhost is no alias of it")
    args = [a.format(live=live.postgres_database, dyn=live.dynamo_table_name, port=where["port"]) for a in args]
    before, jobs_before = hashes(live), commands.job_list(live, 5)
    proc = run_cli("restore", made["backup_id"], *args)
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert len(proc.stderr.strip().splitlines()) == 1 and says in proc.stderr, proc.stderr
    assert "s3cr3t" not in proc.stderr + proc.stdout
    assert hashes(live) == before and commands.job_list(live, 5) == jobs_before


def test_a_target_server_that_does_not_answer_exits_3_naming_it(made: dict[str, Any]) -> None:
    live = made["settings"]
    before = hashes(live)
    proc = run_cli("restore", made["backup_id"], "--tables", "services",
                   "--target-database", "postgresql://postgres@127.0.0.1:1/elsewhere")
    assert proc.returncode == 3, (proc.stdout, proc.stderr)
    assert "postgresql://postgres@127.0.0.1:1/elsewhere" in proc.stderr, proc.stderr
    assert hashes(live) == before


def test_the_live_password_goes_only_to_the_live_server(made: dict[str, Any]) -> None:
    """A URL naming another host with the live user gets no password (libpq's ~/.pgpass applies there)."""
    from pydantic import SecretStr

    from worker import restore_target

    live = made["settings"].model_copy(update={"postgres_password": SecretStr("s3cr3t-pw")})
    elsewhere = restore_target.pg_settings(live, {"target_database": f"postgresql://{live.postgres_user}@"
                                                  "db.example.invalid:5432/other"})
    assert elsewhere.postgres_password is None
    same = restore_target.pg_settings(live, {"target_database": "other"})
    assert same.postgres_password and same.postgres_password.get_secret_value() == "s3cr3t-pw"


def test_a_restore_job_aimed_at_the_live_database_by_another_address_writes_nothing(made: dict[str, Any]) -> None:
    """Submitted without the CLI's checks, the workers refuse it themselves."""
    live = made["settings"]
    where = pg_params(live)
    if where["host"] != "127.0.0.1":  # the embedded stack's server is reached otherwise: no alias to try
        pytest.skip(f"the live server is at {where['host']}, not 127.0.0.1: localhost is no alias of it")
    before = hashes(live)
    opts = backups.store_options(live)
    url = f"postgresql://{where['user']}@localhost:{where['port']}/{where['dbname']}"
    job_id = commands.submit(live, "restore", TASK_RESTORE_START,
                             {**opts, "backup_id": made["backup_id"], "tables": ["services"], "exact": False,
                              "dry_run": False, "target_database": url, "target_table": None,
                              "target_dynamodb_table": None, **backups.auth_options(live, False)})
    report = jobs.wait(redis_client(live), job_id, timeout=120)
    assert report["state"] == "failed" and "is the live database" in report["error"], report
    assert hashes(live) == before
