"""Concurrency faults (issue 14): backups while the application writes, restores while it reads, two backups at
once, backups and migrations, backups and restores. Each pair either runs correctly or one side is refused
with a clear message; the data is checked (balanced totals, row hashes, validate), never assumed."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from conftest import cli_json
from test_backup import decode, manifest_of, table_copy, validate
from test_migrate import VERSIONS, scratch_path  # noqa: F401 - scratch_path: a fixture used below
from worker import commands, jobs, migrator, snapshot, swap
from worker.connections import pg_connect, pg_params, redis_client

pytestmark = [pytest.mark.fault]

TABLE = "conc_accounts"
ACCOUNTS = 4000
OPENING = 1000
TOTAL = ACCOUNTS * OPENING
CHUNK_ROWS = 1000  # ~115 kB a chunk (the least the CLI takes): several chunks for the accounts table
SLOW = "20991231200000"  # the scratch migration that sleeps while it holds its locks


def read_state(conn: psycopg.Connection) -> tuple[int, int, str]:
    """(rows, sum of balances, hash of every (id, balance)) in one statement."""
    row = conn.execute(f"""select count(*), coalesce(sum(balance), 0)::bigint,
                                  coalesce(md5(string_agg(id || ':' || balance, ',' order by id)), '')
                           from {TABLE}""").fetchone()
    return int(row[0]), int(row[1]), row[2]


def decoded_balances(settings: Any, manifest: dict[str, Any]) -> dict[int, int]:
    t = next(t for t in manifest["tables"] if t["name"] == TABLE)
    cols = [c["name"] for c in t["columns"]]
    out = {}
    for line in decode(settings, manifest, TABLE):
        f = line.split(b"\t")
        out[int(f[cols.index("id")])] = int(f[cols.index("balance")])
    return out


@pytest.fixture()
def accounts(migrated: Any) -> Iterator[Any]:
    """A table of the test's own: ACCOUNTS rows of OPENING each (a note widens the rows: chunks take time)."""
    with pg_connect(migrated, autocommit=True) as pg:
        pg.execute(f"drop table if exists {TABLE} cascade")
        pg.execute(f"create table {TABLE} (id int primary key, balance bigint not null, note text not null)")
        pg.execute(f"insert into {TABLE} select g, {OPENING}, repeat('n', 100) from generate_series(1, {ACCOUNTS}) g")
        pg.execute(f"analyze {TABLE}")
    yield migrated
    with pg_connect(migrated, autocommit=True) as pg:
        pg.execute(f"drop table if exists {TABLE} cascade")


class Mover:
    """The application: each transaction moves an amount from one account to another (the sum is constant),
    on a connection of its own, until stopped."""

    def __init__(self, settings: Any) -> None:
        self.settings, self.commits, self.errors = settings, 0, []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        rng = random.Random(14)
        try:
            with pg_connect(self.settings) as conn:
                while not self.stop.is_set():
                    a, b = rng.sample(range(1, ACCOUNTS + 1), 2)
                    amount = rng.randint(1, 90)
                    conn.execute(f"update {TABLE} set balance = balance - %s where id = %s", (amount, a))
                    conn.execute(f"update {TABLE} set balance = balance + %s where id = %s", (amount, b))
                    conn.commit()
                    self.commits += 1
                    time.sleep(0.002)
        except Exception as err:  # noqa: BLE001 - reported by the test
            self.errors.append(repr(err))

    def __enter__(self) -> Mover:
        self.thread.start()
        deadline = time.monotonic() + 30
        while self.commits < 20 and time.monotonic() < deadline and not self.errors:
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop.set()
        self.thread.join(timeout=30)
        assert not self.thread.is_alive()


def check_balanced(settings: Any, backup_id: str) -> dict[int, int]:
    """The backup holds every account and the total balances exactly; it validates."""
    manifest = manifest_of(settings, backup_id)
    balances = decoded_balances(settings, manifest)
    assert len(balances) == ACCOUNTS and sorted(balances) == list(range(1, ACCOUNTS + 1)), backup_id
    assert sum(balances.values()) == TOTAL, (backup_id, sum(balances.values()) - TOTAL)
    assert validate(settings, backup_id)["ok"]
    return balances


