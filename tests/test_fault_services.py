"""Faults of the services underneath: Redis restarted or flushed during each kind of job, PostgreSQL killing a
chunk's connection, restarted during a backup or at its timeout limits, and the backup folder's disk full.

Restarts need services of the test's own: a private redis-server and a private PostgreSQL cluster (initdb as
the `postgres` user, in a temporary folder), with one worker of the test's own pointed at both (moto is the
session's). Nothing of the machine's PostgreSQL or Redis is restarted or reconfigured; the session's database
gets a timeout setting for one test, undone in a finally."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import psycopg
import pytest
import redis

from conftest import ROOT, cli_json, free_port, run_cli
from test_backup import backup, data, decode, make_data, manifest_of, table_copy  # noqa: F401 - `data` is a fixture
from worker import backups, commands, jobs
from worker.connections import pg_connect, pg_params, redis_client

pytestmark = [pytest.mark.fault]

PG_BIN = Path("/usr/lib/postgresql/15/bin")
KEY = jobs.JOB_KEY.format(job_id="*")


def until(what: str, check: Any, bound: float, every: float = 0.2) -> Any:
    deadline = time.monotonic() + bound
    while time.monotonic() < deadline:
        got = check()
        if got:
            return got
        time.sleep(every)
    raise AssertionError(f"{what}: not within {bound:.0f} s")


class PrivateRedis:
    """A redis-server of the test's own (no persistence: a restart comes back empty, as a crashed cache does)."""

    def __init__(self, folder: Path) -> None:
        self.port, self.folder, self.proc = free_port(), folder, None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, socket_timeout=5, decode_responses=True)

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["/usr/bin/redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.folder)],
            stdout=open(self.folder / "redis.log", "ab"), stderr=subprocess.STDOUT)

        def pong() -> bool:
            try:
                return bool(self.client().ping())
            except redis.RedisError:
                return False
        until("the private redis-server answers", pong, 30)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()  # a crash, not a shutdown
            self.proc.wait(30)

    def restart(self) -> None:
        self.stop()
        self.start()


