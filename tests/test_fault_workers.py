"""Fault suite, workers: a worker pool process, or a whole worker, lost at each phase of each job; a chunk
delivered twice (past the visibility timeout); a chunk that kills its worker at every delivery.

Each job ends exactly (row hashes, counts, the store's objects) or fails cleanly naming table and chunk, and
leaves nothing behind: no replacement table, no snapshot lease, no restore lock; the next run succeeds.

Phases too short to catch by chance are held still from the test: it holds a PostgreSQL lock the phase needs
(it waits, pg_stat_activity shows it), or puts a FIFO where the phase reads a chunk (it blocks opening it),
then kills the worker process the phase runs in and lets go.

Already covered elsewhere (not redone here): tests/test_backup.py::
test_killing_a_worker_process_mid_backup_still_completes_and_validates, tests/test_restore.py::
test_killing_a_worker_process_during_the_load_still_restores_exactly, tests/test_job_life.py (hard time limit).
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest

from conftest import ROOT, cli_json, own_worker, run_job
from test_backup import backup, data, decode, manifest_of, validate  # noqa: F401 - `data` is a fixture
from test_restore import dressed, hashes, restore, scramble  # noqa: F401 - `dressed` is a fixture
from worker import backups, commands, jobs, snapshot, swap
from worker.connections import pg_connect, redis_client

pytestmark = [pytest.mark.fault]

WAIT = 300  # bound of every job wait (the machine is shared and loaded)


# helpers -----------------------------------------------------------------------------------------------------

def running(app: Any, name: str, deadline: float, host: str | None = None,
            accept: Callable[[dict[str, Any]], bool] = lambda t: True) -> dict[str, Any]:
    """A task of this name seen running (on a worker whose name starts with `host`), with its worker's name."""
    seen: dict[str, Any] = {}
    while time.monotonic() < deadline:
        seen = app.control.inspect(timeout=0.3).active() or {}
        for worker, active in seen.items():
            for t in active:
                if t["name"] == name and (host is None or worker.startswith(host)) and accept(t):
                    return {**t, "hostname": worker}
        time.sleep(0.05)
    last = {w: [(t["name"], t["worker_pid"]) for t in active] for w, active in seen.items()}
    raise AssertionError(f"no {name} task was seen running; last seen: {last}")


def lock_waiter(conn: psycopg.Connection, like: str, deadline: float) -> int:
    """The backend pid of a worktask session waiting on a lock, its query matching `like`."""
    while time.monotonic() < deadline:
        row = conn.execute("""select pid from pg_stat_activity where datname = current_database()
                              and application_name = 'worktask-data' and wait_event_type = 'Lock'
                              and query ilike %s limit 1""", (like,)).fetchone()
        if row:
            return row[0]
        time.sleep(0.05)
    raise AssertionError(f"no worktask session waited on a lock with a query like {like!r}")


def process_of_backend(conn: psycopg.Connection, backend: int) -> int:
    """The pid of the local process whose connection a PostgreSQL backend serves (its TCP port, the socket's
    inode in /proc/net/tcp, the process holding that socket)."""
    port, server = conn.execute("select client_port, inet_server_port() from pg_stat_activity where pid = %s",
                                (backend,)).fetchone()
    assert port and port > 0, f"backend {backend} is not a TCP client's"
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()  # the local port alone is not enough: Linux gives one local port to several
            if (int(fields[1].rsplit(":", 1)[1], 16), int(fields[2].rsplit(":", 1)[1], 16)) == (port, server):
                inodes.add(f"socket:[{fields[9]}]")  # connections to different servers (a worker's Redis one)
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if any(os.readlink(fd) in inodes for fd in (proc / "fd").iterdir()):
                    return int(proc.name)
            except OSError:
                continue
    raise AssertionError(f"no process holds the connection of backend {backend} (port {port})")


def waiting_task(app: Any, conn: psycopg.Connection, task: str, like: str, deadline: float) -> dict[str, Any]:
    """The running `task` whose PostgreSQL session waits on a lock, its query matching `like`."""
    backend = lock_waiter(conn, like, deadline)
    pid = process_of_backend(conn, backend)
    return {**running(app, task, deadline, accept=lambda t: t["worker_pid"] == pid), "backend": backend}


