"""Backup fidelity (issue 10, backup side): locks like pg_dump's, chunks that follow rows, every kind of table.

Each test makes its own tables beside the model's and drops them afterwards, so the other tests' backups
stay small.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from conftest import cli_json, run_cli
from test_backup import backup, decode, make_data, manifest_of, table_copy, validate
from worker import commands, jobs, snapshot
from worker.connections import pg_connect, pg_params, redis_client
from worker.errors import JobFailed

# Fidelity cases: run once, on the local services path (.ci/run), not again on the embedded path.
pytestmark = pytest.mark.slow

BIGINT_MAX = 9223372036854775807


@pytest.fixture()
def made(migrated: Any) -> Iterator[list[str]]:
    """Names of the tables a test creates; dropped after it whatever happened."""
    make_data(migrated)
    names: list[str] = []
    yield names
    with pg_connect(migrated, autocommit=True) as pg:
        for name in reversed(names):
            pg.execute(psycopg.sql.SQL("drop table if exists {} cascade").format(psycopg.sql.Identifier(name)))


def sql(settings: Any, *statements: str) -> None:
    with pg_connect(settings, autocommit=True) as pg:
        for s in statements:
            pg.execute(s)


def rows_of(report: dict[str, Any]) -> dict[str, int]:
    return {t["name"]: t["rows"] for t in report["tables"]}


@pytest.mark.parametrize("ddl_timeout,backup_timeout", [(2, 20), (180, 3)])
def test_a_truncate_during_a_backup_never_yields_a_complete_backup_with_fewer_rows(
        migrated: Any, made: list[str], ddl_timeout: int, backup_timeout: int) -> None:
    """The TRUNCATE waits for the backup's locks. It times out on its own side first (the backup then holds
    every row), or the backup gives way first, failing and naming the table and the session (then the
    TRUNCATE goes through). Never: a backup "complete" without the table's rows."""
    sql(migrated, "create table fid_big (id bigint primary key, payload text)",
        "insert into fid_big select g, repeat('x', 200) from generate_series(1, 60000) g")
    made.append("fid_big")
    s = migrated.model_copy(update={"backup_rate_limit": 1_000_000, "backup_lock_timeout": backup_timeout})
    job_id = commands.backup(s, True, False, 5_000)  # 12 chunks of ~1 s each, more than the 4 worker slots
    outcome: dict[str, Any] = {}

    def truncate() -> None:
        with pg_connect(migrated, autocommit=True) as conn:
            conn.execute(f"set lock_timeout = '{ddl_timeout}s'")
            outcome["pid"] = conn.info.backend_pid
            try:
                conn.execute("truncate fid_big")
                outcome["truncated_at"] = time.monotonic()
            except psycopg.errors.LockNotAvailable:
                outcome["timed_out"] = True
    time.sleep(2)
    thread = threading.Thread(target=truncate)
    thread.start()
    report = jobs.wait(redis_client(migrated), job_id, timeout=300)
    finished = time.monotonic()
    thread.join(timeout=200)
    assert not thread.is_alive()
    if ddl_timeout < backup_timeout:
        assert report["ok"], report.get("error")
        assert rows_of(report)["fid_big"] == 60_000  # every row, though a TRUNCATE came
        assert outcome.get("timed_out")
        assert validate(migrated, job_id)["ok"]
    else:
        assert report["state"] == "failed"
        assert "fid_big" in report["error"] and f"pid {outcome['pid']}" in report["error"], report["error"]
        assert "truncate" in report["error"]
        assert outcome["truncated_at"] >= finished - 5  # it went through once the backup let go
        assert job_id not in {b["backup_id"] for b in commands.backup_list(migrated) if b["state"] == "complete"}


def test_a_backup_that_cannot_lock_a_table_fails_naming_it_and_the_blocking_session(migrated: Any,
                                                                                    made: list[str]) -> None:
    sql(migrated, "create table fid_locked (id int primary key)", "insert into fid_locked values (1)")
    made.append("fid_locked")
    holder = psycopg.connect(**{**pg_params(migrated), "application_name": "fid-blocker"})
    try:
        holder.execute("lock table fid_locked in access exclusive mode")  # open transaction keeps it
        blocker_pid = holder.info.backend_pid
        s = migrated.model_copy(update={"backup_lock_timeout": 2})
        before = {b["backup_id"] for b in commands.backup_list(s)}
        job_id = commands.backup(s, True, False, 1000)
        report = jobs.wait(redis_client(migrated), job_id, timeout=120)
    finally:
        holder.rollback()
        holder.close()
    assert report["state"] == "failed"
    assert "fid_locked" in report["error"] and str(blocker_pid) in report["error"], report["error"]
    assert "fid-blocker" in report["error"]
    assert not [b for b in commands.backup_list(s) if b["backup_id"] not in before and b["state"] == "complete"]