def slow_backup(settings: Any, rate: int = 80_000) -> str:
    """A backup whose chunks of the accounts table take ~1.5 s each (rate limit, bytes a second a chunk)."""
    s = settings.model_copy(update={"backup_rate_limit": rate})
    return commands.backup(s, True, True, CHUNK_ROWS)


def test_backups_taken_while_money_moves_each_hold_a_balanced_total(accounts: Any) -> None:
    r = redis_client(accounts)
    taken = []
    with Mover(accounts) as mover:
        for i in range(2):
            before = mover.commits
            if i == 0:
                job_id = slow_backup(accounts)
                report = jobs.wait(r, job_id, timeout=300)
            else:  # as the operator runs it
                code, report = cli_json("backup", "--chunk-rows", str(CHUNK_ROWS), timeout=300,
                                        env={"BACKUP_RATE_LIMIT": "80000"})
                assert code == 0, report
            assert report["ok"], report.get("error")
            assert mover.commits > before + 10, "the writer did not commit during the backup"
            taken.append(report["backup_id"])
    assert not mover.errors, mover.errors
    contents = [check_balanced(accounts, b) for b in taken]
    assert contents[0] != contents[1]  # money moved between them: each is its own point in time
    # a restore of the second brings back exactly its rows, and the total
    code, restored = cli_json("restore", taken[1], "--tables", TABLE, timeout=300)
    assert code == 0 and restored["ok"], restored
    with pg_connect(accounts) as conn:
        rows, total, _ = read_state(conn)
        assert (rows, total) == (ACCOUNTS, TOTAL)
        live = dict(conn.execute(f"select id, balance from {TABLE}").fetchall())
    assert live == contents[1]


def test_two_backups_at_once_both_complete_balanced_and_validate(accounts: Any) -> None:
    """Nothing refuses a second backup while one runs (their ACCESS SHARE locks do not conflict; each has its
    own snapshot holder): both complete, each one consistent point in time."""
    r = redis_client(accounts)
    with Mover(accounts) as mover:
        first = slow_backup(accounts)
        deadline = time.monotonic() + 60
        while first not in snapshot.running_backups(r) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert first in snapshot.running_backups(r), "the first backup's snapshot was never held"
        second = slow_backup(accounts)
        while second not in snapshot.running_backups(r) and time.monotonic() < deadline:
            time.sleep(0.05)
        both_held = {first, second} <= set(snapshot.running_backups(r))
        reports = [jobs.wait(r, job_id, timeout=300) for job_id in (first, second)]
    assert not mover.errors, mover.errors
    assert both_held, "the two backups did not overlap"
    assert all(rep["ok"] for rep in reports), [rep.get("error") for rep in reports]
    listed = {b["backup_id"]: b["state"] for b in commands.backup_list(accounts)}
    assert listed[first] == listed[second] == "complete"
    a, b = check_balanced(accounts, first), check_balanced(accounts, second)
    assert a != b  # two snapshots, money moved in between