def backend_gone(conn: psycopg.Connection, pid: int, deadline: float) -> None:
    while time.monotonic() < deadline:
        if not conn.execute("select 1 from pg_stat_activity where pid = %s", (pid,)).fetchone():
            return
        time.sleep(0.1)


def nothing_left(settings: Any, job_id: str | None = None) -> None:
    """No replacement table or ledger, no marked replacement, no snapshot lease, no restore lock."""
    with pg_connect(settings, autocommit=True) as pg:
        left = pg.execute("""select relname from pg_class where relnamespace = 'public'::regnamespace
                             and (relname like '%%\\_\\_restore\\_%%' or relname like 'worktask\\_restore\\_%%'
                                  or left(obj_description(oid, 'pg_class'), length(%s)) = %s)""",
                          (swap.MARKER, swap.MARKER)).fetchall()
        assert left == [], left
    r = redis_client(settings)
    deadline = time.monotonic() + 15  # the call that ends a job lets go right after it (a waiter can wake between)
    while (snapshot.running_backups(r) or r.exists(jobs.LOCK_KEY.format(resource="restore"))) \
            and time.monotonic() < deadline:
        time.sleep(0.1)
    assert snapshot.running_backups(r) == []
    assert not r.exists(jobs.LOCK_KEY.format(resource="restore")), r.get(jobs.LOCK_KEY.format(resource="restore"))
    if job_id:
        assert not [k for k in r.scan_iter(match=jobs.SNAPSHOT_LEASES) if job_id in k]


def children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(entry.name))
    return out


def kill_whole_worker(proc: subprocess.Popen) -> None:
    """SIGKILL a worker's main process and its pool processes, as when its machine or container dies."""
    pool = children(proc.pid)
    assert pool, "the worker has no pool processes"
    os.kill(proc.pid, signal.SIGKILL)
    for pid in pool:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait(30)


def stored_keys(settings: Any, backup_id: str) -> set[str]:
    return {o.key for o in backups.store_for(settings, backups.store_options(settings)).list(f"backups/{backup_id}/")}


def manifest_keys(manifest: dict[str, Any]) -> set[str]:
    return {c["key"] for t in manifest["tables"] for c in t["chunks"]}


def unacked(settings: Any, task_id: str | None = None) -> list[tuple[str, dict[str, Any]]]:
    """kombu's Redis transport: the delivered, unacknowledged messages (delivery tag, message), of one task."""
    r = redis_client(settings)
    out = []
    for tag, raw in r.hgetall("unacked").items():
        message = json.loads(raw)[0]
        if task_id is None or message["headers"].get("id") == task_id:
            out.append((tag, message))
    return out


def past_visibility_timeout(settings: Any, tags: list[str]) -> int:
    """Make these deliveries as old as the epoch in kombu's unacked index, then run kombu's own visibility
    check (QoS.restore_visible, what every worker runs every few seconds) with the configured
    VISIBILITY_TIMEOUT: the messages go back to their queue, as after that many seconds. Returns how many."""
    from worker.app import app

    r = redis_client(settings)
    for tag in tags:
        r.zadd("unacked_index", {tag: 0})
    deadline = time.monotonic() + 30
    with app.connection_for_write() as conn:
        qos = conn.default_channel.qos
        assert qos.visibility_timeout == settings.visibility_timeout
        while any(r.hexists("unacked", tag) for tag in tags) and time.monotonic() < deadline:
            qos._vrestore_count = 0  # its first call restores (then one call in ten)
            qos.restore_visible(num=1000)  # nothing when a worker's sweep holds kombu's mutex: again
            time.sleep(0.2)
    return sum(1 for tag in tags if not r.hexists("unacked", tag))


# backup ------------------------------------------------------------------------------------------------------