def test_chunks_follow_rows_not_key_span_and_the_largest_bigint_round_trips(migrated: Any, made: list[str]) -> None:
    sql(migrated, "create table fid_skew (id bigint primary key, v text)",
        "insert into fid_skew select g, 'row ' || g from generate_series(1, 3000) g",
        f"insert into fid_skew values (1000000000, 'far'), ({BIGINT_MAX}, 'largest'), (-{BIGINT_MAX} - 1, 'smallest')")
    made.append("fid_skew")
    report = backup(migrated)  # 1000 rows per chunk
    assert report["ok"], report.get("error")
    manifest = manifest_of(migrated, report["backup_id"])
    t = next(t for t in manifest["tables"] if t["name"] == "fid_skew")
    sizes = [c["rows"] for c in t["chunks"]]
    assert sum(sizes) == 3003 and len(sizes) == 4 and max(sizes) <= 1000, sizes
    assert sorted(decode(migrated, manifest, "fid_skew")) == sorted(table_copy(migrated, "fid_skew", ["id", "v"]))
    sql(migrated, "delete from fid_skew where id > 2000", "update fid_skew set v = 'changed'")
    code, restored = cli_json("restore", report["backup_id"], "--tables", "fid_skew", timeout=300)
    assert code == 0 and restored["ok"], restored
    assert sorted(table_copy(migrated, "fid_skew", ["id", "v"])) == sorted(decode(migrated, manifest, "fid_skew"))


@pytest.mark.parametrize("ddl", [
    "create table {t} (v text, n int)",  # no primary key at all
    "create table {t} (code text primary key, n int)",  # a key that is not an integer
])
def test_tables_without_an_integer_key_are_split_into_chunks_and_restore_exactly(migrated: Any, made: list[str],
                                                                                ddl: str) -> None:
    name = "fid_nokey" if "primary" not in ddl else "fid_textkey"
    sql(migrated, ddl.format(t=name),
        f"insert into {name} select 'v' || lpad(g::text, 6, '0'), g from generate_series(1, 5000) g",
        f"analyze {name}")
    made.append(name)
    report = backup(migrated)
    assert report["ok"], report.get("error")
    manifest = manifest_of(migrated, report["backup_id"])
    t = next(t for t in manifest["tables"] if t["name"] == name)
    sizes = [c["rows"] for c in t["chunks"]]
    assert sum(sizes) == 5000 and len(sizes) >= 4 and max(sizes) <= 1500, sizes
    cols = [c["name"] for c in t["columns"]]
    assert sorted(decode(migrated, manifest, name)) == sorted(table_copy(migrated, name, cols))
    sql(migrated, f"delete from {name} where n % 3 = 0", f"insert into {name} select 'new', 0")
    code, restored = cli_json("restore", report["backup_id"], "--tables", name, timeout=300)
    assert code == 0 and restored["ok"], restored
    assert sorted(table_copy(migrated, name, cols)) == sorted(decode(migrated, manifest, name))


def test_partitions_are_backed_up_once_by_leaf_with_their_parent_and_bounds(migrated: Any, made: list[str]) -> None:
    sql(migrated, "create table fid_part (id int primary key, v text) partition by range (id)",
        "create table fid_part_low partition of fid_part for values from (1) to (1000)",
        "create table fid_part_high partition of fid_part for values from (1000) to (5000)",
        "insert into fid_part select g, 'p' || g from generate_series(1, 2500) g")
    made.append("fid_part")
    report = backup(migrated)
    assert report["ok"], report.get("error")
    manifest = manifest_of(migrated, report["backup_id"])
    tables = {t["name"]: t for t in manifest["tables"]}
    assert "fid_part" not in tables  # the parent holds no rows of its own
    assert tables["fid_part_low"]["rows"] + tables["fid_part_high"]["rows"] == 2500
    assert tables["fid_part_low"]["partition_of"] == "fid_part"
    assert tables["fid_part_high"]["partition_bound"] == "FOR VALUES FROM (1000) TO (5000)"
    assert tables["work_tasks"]["partition_of"] is None


