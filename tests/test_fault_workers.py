"""Fault suite, workers: a worker pool process, or a whole worker, lost at each phase of each job; a chunk
delivered twice (past the visibility timeout); a chunk that kills its worker at every delivery.

Each job ends exactly (row hashes, counts, the store's objects) or fails cleanly naming table and chunk, and
leaves nothing behind: no replacement table, no snapshot lease, no restore lock; the next run succeeds.

Phases too short to catch by chance are held still from the test: it holds a PostgreSQL lock the phase needs
(it waits, pg_stat_activity shows it), or puts a FIFO where the phase reads a chunk (it blocks reading it until
the test writes), then kills the worker process the phase runs in (or the whole worker: `Loss`) and lets go.
Every phase of a job is lost both ways: its pool process (the worker requeues the task at once), and its whole
worker (main process and pool; its deliveries come back after the visibility timeout):
test_losing_a_whole_worker_mid_job_still_ends_each_kind_exactly_and_the_next_run_succeeds runs the pool
process tests' own scenarios with a whole worker lost.

Already covered elsewhere (not redone here): tests/test_backup.py::
test_killing_a_worker_process_mid_backup_still_completes_and_validates, tests/test_job_life.py (hard time limit).
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import psycopg
import pytest

from conftest import ROOT, cli_json, own_worker, process_of_connection, run_job
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
    return process_of_connection(port, server)


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


def nothing_left_and_the_next_restore_is_exact(settings: Any, job_id: str, backup_id: str,
                                               before: dict[str, str]) -> None:
    """After a restore that lived through a fault: nothing of it left, and the next restore (over scrambled
    data) gives the backup's rows exactly."""
    nothing_left(settings, job_id)
    scramble(settings)
    code, again = cli_json("restore", backup_id, "--exact", timeout=WAIT)
    assert code == 0 and again["ok"], again.get("error")
    assert hashes(settings) == before


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
    VISIBILITY_TIMEOUT: the messages go back to their queue, as after that many seconds. Returns how many.
    (A message put back keeps its delivery tag: once a worker takes it again it is in the unacked index again,
    under the time of that delivery; only the aged entry says that it still waits.)"""
    from worker.app import app

    r = redis_client(settings)
    for tag in tags:
        r.zadd("unacked_index", {tag: 0})
    waiting = lambda tag: r.zscore("unacked_index", tag) == 0  # noqa: E731
    deadline = time.monotonic() + 30
    with app.connection_for_write() as conn:
        qos = conn.default_channel.qos
        assert qos.visibility_timeout == settings.visibility_timeout
        while any(waiting(tag) for tag in tags) and time.monotonic() < deadline:
            qos._vrestore_count = 0  # its first call restores (then one call in ten)
            qos.restore_visible(num=1000)  # nothing when a worker's sweep holds kombu's mutex: again
            time.sleep(0.2)
    return sum(1 for tag in tags if not waiting(tag))


@contextmanager
def no_consumers() -> Iterator[None]:
    """The session's workers consume nothing meanwhile: a task requeued now waits in its queue."""
    from worker import workers
    from worker.app import app

    session = len(workers.live_workers(app))
    for queue in ("control", "bulk"):
        app.control.cancel_consumer(queue, reply=True, timeout=5, limit=session)
    try:
        yield
    finally:
        for queue in ("control", "bulk"):
            app.control.add_consumer(queue, reply=True, timeout=5, limit=session)


class Loss:
    """How the worker running a held phase is lost, and how its task comes back.

    A pool process (whole=False): SIGKILL of the process running the task. Its worker requeues the task at
    once (task_reject_on_worker_lost); the session's workers consume nothing from the kill to `redeliver()`,
    so that the test can look at what the kill left before the task runs again.
    A whole worker (whole=True): the job runs on a worker of the test's own (`own_worker`: the session's
    workers do not consume meanwhile); its main process and pool are SIGKILLed, so nothing acknowledges or
    requeues its tasks. `redeliver()` lets the session's workers consume again and ages the lost worker's
    deliveries past the visibility timeout in kombu's index (as above), so that kombu puts them back."""

    def __init__(self, settings: Any, whole: bool, name: str) -> None:
        self.settings, self.whole, self.name = settings, whole, name
        self.stack = ExitStack()
        self.tags: list[str] = []

    def __enter__(self) -> Loss:
        if self.whole:
            self.proc = self.stack.enter_context(own_worker(self.settings, self.name))
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stack.close()

    @property
    def host(self) -> str | None:
        """The start of the name of the worker the job's tasks run on (None: any of the session's)."""
        return f"{self.name}-" if self.whole else None

    def kill(self, victim: dict[str, Any]) -> None:
        if not self.whole:
            self.stack.enter_context(no_consumers())
            os.kill(victim["worker_pid"], signal.SIGKILL)
            return
        assert victim["hostname"].startswith(self.host), victim["hostname"]
        kill_whole_worker(self.proc)
        lost = unacked(self.settings)
        assert any(m["headers"].get("id") == victim["id"] for _, m in lost), \
            "the lost worker's task is not waiting for its visibility timeout"
        self.tags = [tag for tag, _ in lost]

    def redeliver(self) -> None:
        self.stack.close()  # the session's workers consume again (the lost worker is stopped: found killed)
        if self.whole:
            assert past_visibility_timeout(self.settings, self.tags) == len(self.tags)