def test_a_chunk_delivered_again_past_the_visibility_timeout_runs_twice_and_the_backup_stays_exact(
        data: Any) -> None:  # noqa: F811
    """DESIGN §12: a chunk still running past the visibility timeout is delivered again and runs a second time
    beside the first. The first run is held still (SIGSTOP of its pool process: a chunk stuck in slow I/O)
    and only let go once the job has reported, so it writes its object last. Waiting out
    VISIBILITY_TIMEOUT (>= 60 s, above TASK_TIME_LIMIT) would take minutes: the test ages the delivery in
    kombu's unacked index and lets kombu's own visibility check put it back, a real second delivery."""
    from worker.app import app

    r = redis_client(data)
    job_id = commands.backup(data.model_copy(update={"backup_rate_limit": 50_000}), True, True, 1000)
    victim = running(app, "worktask.backup.dump_chunk", time.monotonic() + 60,  # a big chunk, just delivered
                     accept=lambda t: t["kwargs"]["table"] in ("todo_items", "work_tasks") and unacked(data, t["id"]))
    os.kill(victim["worker_pid"], signal.SIGSTOP)
    try:
        tags = [tag for tag, _ in unacked(data, victim["id"])]
        assert tags and past_visibility_timeout(data, tags) == len(tags)
        report = jobs.wait(r, job_id, timeout=WAIT)
    finally:
        os.kill(victim["worker_pid"], signal.SIGCONT)
    assert report["ok"], report
    assert jobs.deliveries(r, job_id)[victim["id"]] == 2  # the chunk was delivered, and started, again
    deadline = time.monotonic() + 60  # the first run goes on to its end
    while any(t["id"] == victim["id"] for t in (app.control.inspect(timeout=0.3).active() or {}).get(
            victim["hostname"], [])) and time.monotonic() < deadline:
        time.sleep(0.2)
    manifest = manifest_of(data, job_id)
    # the manifest lists exactly one object per chunk, every one stored; the other run's object is gone
    assert stored_keys(data, job_id) == manifest_keys(manifest) | {f"backups/{job_id}/manifest.json"}
    t = next(t for t in manifest["tables"] if t["name"] == victim["kwargs"]["table"])
    assert len(decode(data, manifest, t["name"])) == t["rows"]
    code, checked = cli_json("backup", "validate", job_id)
    assert code == 0 and checked["ok"] and checked["bad_chunks"] == [], checked
    nothing_left(data, job_id)


def test_a_chunk_that_kills_its_worker_at_every_delivery_fails_the_backup_naming_it(data: Any) -> None:  # noqa: F811
    """DESIGN §12 (poison chunks): a chunk whose worker process dies at every delivery is requeued
    (task_reject_on_worker_lost); past MAX_CHUNK_ATTEMPTS deliveries the job fails naming it."""
    from worker.app import app

    r = redis_client(data)
    s = data.model_copy(update={"backup_rate_limit": 20_000})  # seconds a chunk: each delivery is caught running
    job_id = commands.backup(s, True, True, 1000)
    victim = running(app, "worktask.backup.dump_chunk", time.monotonic() + 60,
                     accept=lambda t: t["kwargs"]["table"] in ("todo_items", "work_tasks"))
    killed: list[int] = []  # a worker reports its killed process's task for a moment after: each pid once
    deadline = time.monotonic() + 180
    while jobs.state(r, job_id) == "running" and time.monotonic() < deadline:
        try:
            again = running(app, "worktask.backup.dump_chunk", min(deadline, time.monotonic() + 5),
                            accept=lambda t: t["id"] == victim["id"] and t["worker_pid"] not in killed)
        except AssertionError:
            continue  # not delivered again yet, or the job ended
        os.kill(again["worker_pid"], signal.SIGKILL)
        killed.append(again["worker_pid"])
    report = jobs.wait(r, job_id, timeout=WAIT)
    assert report["state"] == "failed" and not report["ok"], report
    table, chunk = victim["kwargs"]["table"], victim["kwargs"]["chunk"]
    assert report["error"].startswith(f"worktask.backup.dump_chunk table={table} chunk={chunk}: "), report["error"]
    assert f"MAX_CHUNK_ATTEMPTS={data.max_chunk_attempts}" in report["error"], report["error"]
    assert len(killed) == data.max_chunk_attempts
    nothing_left(data, job_id)
    code, listed = cli_json("backup", "list")
    assert code == 0 and next(b for b in listed if b["backup_id"] == job_id)["state"] == "failed"
    done = backup(data)  # the next run succeeds
    assert done["ok"], done