class PrivatePostgres:
    """A PostgreSQL 15 cluster of the test's own, run by the `postgres` user (initdb refuses root)."""

    def __init__(self, folder: Path) -> None:
        self.port, self.folder = free_port(), folder
        self.data = folder / "pgdata"

    def _as_postgres(self, *args: str, timeout: float = 120) -> None:
        subprocess.run(["runuser", "-u", "postgres", "--", *args], check=True, timeout=timeout,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def init(self) -> None:
        shutil.chown(self.folder, "postgres")
        self._as_postgres(str(PG_BIN / "initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8")

    def start(self) -> None:
        self._as_postgres(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-l", str(self.folder / "pg.log"), "-w",
                          "-t", "60", "-o", f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1", "start")

    def restart(self) -> None:
        self._as_postgres(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "-t", "60",
                          "-o", f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1", "restart")

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            self._as_postgres(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop")


@pytest.fixture(scope="module")
def own(migrated: Any) -> Iterator[Any]:
    """A stack of the test's own: private Redis and PostgreSQL (migrated, seeded, with the model's data), the
    session's moto, a backup folder of its own and one worker on both queues. `own.env` points the CLI at it."""
    folder = Path(tempfile.mkdtemp(prefix="wtfault-", dir="/tmp"))
    red, pg = PrivateRedis(folder), PrivatePostgres(folder)
    worker, st = None, None
    try:
        red.start()
        pg.init()
        pg.start()
        env = {"CELERY_BROKER_URL": red.url, "CELERY_RESULT_BACKEND": red.url, "POSTGRES_HOST": "127.0.0.1",
               "POSTGRES_PORT": str(pg.port), "POSTGRES_DATABASE": "worktask_fault",
               "BACKUP_DIR": str(folder / "backups"), "JOB_TIMEOUT": "600",
               "MIGRATION_LOCK_TIMEOUT": "60"}  # a migration held by a lock waits, not fails, while Redis goes
        with psycopg.connect(host="127.0.0.1", port=pg.port, user="postgres", dbname="postgres",
                             autocommit=True) as conn:
            conn.execute("create database worktask_fault")
        worker = start_worker(env, folder)
        s = migrated.model_copy(update={"celery_broker_url": red.url, "celery_result_backend": red.url,
                                        "postgres_host": "127.0.0.1", "postgres_port": pg.port,
                                        "postgres_database": "worktask_fault", "backup_dir": folder / "backups"})
        st = SimpleNamespace(env=env, redis=red, pg=pg, settings=s, folder=folder, worker=worker)
        try:
            wait_for_worker(st)
        except AssertionError as err:
            raise AssertionError(f"{err}; its log ends: {(folder / 'worker.log').read_text()[-3000:]}") from None
        for args in (("migrate",), ("seed",)):
            proc = run_cli(*args, env=env, timeout=300)
            assert proc.returncode == 0, proc.stderr
        make_data(s)
        yield st
    finally:
        worker = st.worker if st is not None else worker
        if worker is not None:
            worker.terminate()
            try:
                worker.wait(30)
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait(30)
        red.stop()
        pg.stop()
        shutil.rmtree(folder, ignore_errors=True)


def start_worker(env: dict[str, str], folder: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "worker", "worker", "-Q", "control,bulk", "-c", "2",
         "-n", f"faultsvc-{os.getpid()}@%h", "--loglevel", "INFO"],
        env={**os.environ, **env}, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=open(folder / "worker.log", "ab"))


def revive_worker(own: Any) -> str:
    """Start the worker again after a broker fault, as its supervisor (with a liveness probe) would; "died" when it
    had. Celery 5.7 / kombu 5.7 on Redis can kill the worker when Redis restarts (restore_unacked on a closed
    channel: "'NoneType' object has no attribute 'hostname'") or leave it connected but consuming nothing
    (celery/celery#10205, #8030), which no setting of this project prevents and a ping does not show: so it is
    restarted either way (as the README asks of the workers' supervisor), not first asked."""
    if own.worker.poll() is not None:
        own.worker = start_worker(own.env, own.folder)
        return "died"
    restart_worker(own)
    return ""


def restart_worker(own: Any) -> None:
    own.worker.terminate()
    try:
        own.worker.wait(30)
    except subprocess.TimeoutExpired:
        own.worker.kill()
        own.worker.wait(30)
    own.worker = start_worker(own.env, own.folder)


PING = ("from worker.app import app; from worker import workers; "
        "print(any(n.startswith('faultsvc-') for n in workers.live_workers(app)))")


def wait_for_worker(own: Any, bound: float = 90) -> None:
    """The own worker consumes both queues on the own broker (after a restart it reconnects with a back-off).
    Asked from a process of its own: Celery takes CELERY_BROKER_URL from the environment first."""
    def answers() -> bool:
        proc = subprocess.run([sys.executable, "-c", PING], env={**os.environ, **own.env}, cwd=ROOT,
                              capture_output=True, text=True, timeout=60)
        return proc.stdout.strip() == "True"
    until("the test's worker answers on its broker", answers, bound, every=0.5)


def start_cli(own: Any, *args: str, **env: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "worker.cli", *args], env={**os.environ, **own.env, **env},
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def job_running(own: Any, kind: str, chunks_done: int = 0,
                states: tuple[str, ...] = ("running",)) -> dict[str, str] | None:
    r = own.redis.client()
    for key in r.scan_iter(KEY, count=1000):
        if key.count(":") != 2:
            continue
        rec = r.hgetall(key)
        if rec.get("kind") == kind and rec.get("state") in states and \
                int(rec.get("chunks_done") or 0) >= chunks_done:
            return {"job_id": key.split(":")[-1], **rec}
    return None


def listed(own: Any) -> dict[str, str]:
    code, rows = cli_json("backup", "list", env=own.env)
    assert code == 0
    return {b["backup_id"]: b["state"] for b in rows}


def one_complete_backup(own: Any) -> str:
    code, report = cli_json("backup", "--chunk-rows", "1000", env=own.env, timeout=300)
    assert code == 0 and report["ok"], report
    return report["backup_id"]


class Hold:
    """Holds a job still mid-run, from the test: a PostgreSQL lock one of its tasks waits for, or a FIFO where it
    reads a chunk or a manifest (it blocks until the test writes). `waits()` says whether a task of the job is
    held right now; `release()` lets it go (the FIFO gets the bytes it held)."""

    def __init__(self, own: Any, how: str) -> None:
        self.own, self.how, self.fd, self.saved, self.path = own, how, None, b"", None
        self.probe = psycopg.connect(**self.pg(), autocommit=True)
        self.conn = None
        if how.startswith("lock:"):
            self.conn = psycopg.connect(**self.pg())
            self.conn.execute(psycopg.sql.SQL("lock table {} in access exclusive mode").format(
                psycopg.sql.Identifier(how[5:])))
        elif how.startswith("fifo:"):  # fifo:<a chunk key of the backup> | fifo:manifest (a backup of its own)
            root = own.settings.backup_folder
            if how == "fifo:manifest":  # cleanup reads every manifest: this one blocks it
                self.path = root / "backups" / jobs.new_job_id("backup") / "manifest.json"
                self.path.parent.mkdir(parents=True)
                self.saved = b"{}"
            else:
                self.path = root / how[5:]
                self.saved = self.path.read_bytes()
                self.path.unlink()
            os.mkfifo(self.path)

    def pg(self) -> dict[str, Any]:
        return {"host": "127.0.0.1", "port": self.own.pg.port, "user": "postgres", "dbname": "worktask_fault"}

    def waits(self) -> bool:
        if self.how.startswith("lock:"):
            return self.probe.execute("select count(*) from pg_stat_activity where %s = any(pg_blocking_pids(pid))",
                                      (self.conn.info.backend_pid,)).fetchone()[0] > 0
        if self.fd is None:  # a writer can open a FIFO without blocking only while a reader has it open
            try:
                self.fd = os.open(self.path, os.O_WRONLY | os.O_NONBLOCK)
            except OSError as err:
                assert err.errno == errno.ENXIO, err
                return False
        return True

    def release(self) -> None:
        if self.conn is not None:
            self.conn.close()  # its transaction, its locks: gone
        if self.path is not None:
            if self.fd is None:
                try:
                    self.fd = os.open(self.path, os.O_WRONLY | os.O_NONBLOCK)
                except OSError:
                    pass
            if self.fd is not None:  # the bytes it waits for (bounded: a reader that went away takes no more)
                data, deadline = memoryview(self.saved), time.monotonic() + 30
                while data and time.monotonic() < deadline:
                    try:
                        data = data[os.write(self.fd, data):]
                    except BlockingIOError:
                        time.sleep(0.05)
                    except BrokenPipeError:
                        break
                os.close(self.fd)
            self.path.unlink()
            if self.how == "fifo:manifest":
                shutil.rmtree(self.path.parent, ignore_errors=True)
            else:
                self.path.write_bytes(self.saved)
            self.path = None
        self.probe.close()


CHUNK = "fifo:{chunk}"  # work_tasks' first chunk of the backup the case runs on
BROKER_CASES = {  # kind: (CLI arguments, extra environment, how the job is held mid-run)
    "backup": (("backup", "--chunk-rows", "1000"), {"BACKUP_RATE_LIMIT": "40000"}, ""),  # held by its rate limit
    "backup_validate": (("backup", "validate", "{backup}"), {}, CHUNK),
    "restore": (("restore", "{backup}", "--tables", "todo_items,work_tasks"), {}, CHUNK),
    "backup_verify": (("backup", "verify", "{backup}", "--restore-test"), {}, CHUNK),  # the drill
    "validate": (("validate",), {}, "lock:quality_standards"),
    "migrate": (("migrate",), {}, "lock:alembic_version"),  # reading its revision
    "testdata_generate": (("testdata", "generate", "20", "--no-files"), {}, "lock:quality_standards"),
    "seed": (("seed",), {}, "lock:quality_standards"),
    "init": (("init",), {}, "lock:quality_standards"),  # at its seed step
    "maintenance": (("maintenance",), {}, "lock:quality_standards"),  # at its validate step
    "backup_cleanup": (("backup", "cleanup"), {}, "fifo:manifest"),
}


def shared_backup(own: Any) -> str:
    """One complete backup the cases that read one share (each puts back what it held)."""
    if not getattr(own, "backup_id", None):
        own.backup_id = one_complete_backup(own)
    return own.backup_id


# the restores first: they restore the shared backup over data the later kinds (testdata, init) add to
BROKER_FAULTS = [("backup", "restart"), ("backup", "flush"), ("restore", "restart"), ("restore", "flush")] + \
    [(kind, "restart") for kind in BROKER_CASES if kind not in ("backup", "restore")] + \
    [("validate", "down")]  # Redis gone longer than the CLI waits for it (30 s)


@pytest.mark.parametrize("kind,fault", BROKER_FAULTS)  # a flush costs the same as a restart: two of them
def test_losing_redis_during_a_job_ends_the_wait_naming_redis_and_the_next_run_succeeds(own: Any, kind: str,
                                                                                        fault: str) -> None:
    args, extra, how = BROKER_CASES[kind]
    backup_id = shared_backup(own) if "{backup}" in " ".join(args) else ""
    args = tuple(a.format(backup=backup_id) for a in args)
    if how == CHUNK:
        manifest = manifest_of(own.settings, backup_id)
        how = how.format(chunk=next(t for t in manifest["tables"] if t["name"] == "work_tasks")["chunks"][0]["key"])
    before = listed(own)
    hold = Hold(own, how) if how else None
    proc = start_cli(own, *args, **extra)
    try:
        # mid-run when Redis goes: its record says running and one of its tasks is held (the backup: a chunk done
        # and the rest read at 40 kB/s)
        job = until(f"the {kind} job seen running", lambda: job_running(own, kind, 0 if hold else 1), 120,
                    every=0.05)
        if hold:
            until(f"a task of the {kind} job held ({how})", hold.waits, 60, every=0.05)
            assert job_running(own, kind), f"the {kind} job ended although held"
        began = time.monotonic()
        if fault == "restart":
            own.redis.restart()
        elif fault == "flush":
            own.redis.client().flushall()
        else:
            own.redis.stop()
        out, err = proc.communicate(timeout=60)  # never the job's own bound (JOB_TIMEOUT=600 here)
        waited = time.monotonic() - began
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        if fault == "down":
            own.redis.start()
        if hold:
            hold.release()
    last = err.strip().splitlines()[-1]
    assert "Traceback" not in err and last.startswith("error: "), (proc.returncode, err)
    assert job["job_id"] in last and f"Redis at 127.0.0.1:{own.redis.port}/0" in last, err
    if fault == "down":  # the CLI gave it jobs.REDIS_RETURN_S, then said so: exit 3, the outcome unknown
        assert jobs.REDIS_RETURN_S <= waited < jobs.REDIS_RETURN_S + 15, waited
        assert proc.returncode == 3 and "lost Redis" in last and f"worktask jobs show {job['job_id']}" in last, err
    else:  # Redis came back at once, without the job (it was held, it cannot have ended): lost, exit 1
        assert waited < 15, waited
        assert proc.returncode == 1 and "gone from Redis" in last and "run it again" in last, (proc.returncode, err)
    print(f"{kind}/{fault}: exit {proc.returncode} after {waited:.1f} s: {last}")  # shown by pytest -rP
    after = listed(own)
    for bid, state in after.items():  # a backup without its manifest is never listed complete
        if bid not in before and state == "complete":
            assert (own.settings.backup_folder / "backups" / bid / "manifest.json").exists()
    if kind == "backup":
        assert after[job["job_id"]] != "complete"
    time.sleep(1)  # a worker the restart kills has died by now
    began = time.monotonic()
    if what := revive_worker(own):
        print(f"{kind}/{fault}: the worker {what} after the fault and was started again")  # shown by pytest -rP
    wait_for_worker(own)
    print(f"{kind}/{fault}: the worker answers again after {time.monotonic() - began:.1f} s")
    proc = run_cli(*args, env=own.env, timeout=300)  # the next run succeeds
    if proc.returncode == 3 and "while sending job" in proc.stderr:  # kombu's send right after the restart
        print(f"{kind}/{fault}: the next run could not send its job ({proc.stderr.strip()}); run again")
        proc = run_cli(*args, env=own.env, timeout=300)
    assert proc.returncode == 0, proc.stderr


# PostgreSQL ------------------------------------------------------------------------------------------------------

def assert_exact(settings: Any, backup_id: str) -> None:
    """Every PostgreSQL table of the backup decodes to exactly the rows the table holds (nothing changed them)."""
    manifest = manifest_of(settings, backup_id)
    for t in manifest["tables"]:
        if t["store"] == "postgres":
            assert sorted(decode(settings, manifest, t["name"])) == \
                sorted(table_copy(settings, t["name"], [c["name"] for c in t["columns"]])), t["name"]


def test_a_chunk_whose_connection_is_killed_mid_copy_is_retried_and_the_backup_is_exact(data: Any) -> None:  # noqa: F811
    # a table of wide rows: its chunks (~4 MB each) outgrow the socket buffers, so the server is still sending,
    # its COPY active, while the rate-limited chunk reads; dropped at the end
    with pg_connect(data, autocommit=True) as pg:
        pg.execute("create table fault_wide (id int primary key, body text not null)")
        pg.execute("insert into fault_wide select g, repeat(md5(g::text), 64) from generate_series(1, 4000) g")
        pg.execute("analyze fault_wide")
    try:
        s = data.model_copy(update={"backup_rate_limit": 2_000_000})
        job_id = commands.backup(s, True, True, 1000)
        with pg_connect(data, autocommit=True) as pg:
            victim = until("fault_wide's COPY seen running", lambda: pg.execute(
                """select pid, state from pg_stat_activity where datname = current_database()
                   and application_name = 'worktask-backup' and query ilike 'copy%fault_wide%'""").fetchone(),
                120, every=0.05)
            assert pg.execute("select pg_terminate_backend(%s)", (victim[0],)).fetchone()[0], victim
        report = jobs.wait(redis_client(data), job_id, timeout=300)
        assert report["ok"], report["error"]
        assert max(jobs.deliveries(redis_client(data), job_id).values()) >= 2  # the killed chunk ran again
        code, checked = cli_json("backup", "validate", job_id)
        assert code == 0 and checked["bad_chunks"] == [], checked
        assert_exact(data, job_id)
    finally:
        with pg_connect(data, autocommit=True) as pg:
            pg.execute("drop table if exists fault_wide")


def test_a_restore_load_whose_connection_is_killed_mid_copy_is_retried_and_the_restore_is_exact(
        data: Any, tmp_path: Path) -> None:  # noqa: F811
    """A FIFO in place of the chunk feeds the load's COPY half of the chunk: the COPY is active, waiting for the
    rest, when its session is terminated; the chunk is put back whole, the rest fed; the load runs again (its
    transaction and ledger row rolled back with the session) and the table is exactly the backup's."""
    with pg_connect(data, autocommit=True) as pg:
        pg.execute("create table fault_wide (id int primary key, body text not null)")
        pg.execute("insert into fault_wide select g, repeat(md5(g::text), 64) from generate_series(1, 4000) g")
    try:
        done = backup(data)
        assert done["ok"], done["error"]
        backed_up = sorted(table_copy(data, "fault_wide", ["id", "body"]))
        with pg_connect(data, autocommit=True) as pg:
            pg.execute("update fault_wide set body = 'scrambled' where id % 7 = 0")
        key = next(t for t in manifest_of(data, done["backup_id"])["tables"] if t["name"] == "fault_wide")
        path = Path(backups.store_options(data)["backup_dir"], key["chunks"][0]["key"])
        whole = path.read_bytes()
        path.unlink()
        os.mkfifo(path)
        fd = None
        try:
            job_id = commands.restore(data, done["backup_id"], ["fault_wide"], False, False, False)

            def opened() -> int | None:
                try:
                    return os.open(path, os.O_WRONLY | os.O_NONBLOCK)
                except OSError as err:
                    assert err.errno == errno.ENXIO, err
                    return None
            fd = until("the load opening the chunk", opened, 120, every=0.05)
            feed(fd, whole[:len(whole) // 2])
            with pg_connect(data, autocommit=True) as pg:
                # the held load's COPY, not another chunk's (those are over in a moment): waiting a second for data
                victim = until("the load's COPY seen waiting for the rest of the chunk", lambda: pg.execute(
                    """select pid from pg_stat_activity where datname = current_database() and state = 'active'
                       and query ilike 'copy%%fault_wide%%' and wait_event = 'ClientRead'
                       and now() - query_start > interval '1 second'""").fetchone(), 60, every=0.05)
                path.unlink()  # the next delivery reads the chunk whole
                (tmp_path / "chunk").write_bytes(whole)
                os.replace(tmp_path / "chunk", path)
                assert pg.execute("select pg_terminate_backend(%s)", (victim[0],)).fetchone()[0], victim
            feed(fd, whole[len(whole) // 2:])
            os.close(fd)
            fd = None
            report = jobs.wait(redis_client(data), job_id, timeout=300)
        finally:
            if fd is not None:
                os.close(fd)
            if not path.is_file():
                path.unlink(missing_ok=True)
                path.write_bytes(whole)
        assert report["ok"], report["error"]
        assert max(jobs.deliveries(redis_client(data), job_id).values()) >= 2  # the killed load ran again
        assert sorted(table_copy(data, "fault_wide", ["id", "body"])) == backed_up
    finally:
        with pg_connect(data, autocommit=True) as pg:
            pg.execute("drop table if exists fault_wide")


def feed(fd: int, data: bytes, bound: float = 60) -> None:
    """Write to a FIFO opened without blocking; a reader that went away takes the rest."""
    view, deadline = memoryview(data), time.monotonic() + bound
    while view:
        assert time.monotonic() < deadline, "the reader did not take the chunk"
        try:
            view = view[os.write(fd, view):]
        except BlockingIOError:
            time.sleep(0.01)
        except BrokenPipeError:
            return


@pytest.mark.parametrize("setting,value", [
    ("statement_timeout", "1ms"),
    ("lock_timeout", "1ms"),
    ("idle_in_transaction_session_timeout", "200ms"),
])
def test_a_backup_under_the_databases_tight_timeouts_completes_exactly(data: Any, setting: str,  # noqa: F811
                                                                        value: str) -> None:
    """The database's defaults do not bound a backup: a chunk's COPY sets statement_timeout and
    idle_in_transaction_session_timeout to 0 (a long COPY read at the rate limit is neither), the snapshot holder
    its idle timeout to 0, and every lock wait of the backup is bounded by BACKUP_LOCK_TIMEOUT, not lock_timeout:
    with lock_timeout at 1 ms, a table another session holds locked for 2 s as the backup starts is waited for."""
    admin = psycopg.connect(**pg_params(data), autocommit=True)
    ident = psycopg.sql.Identifier(data.postgres_database)
    blocked = []
    try:
        admin.execute("set statement_timeout = 0")
        admin.execute(psycopg.sql.SQL("alter database {} set {} = {}").format(
            ident, psycopg.sql.Identifier(setting), psycopg.sql.Literal(value)))
        s = data.model_copy(update={"backup_rate_limit": 400_000})
        if setting != "lock_timeout":
            report = backup(s)
        else:
            with psycopg.connect(**pg_params(data)) as locker:
                locker.execute("set lock_timeout = 0")
                locker.execute("lock table services in access exclusive mode")
                job_id = commands.backup(s, s.compression_enabled, s.encryption_enabled, 1000)
                blocked = until("the backup waiting for the lock on services", lambda: admin.execute(
                    "select pid from pg_stat_activity where %s = any(pg_blocking_pids(pid))",
                    (locker.info.backend_pid,)).fetchall(), 60, every=0.05)
                time.sleep(2)  # 2000 times its lock_timeout
            report = jobs.wait(redis_client(data), job_id, timeout=300)
    finally:
        admin.execute(psycopg.sql.SQL("alter database {} reset {}").format(ident, psycopg.sql.Identifier(setting)))
        admin.close()
    assert report["ok"], report["error"]
    assert {b["backup_id"]: b["state"] for b in commands.backup_list(data)}[report["job_id"]] == "complete"
    assert_exact(data, report["job_id"])
    assert setting != "lock_timeout" or blocked


@pytest.fixture()
def full_disk(tmp_path: Path) -> Iterator[Path]:
    folder = tmp_path / "full"
    folder.mkdir()
    yield folder
    if os.path.ismount(folder):
        subprocess.run(["umount", "-l", str(folder)], check=False, timeout=60)


def test_a_full_backup_disk_fails_the_backup_naming_it_and_the_next_one_succeeds(data: Any, full_disk: Path,  # noqa: F811
                                                                                 tmp_path: Path) -> None:
    roomy = data.model_copy(update={"backup_dir": tmp_path / "roomy"})
    size = backup(roomy)["totals"]["bytes_stored"]
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={max(size // 3, 16384)}", "tmpfs", str(full_disk)],
                             capture_output=True, text=True, timeout=60)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.strip()}")
    full = data.model_copy(update={"backup_dir": full_disk})
    report = backup(full)
    assert not report["ok"], report
    assert "No space left" in report["error"] or "disk" in report["error"].lower(), report["error"]
    assert not (full_disk / "backups" / report["job_id"] / "manifest.json").exists()
    # a backup that failed is listed so, or has nothing left (its release runs right after the job is failed:
    # the waiter can wake in between, so give it a few seconds)
    until("the failed backup listed failed, or nothing of it left", lambda: not any(
        b["backup_id"] == report["job_id"] and b["state"] != "failed" for b in commands.backup_list(full)), 10)
    assert not (full_disk / "backups" / report["job_id"] / "manifest.json").exists()
    again = backup(roomy)
    assert again["ok"], again
    assert_exact(roomy, again["backup_id"])


def test_restarting_postgresql_during_a_backup_gives_a_fresh_snapshot_or_a_clean_failure(own: Any) -> None:
    proc = start_cli(own, "backup", "--chunk-rows", "1000", "--json", BACKUP_RATE_LIMIT="40000")
    try:
        until("the backup seen running", lambda: job_running(own, "backup", 1), 120, every=0.05)
        own.pg.restart()
        out, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    report = json.loads(out)
    states = listed(own)
    if report["ok"]:
        assert proc.returncode == 0 and states[report["backup_id"]] == "complete"
        code, checked = cli_json("backup", "validate", report["backup_id"], env=own.env)
        assert code == 0 and checked["bad_chunks"] == [], checked
        assert_exact(own.settings, report["backup_id"])
    else:
        assert proc.returncode == 1 and len(report["error"].splitlines()) == 1, report
        assert states.get(report["job_id"]) != "complete"
        assert not (own.settings.backup_folder / "backups" / report["job_id"] / "manifest.json").exists()
    assert one_complete_backup(own)
