"""Row hashes recorded at backup time, and the restore drill (`worktask backup verify ID --restore-test`), on real
PostgreSQL, moto and real workers."""

from __future__ import annotations

import json
import secrets
import time
from typing import Any

import psycopg
import pytest

import beat_schedule
from conftest import cli_json, run_cli
from tasks import drill
from test_backup import backup, decode, make_data, manifest_of, validate
from worker import backups, jobs, markers, rowhash
from worker.app import app
from worker.connections import aws_client, pg_connect, redis_client
from worker.constants import BEAT_SLOT_KEY, TASK_DRILL_START
from worker.dynamo import from_export_line
from worker.errors import JobFailed


@pytest.fixture(scope="module")
def good(migrated: Any) -> tuple[Any, dict[str, Any]]:
    """One backup of the test data for the module: (settings, manifest)."""
    make_data(migrated)
    report = backup(migrated)
    assert report["ok"], report
    return migrated, manifest_of(migrated, report["backup_id"])


def test_every_table_records_its_rows_hash_computed_in_the_snapshot(good: tuple[Any, dict[str, Any]]) -> None:
    settings, manifest = good
    client = aws_client(settings, "dynamodb")
    with pg_connect(settings) as conn:
        conn.execute("set timezone = 'Asia/Kathmandu'; set datestyle = 'SQL, DMY'")  # pinned by the hash
        for t in manifest["tables"]:
            assert t["row_hash_alg"] == (rowhash.ALG if t["store"] == "postgres" else rowhash.DYNAMO_ALG)
            assert all("row_hash" in c for c in t["chunks"])
            assert t["row_hash"] == rowhash.combine([c["row_hash"] for c in t["chunks"]])
            found = rowhash.postgres_table(conn, t["name"], [c["name"] for c in t["columns"]]) \
                if t["store"] == "postgres" else rowhash.dynamo_table(client, t["name"])
            assert found == (t["rows"], t["row_hash"]), t["name"]
    assert {t["name"] for t in manifest["tables"] if t["rows"] > 1000}  # several chunks summed somewhere


# the comparison, on a scratch database and table loaded from the backup's chunks ---------------------------------

def scratch_left(settings: Any) -> list[str]:
    """Scratch databases and DynamoDB tables of drills that exist now."""
    with pg_connect(settings, dbname="postgres") as conn:
        dbs = [r[0] for r in conn.execute("select datname from pg_database where datname like 'worktask\\_drill\\_%'")]
    tables = aws_client(settings, "dynamodb").list_tables()["TableNames"]
    return dbs + [t for t in tables if t.startswith(f"{settings.dynamo_table_name}-drill-")]


def load_scratch(settings: Any, manifest: dict[str, Any], database: str, table: str) -> None:
    """What a restore into the scratch targets writes: every chunk's rows (foreign keys not enforced while loading)."""
    with pg_connect(drill.scratch_settings(settings, database), autocommit=True) as conn, conn.cursor() as cur:
        cur.execute("set session_replication_role = replica")
        for t in manifest["tables"]:
            if t["store"] != "postgres":
                continue
            cols = psycopg.sql.SQL(", ").join(psycopg.sql.Identifier(c["name"]) for c in t["columns"])
            with cur.copy(psycopg.sql.SQL("copy {} ({}) from stdin").format(psycopg.sql.Identifier(t["name"]),
                                                                              cols)) as copy:
                for line in decode(settings, manifest, t["name"]):
                    copy.write(line + b"\n")
    client = aws_client(settings, "dynamodb")
    dyn = next(t for t in manifest["tables"] if t["store"] == "dynamodb")
    for line in decode(settings, manifest, dyn["name"]):
        client.put_item(TableName=table, Item=from_export_line(line))