def test_losing_a_whole_worker_mid_backup_still_completes_and_validates(data: Any) -> None:  # noqa: F811
    """The worker's main process and its pool, SIGKILLed: nothing acknowledges its chunks, which go back to
    the queue once the visibility timeout has passed (aged in kombu's index, as above, instead of waited)."""
    from worker.app import app

    r = redis_client(data)
    with own_worker(data, "wholeworker") as proc:
        s = data.model_copy(update={"backup_rate_limit": 50_000})
        job_id = commands.backup(s, True, True, 1000)
        running(app, "worktask.backup.dump_chunk", time.monotonic() + 60, host="wholeworker-")
        kill_whole_worker(proc)
    tags = [tag for tag, _ in unacked(data)]
    assert tags, "the lost worker left no unacknowledged delivery"
    past_visibility_timeout(data, tags)
    report = jobs.wait(r, job_id, timeout=WAIT)
    assert report["ok"], report
    manifest = manifest_of(data, job_id)
    assert stored_keys(data, job_id) == manifest_keys(manifest) | {f"backups/{job_id}/manifest.json"}
    checked = validate(data, job_id)
    assert checked["ok"] and checked["bad_chunks"] == [], checked
    nothing_left(data, job_id)


# backup validate ---------------------------------------------------------------------------------------------

def test_killing_a_worker_process_during_backup_validate_still_checks_every_chunk(data: Any,  # noqa: F811
                                                                                 tmp_path: Path) -> None:
    from worker.app import app

    done = backup(data)
    assert done["ok"], done
    manifest = manifest_of(data, done["backup_id"])
    t = next(t for t in manifest["tables"] if t["name"] == "todo_items")
    key = t["chunks"][1]["key"]
    path = Path(backups.store_options(data)["backup_dir"], key)
    held = tmp_path / "held"  # outside the backup's folder: validate names any object the manifest does not list
    path.rename(held)
    os.mkfifo(path)  # the chunk's check blocks opening it until the test writes
    try:
        job_id = commands.backup_validate(data, done["backup_id"])
        victim = running(app, "worktask.backup_validate.check_chunk", time.monotonic() + 60,
                         accept=lambda t: t["kwargs"]["path"] == key)
        os.kill(victim["worker_pid"], signal.SIGKILL)
        # the check delivered again, in another process (the killed one may still count as the FIFO's reader
        # for a moment: what the test wrote then would be lost with it)
        running(app, "worktask.backup_validate.check_chunk", time.monotonic() + 120,
                accept=lambda t: t["id"] == victim["id"] and t["worker_pid"] != victim["worker_pid"])
        deadline = time.monotonic() + 120
        while True:  # the redelivered check opens the FIFO again: feed it the chunk
            try:
                fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
                break
            except OSError as err:
                assert err.errno == errno.ENXIO and time.monotonic() < deadline, "the check was not delivered again"
                time.sleep(0.05)
        os.set_blocking(fd, True)
        with os.fdopen(fd, "wb") as f:
            f.write(held.read_bytes())
        report = jobs.wait(redis_client(data), job_id, timeout=WAIT)
    finally:
        path.unlink(missing_ok=True)
        held.rename(path)
    assert report["ok"] and report["bad_chunks"] == [], report
    assert report["chunks_checked"] == done["totals"]["chunks"]
    assert jobs.deliveries(redis_client(data), job_id)[victim["id"]] >= 2
    code, again = cli_json("backup", "validate", done["backup_id"])
    assert code == 0 and again["ok"] and again["chunks_checked"] == done["totals"]["chunks"], again


# restore -----------------------------------------------------------------------------------------------------

