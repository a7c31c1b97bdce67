"""Restore on real PostgreSQL, moto and real workers: verified first, atomic per table, catalog carried over."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from conftest import cli_json, run_cli, run_job
from test_backup import backup, make_data, manifest_of
from worker import backups, commands
from worker.connections import aws_client, pg_connect
from worker.dynamo import to_item

PG_TABLES = ["artifact_types", "deliverables", "dependencies", "quality_checks", "quality_standards", "services",
             "todo_dependencies", "todo_items", "work_tasks", "workgroup_skills"]


def table_hash(conn: psycopg.Connection, table: str) -> str:
    rows = conn.execute(psycopg.sql.SQL("select t::text from {} t order by 1").format(psycopg.sql.Identifier(table)))
    return hashlib.sha256("\n".join(r[0] for r in rows).encode()).hexdigest()


def hashes(settings: Any) -> dict[str, str]:
    with pg_connect(settings) as conn:
        out = {t: table_hash(conn, t) for t in PG_TABLES}
    items = aws_client(settings, "dynamodb").scan(TableName=settings.dynamo_table_name, ConsistentRead=True)["Items"]
    out["dynamodb"] = hashlib.sha256(
        "\n".join(sorted(json.dumps(i, sort_keys=True) for i in items)).encode()).hexdigest()
    return out


def catalog_snapshot(settings: Any) -> dict[str, Any]:
    """What an operator's schema diff would look at, for every table."""
    q = {
        "columns": """select table_name, column_name, data_type, column_default, is_nullable, is_identity,
                      identity_generation from information_schema.columns where table_schema = 'public'
                      and table_name = any(%(t)s) order by 1, 2""",
        "constraints": """select conrelid::regclass::text, conname, pg_get_constraintdef(oid) from pg_constraint
                          where connamespace = 'public'::regnamespace order by 1, 2""",
        "indexes": "select tablename, indexname, indexdef from pg_indexes where schemaname = 'public' order by 1, 2",
        "triggers": """select tgrelid::regclass::text, tgname, pg_get_triggerdef(oid) from pg_trigger
                       where not tgisinternal order by 1, 2""",
        "grants": """select table_name, grantee, privilege_type from information_schema.role_table_grants
                     where table_schema = 'public' and table_name = any(%(t)s) order by 1, 2, 3""",
        "comments": """select c.relname, obj_description(c.oid, 'pg_class'), a.attname, col_description(c.oid, a.attnum)
                       from pg_class c join pg_attribute a on a.attrelid = c.oid and a.attnum > 0
                       where c.relname = any(%(t)s) order by 1, 3""",
        "sequences": """select t, pg_get_serial_sequence(t, 'id') from unnest(%(t)s::text[]) t
                        where exists (select 1 from information_schema.columns c where c.table_name = t
                        and c.column_name = 'id') order by 1""",
        "owners": "select relname, pg_get_userbyid(relowner) from pg_class where relname = any(%(t)s) order by 1",
        "class": """select relname, relpersistence, reltablespace, relrowsecurity, relforcerowsecurity, relreplident,
                    reloptions from pg_class where relnamespace = 'public'::regnamespace and relname = any(%(t)s)
                    order by 1""",
        "column_grants": """select table_name, column_name, grantee, privilege_type
                            from information_schema.column_privileges
                            where table_schema = 'public' and table_name = any(%(t)s) and grantee <> 'postgres'
                            order by 1, 2, 3, 4""",
        "policies": """select tablename, policyname, permissive, roles, cmd, qual, with_check from pg_policies
                       where schemaname = 'public' and tablename = any(%(t)s) order by 1, 2""",
        "publications": """select pubname, tablename, attnames, rowfilter from pg_publication_tables
                           where schemaname = 'public' and tablename = any(%(t)s) order by 1, 2""",
        "constraint_comments": """select conrelid::regclass::text, conname, obj_description(oid, 'pg_constraint')
                                  from pg_constraint where connamespace = 'public'::regnamespace order by 1, 2""",
        "index_comments": """select tablename, indexname,
                                    obj_description(format('%%I', indexname)::regclass, 'pg_class')
                             from pg_indexes where schemaname = 'public' order by 1, 2""",
    }
    with pg_connect(settings) as conn:
        return {k: conn.execute(sql, {"t": PG_TABLES}).fetchall() for k, sql in q.items()}