def test_generated_columns_are_not_copied_and_replacement_tables_are_never_backed_up(migrated: Any,
                                                                                   made: list[str]) -> None:
    sql(migrated, "create table fid_gen (id int primary key, price int, "
                  "doubled int generated always as (price * 2) stored)",
        "insert into fid_gen (id, price) select g, g from generate_series(1, 50) g",
        "create table fid_leftover (id int primary key)",
        "comment on table fid_leftover is 'worktask:restore:abc123:fid_gen'",
        "insert into fid_leftover values (1)")
    made += ["fid_gen", "fid_leftover"]
    report = backup(migrated)
    assert report["ok"], report.get("error")
    manifest = manifest_of(migrated, report["backup_id"])
    tables = {t["name"]: t for t in manifest["tables"]}
    assert "fid_leftover" not in tables
    assert [c["name"] for c in tables["fid_gen"]["columns"]] == ["id", "price"]
    sql(migrated, "update fid_gen set price = 0")
    code, restored = cli_json("restore", report["backup_id"], "--tables", "fid_gen", timeout=300)
    assert code == 0 and restored["ok"], restored
    with pg_connect(migrated) as conn:
        assert conn.execute("select count(*) from fid_gen where doubled = 2 * id").fetchone()[0] == 50


def test_a_restore_refuses_while_a_backup_holds_its_tables(migrated: Any, made: list[str]) -> None:
    """Asked while the backup holds its snapshot (its lease in Redis, its holder's session in pg_stat_activity):
    the restore's job is refused (exit 1, a failed job, as a migration or a backup during a restore), naming the
    backup; nothing of the live data changes, though the backup restored would change it; the backup completes."""
    sql(migrated, "create table fid_slow (id bigint primary key, payload text)",
        "insert into fid_slow select g, repeat('y', 200) from generate_series(1, 30000) g")
    made.append("fid_slow")
    first = backup(migrated)
    assert first["ok"], first.get("error")
    sql(migrated, "update fid_slow set payload = 'changed since' where id <= 100")  # a restore would undo this
    live = fid_slow_hash(migrated)
    s = migrated.model_copy(update={"backup_rate_limit": 300_000})
    job_id = commands.backup(s, True, False, 10_000)  # ~7 s per chunk of fid_slow
    r = redis_client(migrated)
    deadline = time.monotonic() + 120
    with pg_connect(migrated, autocommit=True) as pg:
        while not (job_id in snapshot.running_backups(r) and pg.execute(
                "select 1 from pg_stat_activity where application_name = %s and state = 'idle in transaction'",
                (f"worktask-snapshot {job_id}"[:63],)).fetchone()):
            assert time.monotonic() < deadline and jobs.state(r, job_id) in ("queued", "running"), \
                f"the backup did not hold its snapshot: {jobs.state(r, job_id)}"
            time.sleep(0.05)
    proc = run_cli("restore", first["backup_id"], "--tables", "fid_slow", "--json", timeout=120)
    assert jobs.state(r, job_id) == "running" and job_id in snapshot.running_backups(r)  # it held it throughout
    refused = json.loads(proc.stdout)
    assert proc.returncode == 1 and refused["state"] == "failed", (proc.returncode, refused, proc.stderr[-2000:])
    assert refused["error"] == (f"worktask.restore.start: backup job {job_id} is running and holds its tables until "
                                f"it ends; run the restore after it (worktask jobs show {job_id})"), refused["error"]
    assert fid_slow_hash(migrated) == live
    backup_report = jobs.wait(r, job_id, timeout=300)
    assert backup_report["ok"] and rows_of(backup_report)["fid_slow"] == 30_000
    assert fid_slow_hash(migrated) == live


def fid_slow_hash(settings: Any) -> str:
    with pg_connect(settings) as pg:
        return pg.execute("select md5(string_agg(id || ':' || payload, ',' order by id)) from fid_slow").fetchone()[0]