def restore_with_a_kill(settings: Any, task: str, hold: Callable[[psycopg.Connection, str], None], like: str) -> None:
    """Restore everything after scrambling, holding a lock the phase `task` waits for; kill its worker process
    once it waits; let go; the restore completes exactly and leaves nothing."""
    from worker.app import app

    done = backup(settings)
    assert done["ok"], done
    before = hashes(settings)
    scramble(settings)
    with pg_connect(settings) as holder, pg_connect(settings, autocommit=True) as watch:
        job_id = commands.restore(settings, done["backup_id"], [], True, False, False)
        hold(holder, job_id.rsplit("-", 1)[-1])
        victim = waiting_task(app, watch, task, like, time.monotonic() + 120)
        os.kill(victim["worker_pid"], signal.SIGKILL)
        holder.rollback()  # let go: the killed one's session ends, the redelivered one goes on
        backend_gone(watch, victim["backend"], time.monotonic() + 30)
    report = jobs.wait(redis_client(settings), job_id, timeout=WAIT)
    assert report["ok"] and report["skipped"] == [], report.get("error")
    assert jobs.deliveries(redis_client(settings), job_id)[victim["id"]] >= 2
    assert hashes(settings) == before
    nothing_left(settings, job_id)
    scramble(settings)
    code, again = cli_json("restore", done["backup_id"], "--exact", timeout=WAIT)  # the next run succeeds
    assert code == 0 and again["ok"], again
    assert hashes(settings) == before


def test_killing_a_worker_process_during_a_restores_build_still_restores_exactly(dressed: Any) -> None:  # noqa: F811
    def hold(conn: psycopg.Connection, tag: str) -> None:
        name = swap.replacement("todo_items", tag)
        deadline = time.monotonic() + 60
        while not conn.execute("select to_regclass(%s)", (name,)).fetchone()[0]:
            assert time.monotonic() < deadline, f"{name} was never created"
            conn.rollback()
            time.sleep(0.05)
        # ROW EXCLUSIVE: the loads (inserts) go on, the build's SHARE lock waits
        conn.execute(psycopg.sql.SQL("lock table {} in row exclusive mode").format(psycopg.sql.Identifier(name)))

    restore_with_a_kill(dressed, "worktask.restore.build_table", hold, "lock table %share mode%")


def test_killing_a_worker_process_during_the_swap_leaves_the_old_data_then_restores_exactly(
        dressed: Any) -> None:  # noqa: F811
    def hold(conn: psycopg.Connection, tag: str) -> None:
        conn.execute("select count(*) from services")  # ACCESS SHARE: only the swap's renames wait for it

    restore_with_a_kill(dressed, "worktask.restore.finalize", hold, "%")


# worktask validate, testdata, migrate, init -----------------------------------------------------------------

HOLD_TODO_DEPENDENCIES = "lock table todo_dependencies in access exclusive mode"  # a validation's checks read it


def validation(settings: Any) -> dict[str, Any]:
    return run_job(settings, lambda: commands.validate(settings, False), WAIT)


def comparable(report: dict[str, Any]) -> Any:
    return (report["records_checked"], report["records_valid"],
            sorted(json.dumps(i, sort_keys=True) for i in report["issues"]))


def kill_one_waiting(settings: Any, task: str, lock_sql: str, like: str, submit: Callable[[], str]) -> tuple[str, str]:
    """Submit a job while the test holds `lock_sql`; kill the worker process of a `task` once a worktask
    session waits on that lock; let go. (job id, killed task id)"""
    from worker.app import app

    with pg_connect(settings) as holder, pg_connect(settings, autocommit=True) as watch:
        holder.execute(lock_sql)
        job_id = submit()
        victim = waiting_task(app, watch, task, like, time.monotonic() + 120)
        os.kill(victim["worker_pid"], signal.SIGKILL)
        holder.rollback()
        backend_gone(watch, victim["backend"], time.monotonic() + 30)
    return job_id, victim["id"]