def restore(settings: Any, backup_id: str, tables: list[str] | None = None, exact: bool = True,
            dry_run: bool = False) -> dict[str, Any]:
    return run_job(settings, lambda: commands.restore(settings, backup_id, tables or [], exact, dry_run, False), 300)


def scramble(settings: Any) -> None:
    """Change, delete and add rows in every table and items in DynamoDB."""
    with pg_connect(settings, autocommit=True) as pg:
        pg.execute("delete from quality_checks where id % 2 = 0")
        pg.execute("delete from todo_dependencies where todo_id % 5 = 0")
        pg.execute("update todo_items set title = 'changed' where id % 7 = 0")
        pg.execute("delete from deliverables where id % 3 = 0")
        pg.execute("delete from work_tasks where id % 11 = 0")
        pg.execute("update dependencies set created_at = now() - interval '1 day'")
        pg.execute("update services set tier = 4")
        pg.execute("update workgroup_skills set description = 'edited'")
        pg.execute("update artifact_types set extensions = '{}'")
        pg.execute("update quality_standards set threshold = 1")
        pg.execute("insert into work_tasks (title) values ('added after the backup')")
    client = aws_client(settings, "dynamodb")
    client.put_item(TableName=settings.dynamo_table_name, Item=to_item({"PK": "TASK#new", "SK": "ANALYSIS"}))
    client.delete_item(TableName=settings.dynamo_table_name, Key=to_item({"PK": "TASK#3", "SK": "ANALYSIS"}))


@pytest.fixture()
def dressed(migrated: Any) -> Iterator[Any]:
    """The model's data plus a trigger, a grant and comments, which a restore must carry over; the seeded
    configuration is put back afterwards."""
    make_data(migrated)
    with pg_connect(migrated, autocommit=True) as pg:
        pg.execute("""do $$ begin create role worktask_reader nologin;
                      exception when duplicate_object then null; end $$""")
        pg.execute("grant select on services, work_tasks to worktask_reader")
        pg.execute("comment on table services is 'services owned by workgroups'")
        pg.execute("comment on column work_tasks.title is 'what the task is'")
        pg.execute("grant update (title, description) on work_tasks to worktask_reader")
        pg.execute("comment on index services_owner_workgroup_id_idx is 'services by owner'")
        pg.execute("comment on index services_pkey is 'the key of services'")
        pg.execute("comment on constraint services_pkey on services is 'one row per service'")
        pg.execute("alter table dependencies replica identity full")
        pg.execute("""do $$ begin create publication worktask_test_pub for table services, dependencies;
                      exception when duplicate_object then null; end $$""")
        pg.execute("""create or replace function touch_updated_at() returns trigger language plpgsql as
                      $$ begin new.updated_at = now(); return new; end $$""")
        pg.execute("drop trigger if exists services_touch on services")
        pg.execute("create trigger services_touch before update on services "
                   "for each row execute function touch_updated_at()")
    yield migrated
    assert run_job(migrated, lambda: commands.seed(migrated, True, "overwrite", False))["ok"]
    with pg_connect(migrated, autocommit=True) as pg:  # undressed: the schema is the migrations' again
        pg.execute("drop trigger if exists services_touch on services")
        pg.execute("drop function if exists touch_updated_at()")
        pg.execute("drop publication if exists worktask_test_pub")
        pg.execute("alter table dependencies replica identity default")
        for target in ("table services", "column work_tasks.title", "index services_owner_workgroup_id_idx",
                       "index services_pkey", "constraint services_pkey on services"):
            pg.execute(f"comment on {target} is null")
        pg.execute("revoke all on services, work_tasks from worktask_reader")
        pg.execute("revoke update (title, description) on work_tasks from worktask_reader")


def test_round_trip_restores_every_table_and_the_catalog(dressed: Any) -> None:
    before, catalog = hashes(dressed), catalog_snapshot(dressed)
    report = backup(dressed)
    scramble(dressed)
    assert hashes(dressed) != before
    code, restored = cli_json("restore", report["backup_id"], "--exact", timeout=300)
    assert code == 0 and restored["ok"] and restored["skipped"] == [], restored
    assert {t["name"] for t in restored["tables"]} == set(PG_TABLES) | {dressed.dynamo_table_name}
    assert hashes(dressed) == before
    assert catalog_snapshot(dressed) == catalog
    with pg_connect(dressed, autocommit=True) as pg:
        top = pg.execute("select max(id) from work_tasks").fetchone()[0]
        new = pg.execute("insert into work_tasks (title) values ('after restore') returning id").fetchone()[0]
        assert new > top  # the identity sequence moved past the restored ids
        assert not pg.execute("select relname from pg_class where relname like '%%__restore_%%'").fetchall()
        pg.execute("delete from work_tasks where id = %s", (new,))