class ChunkFifo:
    """A stored chunk swapped for a FIFO (the chunk kept aside, outside the backup's folder: validate names any
    object the manifest does not list). What reads it blocks opening it until the test opens it to write, then
    reading it (1 MiB reads) until the test has written all of it and closed it."""

    def __init__(self, settings: Any, key: str, aside: Path) -> None:
        self.path = Path(backups.store_options(settings)["backup_dir"], key)
        self.aside = aside / "held-chunk"
        self.fd: int | None = None

    def __enter__(self) -> ChunkFifo:
        self.path.rename(self.aside)
        self.raw = self.aside.read_bytes()
        os.mkfifo(self.path)
        return self

    def __exit__(self, *exc: Any) -> None:
        self.let_go()
        self.path.unlink(missing_ok=True)
        self.aside.rename(self.path)

    def _writer(self, deadline: float) -> int:
        """The FIFO's write end, once a reader has it open."""
        while True:
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_NONBLOCK)
            except OSError as err:
                assert err.errno == errno.ENXIO and time.monotonic() < deadline, f"nothing opened {self.path} to read"
                time.sleep(0.05)
                continue
            os.set_blocking(fd, True)
            return fd

    def hold(self, deadline: float) -> None:
        """Once the reader has it open: its first bytes (within the pipe's buffer), the write end kept open, so
        that the reader waits, mid-chunk, for the rest."""
        self.fd = self._writer(deadline)
        os.write(self.fd, self.raw[:min(len(self.raw) // 2, 4096)])

    def let_go(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def feed(self, deadline: float) -> None:
        """The whole chunk, to the next reader."""
        fd = self._writer(deadline)
        with os.fdopen(fd, "wb") as f:
            f.write(self.raw)


def copy_backend(conn: psycopg.Connection, table: str, pid: int, deadline: float) -> int:
    """The PostgreSQL backend through which process `pid` runs a COPY into `table`."""
    while time.monotonic() < deadline:
        for (backend,) in conn.execute("""select pid from pg_stat_activity where datname = current_database()
                                          and state = 'active' and query ilike 'copy %%'
                                          and position(%s in query) > 0""", (table,)).fetchall():
            try:
                if process_of_backend(conn, backend) == pid:
                    return backend
            except (AssertionError, TypeError):  # it ended meanwhile
                continue
        time.sleep(0.05)
    raise AssertionError(f"process {pid} was not seen copying into {table}")


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
    # the delivery after the last allowed one fails the job before it runs the chunk: it is not killed (it
    # could be, caught running for that moment); were it to run the chunk instead, the backup would complete
    while len(killed) < data.max_chunk_attempts and jobs.state(r, job_id) == "running" and time.monotonic() < deadline:
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
    done = backup(data)  # the next run succeeds
    assert done["ok"], done


# backup validate ---------------------------------------------------------------------------------------------

def backup_validate_with_a_kill(settings: Any, tmp_path: Path, whole: bool) -> None:
    """One chunk's check is held reading the chunk (a FIFO the test has written the first bytes of); the worker
    running it is lost; the check is delivered again and counts every chunk once."""
    from worker.app import app

    done = backup(settings)
    assert done["ok"], done
    manifest = manifest_of(settings, done["backup_id"])
    key = next(t for t in manifest["tables"] if t["name"] == "todo_items")["chunks"][1]["key"]
    with ChunkFifo(settings, key, tmp_path) as fifo, Loss(settings, whole, "lostcheck") as loss:
        job_id = commands.backup_validate(settings, done["backup_id"])
        deadline = time.monotonic() + 120
        victim = running(app, "worktask.backup_validate.check_chunk", deadline, loss.host,
                         accept=lambda t: t["kwargs"]["path"] == key)
        fifo.hold(deadline)
        loss.kill(victim)
        fifo.let_go()
        loss.redeliver()
        # the check delivered again, in another process (the killed one may still count as the FIFO's reader
        # for a moment: what the test wrote then would be lost with it)
        running(app, "worktask.backup_validate.check_chunk", deadline,
                accept=lambda t: t["id"] == victim["id"] and t["worker_pid"] != victim["worker_pid"])
        fifo.feed(deadline)
        report = jobs.wait(redis_client(settings), job_id, timeout=WAIT)
    assert report["ok"] and report["bad_chunks"] == [], report
    assert report["chunks_checked"] == done["totals"]["chunks"]
    assert jobs.deliveries(redis_client(settings), job_id)[victim["id"]] >= 2
    nothing_left(settings, job_id)
    code, again = cli_json("backup", "validate", done["backup_id"])  # the next run
    assert code == 0 and again["ok"] and again["chunks_checked"] == done["totals"]["chunks"], again


def test_killing_a_worker_process_during_backup_validate_still_checks_every_chunk(data: Any,  # noqa: F811
                                                                                 tmp_path: Path) -> None:
    backup_validate_with_a_kill(data, tmp_path, whole=False)


# restore -----------------------------------------------------------------------------------------------------

LOADED = "todo_items"  # the table whose phase is held (its chunk 1 for the load)


@contextmanager
def held_load(settings: Any, watch: psycopg.Connection, job_id: str, loss: Loss, fifo: ChunkFifo | None,
              chunk: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The load of the FIFO's chunk, held mid-COPY: its worker process has opened the chunk and read its first
    bytes; its transaction is open, its ledger row written, its COPY into the replacement under way (the
    session of that very process, in pg_stat_activity)."""
    from worker.app import app

    assert fifo
    deadline = time.monotonic() + 120
    victim = running(app, "worktask.restore.load_chunk", deadline, loss.host,
                     accept=lambda t: (t["kwargs"]["table"], t["kwargs"]["chunk"]) == (LOADED, chunk["n"]))
    fifo.hold(deadline)
    tag = job_id.rsplit("-", 1)[-1]
    backend = copy_backend(watch, swap.replacement(LOADED, tag), victim["worker_pid"], deadline)
    assert watch.execute("""select 1 from pg_locks where pid = %s and relation = to_regclass(%s)
                            and mode = 'RowExclusiveLock' and granted""", (backend, swap.ledger(tag))).fetchone(), \
        "the held load's transaction holds no ledger row"  # written in it, before its COPY
    yield {**victim, "backend": backend}
    fifo.let_go()
    backend_gone(watch, backend, time.monotonic() + 30)


@contextmanager
def held_build(settings: Any, watch: psycopg.Connection, job_id: str, loss: Loss, fifo: ChunkFifo | None,
               chunk: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The build of a table, waiting for a lock the test holds on its replacement."""
    from worker.app import app

    name = swap.replacement(LOADED, job_id.rsplit("-", 1)[-1])
    with pg_connect(settings) as holder:
        deadline = time.monotonic() + 60
        while not holder.execute("select to_regclass(%s)", (name,)).fetchone()[0]:
            assert time.monotonic() < deadline, f"{name} was never created"
            holder.rollback()
            time.sleep(0.05)
        # ROW EXCLUSIVE: the loads (inserts) go on, the build's SHARE lock waits
        holder.execute(psycopg.sql.SQL("lock table {} in row exclusive mode").format(psycopg.sql.Identifier(name)))
        victim = waiting_task(app, watch, "worktask.restore.build_table", "lock table %share mode%",
                              time.monotonic() + 120)
        yield victim
        holder.rollback()  # let go: the killed one's session ends, the redelivered one goes on
    backend_gone(watch, victim["backend"], time.monotonic() + 30)


@contextmanager
def held_swap(settings: Any, watch: psycopg.Connection, job_id: str, loss: Loss, fifo: ChunkFifo | None,
              chunk: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The swap, mid-transaction, waiting for the test's ACCESS SHARE on services (only its renames wait)."""
    from worker.app import app

    with pg_connect(settings) as holder:
        holder.execute("select count(*) from services")
        victim = waiting_task(app, watch, "worktask.restore.finalize", "%", time.monotonic() + 120)
        yield victim
        holder.rollback()
    backend_gone(watch, victim["backend"], time.monotonic() + 30)


HELD = {"load": held_load, "build": held_build, "swap": held_swap}


def pg_only(h: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in h.items() if k != "dynamodb"}


def restore_with_a_kill(settings: Any, phase: str, whole: bool, tmp_path: Path) -> None:
    """Restore everything after scrambling; hold the phase (`HELD`); lose the worker running it; let go. Before
    the phase's task is delivered again the live PostgreSQL tables hold the scrambled data, whole (the killed
    run's transaction rolled back with its session; DynamoDB items are upserted before the swap, by design:
    README); then the restore completes exactly, leaves nothing, and the next restore succeeds."""
    from worker.app import app

    done = backup(settings)
    assert done["ok"], done
    before = hashes(settings)
    scramble(settings)
    scrambled = hashes(settings)
    chunk = next(t for t in manifest_of(settings, done["backup_id"])["tables"] if t["name"] == LOADED)["chunks"][1]
    with ExitStack() as stack:
        fifo = stack.enter_context(ChunkFifo(settings, chunk["key"], tmp_path)) if phase == "load" else None
        watch = stack.enter_context(pg_connect(settings, autocommit=True))
        loss = stack.enter_context(Loss(settings, whole, f"lost{phase}"))
        job_id = commands.restore(settings, done["backup_id"], [], True, False, False)
        with HELD[phase](settings, watch, job_id, loss, fifo, chunk) as victim:
            loss.kill(victim)
        assert pg_only(hashes(settings)) == pg_only(scrambled)  # killed, not yet delivered again: the old data
        loss.redeliver()
        if fifo:  # the load delivered again, in another process: fed the whole chunk
            deadline = time.monotonic() + 120
            running(app, "worktask.restore.load_chunk", deadline,
                    accept=lambda t: t["id"] == victim["id"] and t["worker_pid"] != victim["worker_pid"])
            fifo.feed(deadline)
        report = jobs.wait(redis_client(settings), job_id, timeout=WAIT)
    assert report["ok"] and report["skipped"] == [], report.get("error")
    assert jobs.deliveries(redis_client(settings), job_id)[victim["id"]] >= 2
    assert hashes(settings) == before
    nothing_left_and_the_next_restore_is_exact(settings, job_id, done["backup_id"], before)


@pytest.mark.slow
def test_killing_a_worker_process_during_the_load_still_restores_exactly(dressed: Any,  # noqa: F811
                                                                        tmp_path: Path) -> None:
    restore_with_a_kill(dressed, "load", False, tmp_path)


def test_killing_a_worker_process_during_a_restores_build_still_restores_exactly(dressed: Any,  # noqa: F811
                                                                                 tmp_path: Path) -> None:
    restore_with_a_kill(dressed, "build", False, tmp_path)


def test_killing_a_worker_process_during_the_swap_leaves_the_old_data_then_restores_exactly(
        dressed: Any, tmp_path: Path) -> None:  # noqa: F811
    restore_with_a_kill(dressed, "swap", False, tmp_path)


def test_losing_a_whole_worker_during_the_swap_leaves_the_old_data_then_restores_exactly(
        dressed: Any, tmp_path: Path) -> None:  # noqa: F811
    """The worker whose process swaps (waiting on a lock the test holds) dies whole; its finalize goes back to
    the queue once the visibility timeout has passed (aged, as above) and the session's workers finish."""
    restore_with_a_kill(dressed, "swap", True, tmp_path)


# worktask validate, testdata, migrate, init -----------------------------------------------------------------

HOLD_TODO_DEPENDENCIES = "lock table todo_dependencies in access exclusive mode"  # a validation's checks read it


def validation(settings: Any) -> dict[str, Any]:
    return run_job(settings, lambda: commands.validate(settings, False), WAIT)


def comparable(report: dict[str, Any]) -> Any:
    return (report["records_checked"], report["records_valid"],
            sorted(json.dumps(i, sort_keys=True) for i in report["issues"]))


def kill_one_waiting(settings: Any, loss: Loss, task: str, lock_sql: str, like: str,
                     submit: Callable[[], str]) -> tuple[str, str]:
    """Submit a job while the test holds `lock_sql`; lose the worker of a `task` once a worktask session waits
    on that lock; let go; the task is delivered again. (job id, killed task id)"""
    from worker.app import app

    with pg_connect(settings) as holder, pg_connect(settings, autocommit=True) as watch:
        holder.execute(lock_sql)
        job_id = submit()
        victim = waiting_task(app, watch, task, like, time.monotonic() + 120)
        loss.kill(victim)
        holder.rollback()
        backend_gone(watch, victim["backend"], time.monotonic() + 30)
    loss.redeliver()
    return job_id, victim["id"]


def validate_with_a_kill(settings: Any, whole: bool) -> None:
    baseline = validation(settings)
    with Loss(settings, whole, "lostvalidate") as loss:
        job_id, task_id = kill_one_waiting(settings, loss, "worktask.validate.check", HOLD_TODO_DEPENDENCIES,
                                           "%todo_dependencies%", lambda: commands.validate(settings, False))
    report = jobs.wait(redis_client(settings), job_id, timeout=WAIT)
    assert report["state"] == "succeeded", report
    assert comparable(report) == comparable(baseline)
    assert jobs.deliveries(redis_client(settings), job_id)[task_id] >= 2
    nothing_left(settings, job_id)
    code, again = cli_json("validate", timeout=WAIT)
    assert comparable(again) == comparable(baseline) and code == (0 if baseline["ok"] else 1)


def test_killing_a_worker_process_during_worktask_validate_gives_the_same_report(data: Any) -> None:  # noqa: F811
    validate_with_a_kill(data, whole=False)


def counts(settings: Any) -> dict[str, int]:
    with pg_connect(settings) as conn:
        return {t: conn.execute(psycopg.sql.SQL("select count(*) from {}").format(psycopg.sql.Identifier(t)))
                .fetchone()[0] for t in ("work_tasks", "todo_items", "deliverables", "quality_checks")}


def generation_with_a_kill(settings: Any, whole: bool) -> None:
    """A chunk of test data waits (before its commit) for a lock the test holds; its worker is lost."""
    before = counts(settings)
    try:
        with Loss(settings, whole, "losttestdata") as loss:
            job_id, task_id = kill_one_waiting(settings, loss, "worktask.testdata.generate_chunk",
                                               "lock table work_tasks in share mode", "%work_tasks%",
                                               lambda: commands.testdata(settings, "generate", 60, 7, no_files=True))
        report = jobs.wait(redis_client(settings), job_id, timeout=WAIT)
        assert report["ok"] and report["tasks"] == 60, report
        assert jobs.deliveries(redis_client(settings), job_id)[task_id] >= 2
        after = counts(settings)
        assert {t: after[t] - before[t] for t in after} == {
            "work_tasks": report["tasks"], "todo_items": report["todos"], "deliverables": report["deliverables"],
            "quality_checks": report["quality_checks"]}
        nothing_left(settings, job_id)
    finally:
        code, cleaned = cli_json("testdata", "cleanup", timeout=WAIT)
        assert code == 0 and cleaned["ok"], cleaned
    assert counts(settings) == before
    code, again = cli_json("testdata", "generate", "10", "--no-files", timeout=WAIT)  # the next run
    assert code == 0 and again["tasks"] == 10, again
    code, cleaned = cli_json("testdata", "cleanup", timeout=WAIT)
    assert code == 0 and counts(settings) == before


def test_killing_a_worker_process_during_testdata_generation_makes_each_row_once(data: Any) -> None:  # noqa: F811
    generation_with_a_kill(data, whole=False)


def migration_with_a_kill(settings: Any, tmp_path: Path, whole: bool) -> None:
    """The migration blocks while the test holds it (a loop on a marker table, not a lock: lock waits end at
    the migration's lock_timeout); its worker is lost; the redelivered run applies it."""
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
    s = settings.model_copy(update={"migrations_path": path})
    with pg_connect(settings, autocommit=True) as pg:
        pg.execute("create table worktask_fault_hold ()")
        try:
            with Loss(settings, whole, "lostmigrate") as loss:
                job_id = commands.migrate(s, "upgrade", None, False)
                deadline = time.monotonic() + 120
                while not pg.execute("""select 1 from pg_stat_activity where datname = current_database()
                                        and query like '%%worktask_fault_hold%%'
                                        and pid <> pg_backend_pid()""").fetchone():
                    assert time.monotonic() < deadline, "the migration never ran"
                    time.sleep(0.05)
                victim = running(app, "worktask.migrate.start", time.monotonic() + 30, loss.host)
                loss.kill(victim)
                pg.execute("drop table worktask_fault_hold")
                loss.redeliver()
        finally:
            pg.execute("drop table if exists worktask_fault_hold")
        try:
            report = jobs.wait(redis_client(settings), job_id, timeout=WAIT)
            assert report["ok"] and report["versions"] == ["20991231000077"] and report["pending"] == [], \
                report.get("error")
            assert pg.execute("select count(*) from worktask_fault_probe").fetchone()[0] == 1
            assert jobs.deliveries(redis_client(settings), job_id)[victim["id"]] >= 2
            nothing_left(settings, job_id)
            code, status = cli_json("migrate", "status", env={"MIGRATIONS_PATH": str(path)})
            assert code == 0 and status["current"] == "20991231000077" and status["pending"] == [], status
            code, again = cli_json("migrate", env={"MIGRATIONS_PATH": str(path)})  # the next run: nothing to do
            assert code == 0 and again["ok"] and again["versions"] == [], again
        finally:
            code, back = cli_json("migrate", "rollback", env={"MIGRATIONS_PATH": str(path)})
            assert code == 0 and back["ok"], back.get("error")
            pg.execute("drop table if exists worktask_fault_probe")


def test_killing_the_worker_process_of_a_migration_applies_it_once_on_redelivery(migrated: Any,
                                                                                 tmp_path: Path) -> None:
    migration_with_a_kill(migrated, tmp_path, whole=False)


INIT_STEPS = {"migrate": "succeeded", "seed": "succeeded", "testdata": "skipped", "validate": "succeeded",
              "backup": "succeeded"}


def init_with_a_kill(settings: Any, whole: bool) -> None:
    """`worktask init` (migrate, seed, validate, backup): the worker of its validation's check is lost."""
    with Loss(settings, whole, "lostinit") as loss:
        job_id, task_id = kill_one_waiting(settings, loss, "worktask.validate.check", HOLD_TODO_DEPENDENCIES,
                                           "%todo_dependencies%", lambda: commands.init(settings, {}, None, False))
    report = jobs.wait(redis_client(settings), job_id, timeout=WAIT)
    steps = {s["name"]: s for s in report["steps"]}
    assert {name: s["state"] for name, s in steps.items()} == INIT_STEPS, report
    assert jobs.deliveries(redis_client(settings), steps["validate"]["job_id"])[task_id] >= 2
    assert validate(settings, steps["backup"]["report"]["backup_id"])["ok"]
    nothing_left(settings, job_id)
    code, again = cli_json("init", timeout=WAIT)  # the next run
    assert code == 0 and again["ok"], again
    assert {s["name"]: s["state"] for s in again["steps"]} == INIT_STEPS, again


def test_killing_a_worker_process_during_init_still_runs_every_step(data: Any) -> None:  # noqa: F811
    init_with_a_kill(data, whole=False)


# a whole worker lost ----------------------------------------------------------------------------------------

WHOLE_WORKER = {  # kind -> (fixture, the pool process test's scenario with a whole worker lost)
    "restore-load": ("dressed", lambda s, tmp: restore_with_a_kill(s, "load", True, tmp)),
    "restore-build": ("dressed", lambda s, tmp: restore_with_a_kill(s, "build", True, tmp)),
    "backup-validate": ("data", lambda s, tmp: backup_validate_with_a_kill(s, tmp, True)),
    "validate": ("data", lambda s, tmp: validate_with_a_kill(s, True)),
    "testdata": ("data", lambda s, tmp: generation_with_a_kill(s, True)),
    "migrate": ("migrated", lambda s, tmp: migration_with_a_kill(s, tmp, True)),
    "init": ("data", lambda s, tmp: init_with_a_kill(s, True)),
}


@pytest.mark.slow
@pytest.mark.parametrize("kind", list(WHOLE_WORKER))
def test_losing_a_whole_worker_mid_job_still_ends_each_kind_exactly_and_the_next_run_succeeds(
        kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    """The main process and pool of the worker running the held phase, SIGKILLed: nothing acknowledges its
    tasks, which go back to the queue once the visibility timeout has passed (aged in kombu's index)."""
    fixture, scenario = WHOLE_WORKER[kind]
    scenario(request.getfixturevalue(fixture), tmp_path)