def test_killing_a_worker_process_during_worktask_validate_gives_the_same_report(data: Any) -> None:  # noqa: F811
    baseline = validation(data)
    job_id, task_id = kill_one_waiting(data, "worktask.validate.check", HOLD_TODO_DEPENDENCIES, "%todo_dependencies%",
                                       lambda: commands.validate(data, False))
    report = jobs.wait(redis_client(data), job_id, timeout=WAIT)
    assert report["state"] == "succeeded", report
    assert comparable(report) == comparable(baseline)
    assert jobs.deliveries(redis_client(data), job_id)[task_id] >= 2
    code, again = cli_json("validate", timeout=WAIT)
    assert comparable(again) == comparable(baseline) and code == (0 if baseline["ok"] else 1)


def counts(settings: Any) -> dict[str, int]:
    with pg_connect(settings) as conn:
        return {t: conn.execute(psycopg.sql.SQL("select count(*) from {}").format(psycopg.sql.Identifier(t)))
                .fetchone()[0] for t in ("work_tasks", "todo_items", "deliverables", "quality_checks")}


def test_killing_a_worker_process_during_testdata_generation_makes_each_row_once(data: Any) -> None:  # noqa: F811
    before = counts(data)
    job_id, task_id = kill_one_waiting(data, "worktask.testdata.generate_chunk",
                                       "lock table work_tasks in share mode", "%work_tasks%",
                                       lambda: commands.testdata(data, "generate", 60, 7, no_files=True))
    try:
        report = jobs.wait(redis_client(data), job_id, timeout=WAIT)
        assert report["ok"] and report["tasks"] == 60, report
        assert jobs.deliveries(redis_client(data), job_id)[task_id] >= 2
        after = counts(data)
        assert {t: after[t] - before[t] for t in after} == {
            "work_tasks": report["tasks"], "todo_items": report["todos"], "deliverables": report["deliverables"],
            "quality_checks": report["quality_checks"]}
    finally:
        code, cleaned = cli_json("testdata", "cleanup", timeout=WAIT)
        assert code == 0 and cleaned["ok"], cleaned
    assert counts(data) == before
    code, again = cli_json("testdata", "generate", "10", "--no-files", timeout=WAIT)  # the next run
    assert code == 0 and again["tasks"] == 10, again
    code, cleaned = cli_json("testdata", "cleanup", timeout=WAIT)
    assert code == 0 and counts(data) == before


def test_killing_the_worker_process_of_a_migration_applies_it_once_on_redelivery(migrated: Any,
                                                                                 tmp_path: Path) -> None:
    """The migration blocks while the test holds it (a loop on a marker table, not a lock: lock waits end at
    the migration's lock_timeout); its worker process is killed; the redelivered run applies it."""
    import shutil

    from test_migrate import add_migration
    from worker.app import app

    path = tmp_path / "migrations"
    shutil.copytree(ROOT / "migrations", path, ignore=shutil.ignore_patterns("__pycache__"))
    add_migration(path, "20991231000077", "\n".join([
        "    op.execute(\"do $$ begin while exists (select from pg_class where relname = 'worktask_fault_hold') \"",
        "               \"loop \"",
        "               \"perform pg_sleep(0.1); end loop; end $$\")",
        "    op.execute('create table worktask_fault_probe (id int primary key)')",
        "    op.execute('insert into worktask_fault_probe values (1)')"]))
    s = migrated.model_copy(update={"migrations_path": path})
    with pg_connect(migrated, autocommit=True) as pg:
        pg.execute("create table worktask_fault_hold ()")
        try:
            job_id = commands.migrate(s, "upgrade", None, False)
            deadline = time.monotonic() + 120
            while not pg.execute("""select 1 from pg_stat_activity where datname = current_database()
                                    and query like '%%worktask_fault_hold%%' and pid <> pg_backend_pid()""").fetchone():
                assert time.monotonic() < deadline, "the migration never ran"
                time.sleep(0.05)
            victim = running(app, "worktask.migrate.start", time.monotonic() + 30)
            os.kill(victim["worker_pid"], signal.SIGKILL)
        finally:
            pg.execute("drop table worktask_fault_hold")
        try:
            report = jobs.wait(redis_client(migrated), job_id, timeout=WAIT)
            assert report["ok"] and report["versions"] == ["20991231000077"] and report["pending"] == [], \
                report.get("error")
            assert pg.execute("select count(*) from worktask_fault_probe").fetchone()[0] == 1
            assert jobs.deliveries(redis_client(migrated), job_id)[victim["id"]] >= 2
            code, status = cli_json("migrate", "status", env={"MIGRATIONS_PATH": str(path)})
            assert code == 0 and status["current"] == "20991231000077" and status["pending"] == [], status
            code, again = cli_json("migrate", env={"MIGRATIONS_PATH": str(path)})  # the next run: nothing to do
            assert code == 0 and again["ok"] and again["versions"] == [], again
        finally:
            code, back = cli_json("migrate", "rollback", env={"MIGRATIONS_PATH": str(path)})
            assert code == 0 and back["ok"], back.get("error")
            pg.execute("drop table if exists worktask_fault_probe")