def test_tables_only_restores_exactly_those(dressed: Any) -> None:
    report = backup(dressed)
    scramble(dressed)
    scrambled = hashes(dressed)
    code, restored = cli_json("restore", report["backup_id"], env={"TABLES_ONLY": "services,dependencies"})
    assert code == 0 and sorted(t["name"] for t in restored["tables"]) == ["dependencies", "services"]
    after = hashes(dressed)
    assert after["services"] != scrambled["services"]
    assert {k: v for k, v in after.items() if k not in ("services", "dependencies")} == \
        {k: v for k, v in scrambled.items() if k not in ("services", "dependencies")}
    assert restore(dressed, report["backup_id"])["ok"]  # back to the backup for the next tests


def test_a_corrupted_chunk_refuses_its_table_and_touches_nothing(dressed: Any) -> None:
    report = backup(dressed)
    manifest = manifest_of(dressed, report["backup_id"])
    victim = next(t for t in manifest["tables"] if t["name"] == "work_tasks")["chunks"][1]
    path = Path(backups.store_options(dressed)["backup_dir"], victim["key"])
    raw = bytearray(path.read_bytes())
    raw[100] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pg_connect(dressed, autocommit=True) as pg:
        pg.execute("update work_tasks set title = title || ' (edited)' where id % 13 = 0")
    try:
        edited = hashes(dressed)
        code, restored = cli_json("restore", report["backup_id"], "--tables", "work_tasks")
        assert code == 1 and restored["tables"] == []
        assert restored["skipped"][0]["name"] == "work_tasks" and victim["key"] in restored["skipped"][0]["reason"]
        assert hashes(dressed) == edited
        with pg_connect(dressed, autocommit=True) as pg:  # the table's partial copy went with the restore
            assert not pg.execute("select relname from pg_class where relname like '%%__restore_%%'").fetchall()
    finally:
        with pg_connect(dressed, autocommit=True) as pg:
            pg.execute("update work_tasks set title = left(title, -9) where id % 13 = 0")


def test_a_changed_byte_in_a_plain_chunk_skips_its_table_and_restores_the_others(dressed: Any) -> None:
    """Without encryption or compression nothing authenticates a chunk while it is read: a changed byte can
    reach the server before the checksum is complete, and PostgreSQL refuses it first (here: not UTF-8).
    The load still reports the chunk's checksum, skips the table and restores the rest."""
    report = backup(dressed, compression_enabled=False, encryption_enabled=False)
    manifest = manifest_of(dressed, report["backup_id"])
    victim = next(t for t in manifest["tables"] if t["name"] == "work_tasks")["chunks"][1]
    path = Path(backups.store_options(dressed)["backup_dir"], victim["key"])
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] = 0xFF  # never valid in UTF-8
    path.write_bytes(bytes(raw))
    live = hashes(dressed)
    code, restored = cli_json("restore", report["backup_id"], "--tables", "work_tasks,quality_standards")
    assert code == 1, restored
    assert [t["name"] for t in restored["tables"]] == ["quality_standards"], restored
    skipped = restored["skipped"][0]
    assert skipped["name"] == "work_tasks" and victim["key"] in skipped["reason"], skipped
    assert "checksum mismatch" in skipped["reason"], skipped
    assert hashes(dressed) == live


def test_a_restore_that_fails_at_the_swap_leaves_the_live_tables_whole(dressed: Any) -> None:
    report = backup(dressed)
    with pg_connect(dressed, autocommit=True) as pg:  # a todo whose task is not in the backup
        task = pg.execute("insert into work_tasks (title) values ('new') returning id").fetchone()[0]
        pg.execute("insert into todo_items (work_task_id, title) values (%s, 'orphan-to-be')", (task,))
    live = hashes(dressed)
    code, restored = cli_json("restore", report["backup_id"], "--tables", "work_tasks")
    assert code == 1 and "todo_items_work_task_id_fkey" in restored["error"]
    assert hashes(dressed) == live
    with pg_connect(dressed, autocommit=True) as pg:
        assert not pg.execute("select relname from pg_class where relname like '%%__restore_%%'").fetchall()
        pg.execute("delete from work_tasks where id = %s", (task,))