def test_the_comparison_names_match_mismatch_not_restored_and_hash_not_recorded(
        good: tuple[Any, dict[str, Any]]) -> None:
    settings, manifest = good
    database, table = drill.scratch_names(settings, "cmp" + secrets.token_hex(3), None)
    try:
        drill.create_database(settings, database)
        drill.migrate_to(settings, database, manifest["source"]["migration_head"])
        assert drill.create_missing_tables(settings, database, manifest) == []  # the migrations make every table
        assert drill.create_dynamo_table(settings, table, manifest)
        with pytest.raises(JobFailed, match="exists already"):
            drill.create_database(settings, database)
        load_scratch(settings, manifest, database, table)
        restored = {"state": "succeeded", "skipped": []}
        results = drill.compare(settings, manifest, database, table, restored)
        assert [(t.name, t.outcome) for t in results] == [(t["name"], "match") for t in manifest["tables"]]
        assert all(t.rows_found == t.rows_expected and t.hash_found == t.hash_expected for t in results)

        with pg_connect(drill.scratch_settings(settings, database), autocommit=True) as conn:
            conn.execute("update work_tasks set title = title || '!' where id = (select min(id) from work_tasks)")
        skipped = {"state": "succeeded", "skipped": [{"name": "services", "reason": "not touched: chunk 0 bad"}]}
        older = {**manifest, "tables": [{k: v for k, v in t.items() if k != "row_hash"} if t["name"] == "todo_items"
                                        else t for t in manifest["tables"]]}
        by_name = {t.name: t for t in drill.compare(settings, older, database, table, skipped)}
        work = by_name["work_tasks"]
        assert work.outcome == "mismatch" and work.rows_found == work.rows_expected
        assert f"expected {work.hash_expected}, found {work.hash_found}" in work.reason
        assert (by_name["services"].outcome, by_name["services"].reason) == ("not restored", "not touched: chunk 0 bad")
        assert by_name["todo_items"].outcome == "hash not recorded"
        assert by_name[settings.dynamo_table_name].outcome == "match"
    finally:
        drill.drop(settings, database, table)
    assert scratch_left(settings) == []


# the command ---------------------------------------------------------------------------------------------------

def test_verify_without_restore_test_or_into_an_existing_database_exits_2_and_creates_nothing(
        good: tuple[Any, dict[str, Any]]) -> None:
    settings, manifest = good
    proc = run_cli("backup", "verify", manifest["backup_id"])
    assert proc.returncode == 2 and "--restore-test" in proc.stderr and "backup validate" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    proc = run_cli("backup", "verify", manifest["backup_id"], "--restore-test", "--target-database", "postgres")
    assert proc.returncode == 2 and "exists already" in proc.stderr, proc.stderr
    assert scratch_left(settings) == []


def test_beat_drills_weekly_by_default_and_records_a_skip_when_there_is_no_complete_backup(settings: Any) -> None:
    entry = beat_schedule.build(settings)["restore-drill"]
    assert entry["task"] == TASK_DRILL_START and entry["schedule"] == settings.crontab("drill")
    assert entry["kwargs"]["options"]["schedule"] == settings.schedules["drill"] == "0 5 * * 0"
    r = redis_client(settings)
    prefix = f"empty-{secrets.token_hex(3)}"  # a store that holds no backup; the slot of this minute, freed
    r.delete(*r.keys(BEAT_SLOT_KEY.format(name="backup_verify", slot="*")) or ["-"])  # (a run a moment ago took it)
    app.send_task(TASK_DRILL_START, kwargs={"job_id": None, "options": {
        "prefix": prefix, "scheduled": True, "schedule": "* * * * *"}})
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        found = [j for j in jobs.recent(r, 50) if j["kind"] == "backup_verify"
                 and jobs.options(r, j["job_id"]).get("prefix") == prefix]
        if found and found[0]["state"] == "succeeded":
            break
        time.sleep(0.5)
    assert found, "no drill job recorded"
    report = jobs.report(r, found[0]["job_id"])
    assert report["skipped"] == "no complete backup to drill" and report["backup_id"] is None


# the whole drill ------------------------------------------------------------------------------------------------


def live_hashes(settings: Any, manifest: dict[str, Any]) -> dict[str, tuple[int, str]]:
    client = aws_client(settings, "dynamodb")
    with pg_connect(settings) as conn:
        return {t["name"]: rowhash.postgres_table(conn, t["name"], [c["name"] for c in t["columns"]])
                if t["store"] == "postgres" else rowhash.dynamo_table(client, t["name"]) for t in manifest["tables"]}


def marker_of(settings: Any, backup_id: str) -> dict[str, Any] | None:
    opts = backups.store_options(settings)
    return markers.read(backups.store_for(settings, opts), opts, backup_id, markers.VERIFIED)


@pytest.mark.slow
def test_a_drill_of_a_good_backup_matches_every_table_and_leaves_the_live_data_alone(
        good: tuple[Any, dict[str, Any]]) -> None:
    settings, manifest = good
    before = live_hashes(settings, manifest)
    code, report = cli_json("backup", "verify", manifest["backup_id"], "--restore-test", timeout=300)
    assert code == 0 and report["ok"], report
    assert {(t["name"], t["outcome"]) for t in report["tables"]} == {(t["name"], "match") for t in manifest["tables"]}
    marker = marker_of(settings, manifest["backup_id"])
    assert marker["ok"] and marker["job_id"] == report["job_id"] and len(marker["tables"]) == len(manifest["tables"])
    assert live_hashes(settings, manifest) == before
    assert scratch_left(settings) == []