def test_readers_during_a_restore_see_the_old_table_or_the_new_never_a_mix(accounts: Any) -> None:
    report = commands.backup(accounts, True, True, CHUNK_ROWS)
    backed = jobs.wait(redis_client(accounts), report, timeout=300)
    assert backed["ok"], backed.get("error")
    with pg_connect(accounts, autocommit=True) as pg:
        old = read_state(pg)
        pg.execute(f"delete from {TABLE} where id % 10 = 0")
        pg.execute(f"update {TABLE} set balance = balance + 5 where id % 3 = 0")
        new = read_state(pg)
    assert old != new and old[0] == ACCOUNTS
    seen: list[tuple[int, int, str]] = []
    errors: list[str] = []
    lock_waits = [0]
    stop = threading.Event()

    def reader() -> None:
        with pg_connect(accounts) as conn:  # each read its own transaction (read committed)
            conn.execute("set lock_timeout = '60s'")  # a bounded wait behind the swap
            conn.commit()
            while not stop.is_set():
                try:
                    seen.append(read_state(conn))
                    conn.commit()
                except psycopg.errors.LockNotAvailable:
                    conn.rollback()
                    lock_waits[0] += 1
                except Exception as err:  # noqa: BLE001 - any other error is a failure of the restore
                    conn.rollback()
                    errors.append(repr(err))
                    if len(errors) > 5:
                        return

    readers = [threading.Thread(target=reader, daemon=True) for _ in range(2)]
    for t in readers:
        t.start()
    try:
        time.sleep(0.5)
        code, restored = cli_json("restore", backed["backup_id"], "--tables", TABLE, timeout=300)
        time.sleep(0.5)
    finally:
        stop.set()
        for t in readers:
            t.join(timeout=90)
    assert not any(t.is_alive() for t in readers)
    assert code == 0 and restored["ok"], restored
    assert errors == [], errors[:3]
    assert set(seen) <= {old, new}, [s for s in seen if s not in (old, new)][:3]
    assert new in seen and old in seen  # the readers read on both sides of the swap
    assert seen[-1] == old
    with pg_connect(accounts) as conn:
        assert read_state(conn) == old


@pytest.fixture()
def slow_migration(accounts: Any, scratch_path: Path) -> Iterator[dict[str, str]]:  # noqa: F811
    """A scratch migrations folder whose extra migration creates and fills a table and alters the accounts table,
    then sleeps 4 s holding its locks (up and down); the database is left at the project's head."""
    (scratch_path / "versions" / f"{SLOW}_slow_probe.py").write_text(f'''
from alembic import op
revision = "{SLOW}"
down_revision = "{VERSIONS[-1]}"
branch_labels = None
depends_on = None
name = "slow_probe"
description = "a slow migration of the concurrency tests"

def upgrade():
    op.execute("create table conc_mig (id int primary key, v text not null)")
    op.execute("insert into conc_mig select g, 'm' || g from generate_series(1, 1500) g")
    op.execute("alter table {TABLE} add column flag int not null default 7")
    op.execute("select pg_sleep(4)")

def downgrade():
    op.execute("drop table conc_mig")
    op.execute("alter table {TABLE} drop column flag")
    op.execute("select pg_sleep(4)")
''')
    env = {"MIGRATIONS_PATH": str(scratch_path)}
    yield env
    if migrator.current(accounts) == SLOW:
        s = accounts.model_copy(update={"migrations_path": scratch_path})
        from conftest import run_job
        assert run_job(accounts, lambda: commands.migrate(s, "downgrade", VERSIONS[-1], False))["ok"]
    assert migrator.current(accounts) == VERSIONS[-1]


def wait_for_sleeping_migration(settings: Any) -> None:
    deadline = time.monotonic() + 60
    with pg_connect(settings, autocommit=True) as pg:
        while time.monotonic() < deadline:
            if pg.execute("""select count(*) from pg_stat_activity where datname = current_database()
                             and application_name = 'worktask-migrate' and query like '%%pg_sleep%%'
                             and state = 'active'""").fetchone()[0]:
                return
            time.sleep(0.05)
    pytest.fail("the slow migration was never seen running")