def test_a_chunk_delivered_twice_is_loaded_once(dressed: Any) -> None:
    """Redelivery (a worker lost after its load committed, or a visibility timeout) runs a load task again:
    the restore's ledger, written in the load's own transaction, makes the second run load nothing."""
    from tasks.restore import ALREADY, load_postgres_chunk
    from worker import swap
    from worker.plans import RestorePlan

    report = backup(dressed)  # 1000 rows a chunk
    manifest = manifest_of(dressed, report["backup_id"])
    table = next(t for t in manifest["tables"] if t["name"] == "todo_items")
    assert len(table["chunks"]) > 1 and all(c.get("ctid") for c in table["chunks"]), table["chunks"]
    plan = RestorePlan(backup_id=report["backup_id"], tag="twice0", options=backups.store_options(dressed),
                       encryption=manifest["encryption"], compress=manifest["options"]["compress"], started=0,
                       tables=[table])
    with pg_connect(dressed, autocommit=True) as pg:
        swap.create_replacement(pg, "todo_items", plan.tag)
        swap.create_ledger(pg, plan.tag)
        try:
            chunk = table["chunks"][1]
            assert load_postgres_chunk(dressed, plan, table, chunk) == (chunk["rows"], None)
            assert load_postgres_chunk(dressed, plan, table, chunk) == (chunk["rows"], ALREADY)
            held = pg.execute(psycopg.sql.SQL("select count(*) from {}").format(
                psycopg.sql.Identifier(swap.replacement("todo_items", plan.tag)))).fetchone()[0]
            assert held == chunk["rows"]
        finally:
            swap.drop_replacements(pg, plan.tag)
        assert not pg.execute("select relname from pg_class where relname like 'worktask_restore_loads_%%'").fetchall()


def test_dry_run_reports_and_changes_nothing(dressed: Any) -> None:
    report = backup(dressed)
    scramble(dressed)
    extra = {"PK": f"TASK#dry-{time.time_ns()}", "SK": "ANALYSIS"}
    aws_client(dressed, "dynamodb").put_item(TableName=dressed.dynamo_table_name, Item=to_item(extra))
    scrambled = hashes(dressed)
    code, restored = cli_json("restore", report["backup_id"], "--dry-run", "--exact")
    assert code == 0 and restored["dry_run"]
    by = {t["name"]: t for t in restored["tables"]}
    assert by["work_tasks"]["rows"] == next(t for t in report["tables"] if t["name"] == "work_tasks")["rows"]
    assert by[dressed.dynamo_table_name]["removed"] >= 1  # at least the item put after the backup
    assert hashes(dressed) == scrambled
    assert restore(dressed, report["backup_id"])["ok"]


def test_schema_mismatch_is_refused_naming_both_heads(dressed: Any) -> None:
    report = backup(dressed)
    with pg_connect(dressed, autocommit=True) as pg:
        head = pg.execute("select version_num from alembic_version").fetchone()[0]
        pg.execute("update alembic_version set version_num = '20990101000000'")
    try:
        proc = run_cli("restore", report["backup_id"])
        assert proc.returncode == 2 and "20990101000000" in proc.stderr and head in proc.stderr
        assert "--allow-schema-mismatch" in proc.stderr
    finally:
        with pg_connect(dressed, autocommit=True) as pg:
            pg.execute("update alembic_version set version_num = %s", (head,))


@pytest.mark.parametrize("tables", ['services";drop table services;--', "no_such_table"])
def test_hostile_or_unknown_table_names_exit_2_listing_the_tables(dressed: Any, tables: str) -> None:
    report = backup(dressed)
    proc = run_cli("restore", report["backup_id"], "--tables", tables)
    assert proc.returncode == 2 and "it holds: artifact_types" in proc.stderr
    with pg_connect(dressed, autocommit=True) as pg:
        assert pg.execute("select to_regclass('services')").fetchone()[0] is not None