def test_killing_a_worker_process_during_init_still_runs_every_step(data: Any) -> None:  # noqa: F811
    """`worktask init` (migrate, seed, validate, backup): the worker process of its validation is killed."""
    job_id, _ = kill_one_waiting(data, "worktask.validate.check", HOLD_TODO_DEPENDENCIES, "%todo_dependencies%",
                                 lambda: commands.init(data, {}, None, False))
    report = jobs.wait(redis_client(data), job_id, timeout=WAIT)
    steps = {s["name"]: s["state"] for s in report["steps"]}
    assert steps == {"migrate": "succeeded", "seed": "succeeded", "testdata": "skipped", "validate": "succeeded",
                     "backup": "succeeded"}, report
    backup_id = next(s for s in report["steps"] if s["name"] == "backup")["report"]["backup_id"]
    assert validate(data, backup_id)["ok"]
    nothing_left(data)


def test_losing_a_whole_worker_during_the_swap_leaves_the_old_data_then_restores_exactly(
        dressed: Any) -> None:  # noqa: F811
    """The worker whose process swaps (waiting on a lock the test holds) dies whole; its finalize goes back to
    the queue once the visibility timeout has passed (aged, as above) and the session's workers finish."""
    from worker.app import app

    done = backup(dressed)
    assert done["ok"], done
    before = hashes(dressed)
    scramble(dressed)
    scrambled = hashes(dressed)
    with own_worker(dressed, "wholeswap") as proc:
        with pg_connect(dressed) as holder, pg_connect(dressed, autocommit=True) as watch:
            holder.execute("select count(*) from services")  # ACCESS SHARE: the swap's renames wait for it
            job_id = commands.restore(dressed, done["backup_id"], [], True, False, False)
            victim = waiting_task(app, watch, "worktask.restore.finalize", "%", time.monotonic() + 120)
            assert victim["hostname"].startswith("wholeswap-"), victim["hostname"]
            kill_whole_worker(proc)
            holder.rollback()
            backend_gone(watch, victim["backend"], time.monotonic() + 30)
        # the swap rolled back with its session: the old PostgreSQL data, whole (DynamoDB items are upserted
        # before the swap, by design: README)
        assert {k: v for k, v in hashes(dressed).items() if k != "dynamodb"} == \
            {k: v for k, v in scrambled.items() if k != "dynamodb"}
    tags = [tag for tag, message in unacked(dressed) if message["headers"].get("id") == victim["id"]]
    assert tags, "the lost worker's finalize is not waiting for its visibility timeout"
    past_visibility_timeout(dressed, [tag for tag, _ in unacked(dressed)])
    report = jobs.wait(redis_client(dressed), job_id, timeout=WAIT)
    assert report["ok"] and report["skipped"] == [], report.get("error")
    assert hashes(dressed) == before
    nothing_left(dressed, job_id)
    scramble(dressed)
    code, again = cli_json("restore", done["backup_id"], "--exact", timeout=WAIT)  # the next run succeeds
    assert code == 0 and again["ok"], again.get("error")
    assert hashes(dressed) == before