@pytest.mark.parametrize(("edges", "problem"), [
    ([[0, 10], [12, None]], "pages 10..12 fall between two chunks"),
    ([[1, 10], [10, None]], "do not start at page 0 and run to the end"),
    ([[0, 10], [10, 20]], "do not start at page 0 and run to the end"),
    ([[0, 10], None], "a chunk without a page range"),
])
def test_chunks_that_do_not_tile_the_table_fail_the_backup(edges: list[Any], problem: str) -> None:
    """The page ranges must cover every page once, from page 0 to the end: a plan that leaves pages out (a
    bug, or a plan changed in Redis) fails the backup instead of writing a manifest of missing rows."""
    from tasks.backup import build_manifest

    chunks = [{"n": n} | ({"ctid": e} if e else {}) for n, e in enumerate(edges)]
    plan = {"created_at": "x", "source": {}, "encryption": None, "options": {"compress": True, "encrypt": False,
                                                                                "chunk_rows": 1000},
            "tables": [{"name": "t", "store": "postgres", "columns": [], "chunks": chunks}]}
    results = [{"table": "t", "store": "postgres", "key": f"k{c['n']}", "rows": 30, "bytes_raw": 1,
                "bytes_stored": 1, "sha256": "0", "seconds": 0.1, "ended_at": 1.0} | c for c in chunks]
    with pytest.raises(JobFailed, match=problem):
        build_manifest("b", plan, results, time.time())
    good = [{"n": 0, "ctid": [0, 10]}, {"n": 1, "ctid": [10, None]}]
    plan["tables"][0]["chunks"] = good
    ok = build_manifest("b", plan, [r | c for r, c in zip(results, good)], time.time())
    assert [c["ctid"] for c in ok["tables"][0]["chunks"]] == [[0, 10], [10, None]] and ok["totals"]["rows"] == 60


def test_a_chunk_refuses_a_table_truncated_since_planning(migrated: Any, made: list[str]) -> None:
    """Should the snapshot holder die between a chunk's import of the snapshot and the chunk's own lock, a
    TRUNCATE could slip in and the chunk would read the new, empty file through the old snapshot (DESIGN
    §12). The plan records each table's file node; a chunk that finds another one fails, naming the table,
    instead of reading 0 rows into a "complete" backup."""
    from tasks.backup import dump_postgres_chunk
    from worker import backups

    sql(migrated, "create table fid_trunc (id bigint primary key, v text)",
        "insert into fid_trunc select g, 'x' from generate_series(1, 1000) g")
    made.append("fid_trunc")
    backup_id = "20261124T000000Z-backup-f11e0d"
    options = backups.backup_options(migrated, False, False)
    store = backups.store_for(migrated, options)
    try:
        with pg_connect(migrated) as holder:
            holder.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
            planned = holder.execute("select pg_relation_filenode('fid_trunc')").fetchone()[0]
            snap = holder.execute("select pg_export_snapshot()").fetchone()[0]
            table = {"name": "fid_trunc", "columns": [{"name": "id"}, {"name": "v"}], "filenode": planned}
            assert dump_postgres_chunk(migrated, options, backup_id, snap, table, {"n": 0}, None)["rows"] == 1000
            holder.rollback()  # the holder's lock is gone in this story; its snapshot is taken again
            snap = holder.execute("select pg_export_snapshot()").fetchone()[0]
            sql(migrated, "truncate fid_trunc")
            with pytest.raises(JobFailed, match=r"table fid_trunc was truncated or rewritten during the backup"):
                dump_postgres_chunk(migrated, options, backup_id, snap, table, {"n": 0}, None)
    finally:
        store.delete([o.key for o in store.list(backups.prefix(options, backup_id))])


def test_a_table_refilled_since_its_last_analyze_is_still_split(migrated: Any, made: list[str]) -> None:
    """The catalog's statistics can be far off: here ANALYZE saw 10 live rows in the table's pages, then
    20,000 rows came. Chunks sized by those statistics would be one chunk of everything; the planner's
    sample of the pages sizes them by what is there."""
    sql(migrated, "create table fid_refill (id bigint primary key, v text) with (autovacuum_enabled = false)",
        "insert into fid_refill select g, repeat('x', 50) from generate_series(1, 20000) g",
        "delete from fid_refill where id > 10", "analyze fid_refill",
        "insert into fid_refill select g, repeat('y', 50) from generate_series(20001, 40000) g")
    made.append("fid_refill")
    with pg_connect(migrated) as pg:
        assert pg.execute("select reltuples from pg_class where relname = 'fid_refill'").fetchone()[0] < 100
    report = backup(migrated)  # 1000 rows a chunk
    table = next(t for t in manifest_of(migrated, report["backup_id"])["tables"] if t["name"] == "fid_refill")
    assert table["rows"] == 20010 and len(table["chunks"]) >= 8, [len(table["chunks"]), table["rows"]]