@pytest.mark.parametrize("direction", ["upgrade", "downgrade"])
def test_a_backup_started_during_a_migration_holds_the_schema_of_its_rows(accounts: Any,
                                                                          slow_migration: dict[str, str],
                                                                          direction: str) -> None:
    """The backup waits for the migration's locks, then holds one point in time: the migration head in its
    manifest is the schema of the rows it holds (a table the migration made is in it, with its rows)."""
    if direction == "downgrade":
        code, up = cli_json("migrate", env=slow_migration, timeout=180)
        assert code == 0 and up["ok"] and migrator.current(accounts) == SLOW, up
        args = ["migrate", "rollback", VERSIONS[-1]]
    else:
        args = ["migrate"]
    outcome: dict[str, Any] = {}
    thread = threading.Thread(target=lambda: outcome.update(
        result=cli_json(*args, env=slow_migration, timeout=180)), daemon=True)
    thread.start()
    wait_for_sleeping_migration(accounts)
    code, report = cli_json("backup", "--chunk-rows", str(CHUNK_ROWS), timeout=300)
    thread.join(timeout=200)
    assert not thread.is_alive()
    mcode, migrated = outcome["result"]
    assert mcode == 0 and migrated["ok"], migrated
    assert code == 0 and report["ok"], report
    manifest = manifest_of(accounts, report["backup_id"])
    tables = {t["name"]: t for t in manifest["tables"]}
    columns = [c["name"] for c in tables[TABLE]["columns"]]
    if direction == "upgrade":
        assert manifest["source"]["migration_head"] == SLOW
        assert "conc_mig" in tables and tables["conc_mig"]["rows"] == 1500, sorted(tables)
        assert columns == ["id", "balance", "note", "flag"]
        assert {line.split(b"\t")[3] for line in decode(accounts, manifest, TABLE)} == {b"7"}
        assert sorted(decode(accounts, manifest, "conc_mig")) == sorted(table_copy(accounts, "conc_mig", ["id", "v"]))
    else:
        assert manifest["source"]["migration_head"] == VERSIONS[-1]
        assert "conc_mig" not in tables and columns == ["id", "balance", "note"]
    assert tables[TABLE]["rows"] == ACCOUNTS
    assert validate(accounts, report["backup_id"])["ok"]


def test_a_migration_during_a_backup_is_refused_naming_the_backup(accounts: Any,
                                                                  slow_migration: dict[str, str]) -> None:
    """`migrate` and `migrate rollback` while a backup holds its tables: both refused (exit 1) naming the backup
    job; nothing migrated; the backup completes and validates."""
    r = redis_client(accounts)
    job_id = slow_backup(accounts, rate=20_000)  # ~6 s a chunk of the accounts table
    deadline = time.monotonic() + 60
    while job_id not in snapshot.running_backups(r) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert job_id in snapshot.running_backups(r)
    # the rollback submitted as the CLI does, the upgrade through the CLI meanwhile (the operator's view)
    s = accounts.model_copy(update={"migrations_path": Path(slow_migration["MIGRATIONS_PATH"])})
    rollback = commands.migrate(s, "downgrade", VERSIONS[-2], False)
    code, refused = cli_json("migrate", env=slow_migration, timeout=120)
    rolled = jobs.wait(r, rollback, timeout=120)
    still_running = jobs.read(r, job_id).state == "running"
    backed = jobs.wait(r, job_id, timeout=300)
    assert still_running, "the backup ended before the migrations were tried"
    assert code == 1 and refused["state"] == "failed", refused
    for report in (refused, rolled):
        assert not report["ok"] and report["state"] == "failed", report
        assert f"backup job {job_id} is running" in report["error"] and "after it" in report["error"], \
            report["error"]
    assert migrator.current(accounts) == VERSIONS[-1]  # nothing migrated either way
    with pg_connect(accounts) as conn:
        assert conn.execute("select to_regclass('conc_mig')").fetchone()[0] is None
    assert backed["ok"], backed.get("error")
    check_balanced(accounts, job_id)


def waiting_locks(settings: Any, application_like: str, mode: str) -> list[int]:
    """Sessions (of this database) whose `mode` lock on the accounts table is not granted yet."""
    with pg_connect(settings, autocommit=True) as pg:
        return [pid for (pid,) in pg.execute("""
            select l.pid from pg_locks l join pg_stat_activity a on a.pid = l.pid
            where a.datname = current_database() and l.locktype = 'relation' and not l.granted and l.mode = %s
              and a.application_name like %s and l.relation in (select oid from pg_class where relname = %s)""",
                                             (mode, application_like, TABLE))]