@pytest.mark.slow
def test_a_chunk_corrupted_after_validation_is_reported_and_the_marker_is_not_ok(
        good: tuple[Any, dict[str, Any]]) -> None:
    settings, _ = good
    report = backup(settings)
    manifest = manifest_of(settings, report["backup_id"])
    assert validate(settings, manifest["backup_id"])["ok"]
    victim = next(t for t in manifest["tables"] if t["name"] == "work_tasks")
    opts = backups.store_options(settings)
    store = backups.store_for(settings, opts)
    data = bytearray(store.get(victim["chunks"][0]["key"]))
    data[len(data) // 2] ^= 0xFF
    store.put(victim["chunks"][0]["key"], bytes(data))
    code, report = cli_json("backup", "verify", manifest["backup_id"], "--restore-test", timeout=300)
    assert code == 1 and not report["ok"]
    bad = {t["name"]: t for t in report["tables"] if t["outcome"] != "match"}
    assert "work_tasks" in bad and bad["work_tasks"]["outcome"] in ("not restored", "mismatch"), report["tables"]
    assert not marker_of(settings, manifest["backup_id"])["ok"]
    assert scratch_left(settings) == []


@pytest.mark.slow
def test_a_recorded_row_hash_that_differs_is_a_mismatch(good: tuple[Any, dict[str, Any]]) -> None:
    settings, manifest = good
    opts = backups.store_options(settings)
    store = backups.store_for(settings, opts)
    key = backups.prefix(opts, manifest["backup_id"]) + "manifest.json"
    original = store.get(key)
    edited = {k: v for k, v in json.loads(original).items() if k not in ("checksum", "auth")}  # as without a key
    table = next(t for t in edited["tables"] if t["name"] == "services")
    table["row_hash"] = rowhash.hexdigest(int(table["row_hash"], 16) + 1)
    store.put(key, json.dumps({**edited, "checksum": backups.manifest_checksum(edited)}).encode())
    try:
        code, report = cli_json("backup", "verify", manifest["backup_id"], "--restore-test",
                                "--allow-unauthenticated", timeout=300)
    finally:
        store.put(key, original)
    assert code == 1
    services = next(t for t in report["tables"] if t["name"] == "services")
    assert services["outcome"] == "mismatch" and services["hash_expected"] == table["row_hash"]
    assert services["hash_found"] == manifest_tables(manifest)["services"]["row_hash"]
    assert scratch_left(settings) == []


@pytest.mark.slow
def test_a_drill_that_fails_drops_its_scratch_and_marks_the_backup_not_verified(
        good: tuple[Any, dict[str, Any]]) -> None:
    settings, manifest = good
    opts = backups.store_options(settings)
    store = backups.store_for(settings, opts)
    key = backups.prefix(opts, manifest["backup_id"]) + "manifest.json"
    original = store.get(key)
    edited = {k: v for k, v in json.loads(original).items() if k not in ("checksum", "auth")}
    edited["source"] = {**edited["source"], "migration_head": "0000nosuchrevision"}  # the scratch cannot get there
    store.put(key, json.dumps({**edited, "checksum": backups.manifest_checksum(edited)}).encode())
    try:
        code, report = cli_json("backup", "verify", manifest["backup_id"], "--restore-test",
                                "--allow-unauthenticated", timeout=300)
    finally:
        store.put(key, original)
    assert code == 1 and report["state"] == "failed" and report["error"], report
    marker = marker_of(settings, manifest["backup_id"])
    assert marker["job_id"] == report["job_id"] and not marker["ok"] and marker["error"]
    assert scratch_left(settings) == []


def manifest_tables(manifest: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {t["name"]: t for t in manifest["tables"]}


@pytest.mark.parametrize("text", ["integer check (pg_terminate_backend(1) or true)", "integer default(1)",
                                  "int generated always as (1) stored", "text collate \"C\"", "integer; drop table x"])
def test_a_manifest_column_type_that_is_no_type_is_never_run_as_ddl(text: str) -> None:
    """The reviewer's: a forged manifest (accepted with --allow-unauthenticated) must not run SQL in the drill."""
    from tasks.drill import _type

    with pytest.raises(JobFailed):
        _type(text)
    assert [_type(t) for t in ("character varying(200)", '"Mood"[]', "timestamp(3) with time zone", "numeric(10,2)",
                               "double precision", "bit(8)")]