def wait_until(what: str, check: Any, bound: float = 60) -> Any:
    deadline = time.monotonic() + bound
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.05)
    pytest.fail(f"never seen: {what}")


def hold_replacement(settings: Any, restore_id: str) -> psycopg.Connection:
    """A session that locks the restore's replacement table (SHARE) as soon as it exists: the loads wait."""
    name = swap.replacement(TABLE, restore_id.rsplit("-", 1)[-1])
    conn = psycopg.connect(**{**pg_params(settings), "application_name": "conc-hold-load"})
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if conn.execute("select to_regclass(%s)", (name,)).fetchone()[0]:
            conn.execute(psycopg.sql.SQL("lock table {} in share mode").format(psycopg.sql.Identifier(name)))
            assert conn.execute("select obj_description(%s::regclass, 'pg_class')", (name,)).fetchone()[0] \
                .startswith(swap.MARKER)  # never seen unmarked: a backup listing tables now would skip it
            return conn
        conn.rollback()
    conn.close()
    pytest.fail("the restore's replacement table never appeared")


@pytest.mark.parametrize("phase", ["load", "swap"])
def test_a_backup_started_during_a_restore_is_refused_naming_it(accounts: Any, phase: str) -> None:
    """The reverse of tests/test_backup_fidelity.py::test_a_restore_refuses_while_a_backup_holds_its_tables.
    A backup started while a restore loads (its loads held here by a lock on the replacement table) or waits at
    its swap (held by an application's open read) is refused, exit 1, naming the restore job. Were it let run,
    its locks would keep the swap's ACCESS EXCLUSIVE request queued, and the application's reads behind it, for
    the swap's whole lock timeout (30 s, seen here before the fix). The restore completes."""
    r = redis_client(accounts)
    # one chunk a table: the held load occupies one worker slot, not all of them (the backup's start needs one)
    first = jobs.wait(r, commands.backup(accounts, True, True, 2 * ACCOUNTS), timeout=300)
    assert first["ok"], first.get("error")
    with pg_connect(accounts, autocommit=True) as pg:
        restored_state = read_state(pg)
        pg.execute(f"update {TABLE} set balance = balance + 1 where id <= 100")  # the live table differs
        changed = read_state(pg)
    before = {b["backup_id"] for b in commands.backup_list(accounts)}
    blocker = None
    try:
        if phase == "swap":
            blocker = psycopg.connect(**{**pg_params(accounts), "application_name": "conc-long-report"})
            blocker.execute(f"select count(*) from {TABLE}")  # its transaction stays open: ACCESS SHARE held
            restore_id = commands.restore(accounts, first["backup_id"], [TABLE], False, False, False)
            wait_until("the restore's swap waiting for the reader",
                       lambda: waiting_locks(accounts, "%", "AccessExclusiveLock"), 120)
        else:
            restore_id = commands.restore(accounts, first["backup_id"], [TABLE], False, False, False)
            blocker = hold_replacement(accounts, restore_id)
            assert jobs.read(r, restore_id).chunks_done == 0  # held before any chunk was loaded
        code, refused = cli_json("backup", "--chunk-rows", str(CHUNK_ROWS), timeout=120)
        assert jobs.read(r, restore_id).state == "running"
        if phase == "load":  # (at the swap, a read would queue behind it, behind the open read)
            with pg_connect(accounts) as conn:
                assert read_state(conn) == changed  # the live table is untouched until the swap
    finally:
        if blocker is not None:
            blocker.rollback()
            blocker.close()
    restored = jobs.wait(r, restore_id, timeout=300)
    assert code == 1 and refused["state"] == "failed", refused
    assert f"restore job {restore_id} is running" in refused["error"] and "after it" in refused["error"], \
        refused["error"]
    assert restored["ok"], restored.get("error")
    with pg_connect(accounts) as conn:
        assert read_state(conn) == restored_state
    states = {b["backup_id"]: b["state"] for b in commands.backup_list(accounts) if b["backup_id"] not in before}
    assert states.get(refused["job_id"]) in (None, "failed"), states  # never listed as a backup to restore
