"""The snapshot holder: a small process of its own that locks the backup's tables, exports one PostgreSQL
snapshot and keeps its transaction open until the backup releases it (DESIGN §12).

A snapshot does not protect against TRUNCATE or a table-rewriting ALTER TABLE (they are not MVCC-safe:
a reader that imports an older snapshot afterwards sees the new, empty relation). So, as pg_dump does,
the holder takes ACCESS SHARE on every table it will back up, in the transaction that exports the
snapshot and before the snapshot is taken, and keeps the locks until the backup ends: such DDL waits
for the backup (or times out on its own side). A table it cannot lock within BACKUP_LOCK_TIMEOUT fails
the backup, naming the table and the session that holds it.

It lives outside the Celery pool (no pool slot, no redelivery), under a Redis lease: it exits when the
lease is deleted (finalize or failure), when the lease expires, at a hard maximum lifetime, or when
Redis stops answering. While it holds the snapshot, VACUUM cannot remove rows deleted after it began:
SNAPSHOT_MAX_LIFETIME bounds that cost.

    python -m worker.snapshot JOB_ID GENERATION MAX_SECONDS LOCK_TIMEOUT_SECONDS
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from typing import Any

import psycopg
import redis
from psycopg import sql

from worker import jobs
from worker.errors import JobFailed, LockTimeout, ServiceUnavailable

# One pair of keys per generation of a backup, named by worker/jobs.py (a restart takes a fresh snapshot
# under new keys, so an old holder sees its own lease go and cannot touch the new one's keys).
HEARTBEAT_TTL = 30
# A restore's replacement tables carry this comment (worker/swap_replacement.py MARKER): never backed up, never locked.
REPLACEMENT_MARKER = "worktask:restore:"
SKIP_TABLES = ("alembic_version", "worktask_migrations")
LIST_TRIES = 3  # a table dropped between listing and locking: list again

# The tables a backup holds: plain tables and leaf partitions of the public schema (a partitioned parent
# holds no rows of its own), neither the migration bookkeeping nor a restore's replacement tables.
TABLES_SQL = """
    select c.relname from pg_class c join pg_namespace n on n.oid = c.relnamespace
    where n.nspname = 'public' and c.relkind = 'r' and not (c.relname = any(%s))
      and coalesce(obj_description(c.oid, 'pg_class'), '') not like %s
    order by c.relname"""


def start_holder(r: redis.Redis, job_id: str, gen: int, max_seconds: int, lock_timeout: float,
                 wait: float = 30.0) -> tuple[str, list[str]]:
    """Spawn the holder; return the exported snapshot id and the tables it locked. JobFailed when a table
    cannot be locked in time, ServiceUnavailable when the holder does not come."""
    hold_key, lease_key = jobs.snapshot_keys(job_id, gen)
    r.delete(hold_key)
    r.set(lease_key, "1", ex=max_seconds)
    wait += lock_timeout * LIST_TRIES
    proc = subprocess.Popen([sys.executable, "-m", "worker.snapshot", job_id, str(gen), str(max_seconds),
                             str(lock_timeout)],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True, env=dict(os.environ))
    threading.Thread(target=proc.wait, name=f"reap-holder-{job_id}", daemon=True).start()  # no zombie
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        held = r.hgetall(hold_key)
        if held.get("snapshot"):
            return held["snapshot"], json.loads(held["tables"])
        if held.get("lock_error"):
            raise JobFailed(held["lock_error"])
        if held.get("error"):
            raise ServiceUnavailable(f"snapshot holder: {held['error']}")
        if proc.poll() is not None:
            raise ServiceUnavailable(f"snapshot holder exited with code {proc.returncode} before exporting")
        time.sleep(0.1)
    proc.kill()
    raise ServiceUnavailable(f"snapshot holder did not export a snapshot within {wait:.0f} s")


SNAPSHOT_ID = re.compile(r"[0-9A-F]+-[0-9A-F]+-[0-9]+")  # what pg_export_snapshot() returns


def check_id(snap: str) -> str:
    """A snapshot id fit to be spelled into SET TRANSACTION SNAPSHOT (which takes no parameter)."""
    if not SNAPSHOT_ID.fullmatch(snap):
        raise ValueError(f"not a snapshot id: {snap!r}")
    return snap


def snapshot_id(r: redis.Redis, job_id: str, gen: int) -> str | None:
    return r.hget(jobs.snapshot_keys(job_id, gen)[0], "snapshot")


def release(r: redis.Redis, job_id: str, gen: int) -> None:
    r.delete(jobs.snapshot_keys(job_id, gen)[1])


def running_backups(r: redis.Redis) -> list[str]:
    """Ids of the backups whose holder is alive and holds its snapshot and table locks now."""
    out = set()
    for key in r.scan_iter(match=jobs.SNAPSHOT_LEASES, count=1000):
        job_id, gen = jobs.job_of_lease(key)
        if r.hget(jobs.snapshot_keys(job_id, gen)[0], "snapshot"):  # a dead holder's key expires in 30 s
            out.add(job_id)
    return sorted(out)


def refuse_during_backup(r: redis.Redis, what: str) -> None:
    """Restores and migrations change tables a running backup has locked: they wait for it to end."""
    busy = running_backups(r)
    if busy:
        raise JobFailed(f"backup job {busy[0]} is running and holds its tables until it ends; run the {what} "
                        f"after it (worktask jobs show {busy[0]})")


# Who holds (or queues for) the ACCESS EXCLUSIVE lock on a table that a backup's lock waits behind.
BLOCKERS_SQL = """
    select a.pid, coalesce(nullif(a.application_name, ''), '-'), a.state, left(a.query, 80), l.granted
    from pg_locks l join pg_stat_activity a on a.pid = l.pid
    where l.locktype = 'relation' and l.mode = 'AccessExclusiveLock'
      and l.relation = to_regclass('public.' || quote_ident({param})) and a.pid <> pg_backend_pid()
    order by not l.granted, a.pid"""


def describe_blockers(rows: list[Any]) -> str:
    if not rows:
        return "by a session that has let go since"
    return "by " + "; ".join(f"pid {pid} ({app!r}, {state}, {'holding' if granted else 'queued for'} ACCESS "
                             f"EXCLUSIVE, last query {query!r})" for pid, app, state, query, granted in rows)


def blockers(conn: psycopg.Connection, table: str) -> str:
    return describe_blockers(conn.execute(BLOCKERS_SQL.format(param="%s"), (table,)).fetchall())


def locked_out(table: str, lock_timeout: float, who: str) -> str:
    """The error of a backup that could not lock or read a table in time."""
    return (f"cannot lock table {table} for the backup within {lock_timeout:g} s (BACKUP_LOCK_TIMEOUT): "
            f"it is held {who}")


def lock_and_export(conn: psycopg.Connection, lock_timeout: float) -> tuple[str, list[str]]:
    """List the tables, lock each in ACCESS SHARE mode, then export the snapshot (taken after the locks,
    as LOCK does not take one): every table in the snapshot is safe from TRUNCATE and rewrites."""
    for _attempt in range(LIST_TRIES):
        conn.autocommit = True
        tables = [row[0] for row in conn.execute(TABLES_SQL, (list(SKIP_TABLES), REPLACEMENT_MARKER + "%"))]
        conn.autocommit = False
        conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        conn.read_only = True
        conn.execute(sql.SQL("set local lock_timeout = {}").format(sql.Literal(f"{int(lock_timeout * 1000)}ms")))
        current = None
        try:
            for current in tables:
                conn.execute(sql.SQL("lock table only {} in access share mode").format(sql.Identifier(current)))
        except psycopg.errors.UndefinedTable:
            conn.rollback()
            continue  # dropped meanwhile: list again
        except psycopg.errors.LockNotAvailable:
            conn.rollback()
            conn.autocommit = True
            raise LockTimeout(locked_out(current, lock_timeout, blockers(conn, current))) from None
        snap = conn.execute("select pg_export_snapshot()").fetchone()[0]
        return snap, tables
    raise LockTimeout(f"tables kept being dropped while the backup locked them ({LIST_TRIES} tries)")


def hold(job_id: str, gen: int, max_seconds: int, lock_timeout: float) -> None:
    from worker.connections import pg_params, redis_client
    from worker.settings import get_settings

    settings = get_settings()
    r = redis_client(settings)
    hold_key, lease_key = jobs.snapshot_keys(job_id, gen)
    params: dict[str, Any] = {**pg_params(settings), "application_name": f"worktask-snapshot {job_id}"[:63]}
    if not str(params["host"]).startswith("/"):
        params |= {"keepalives": 1, "keepalives_idle": 30, "keepalives_interval": 10, "keepalives_count": 3}
    try:
        conn = psycopg.connect(**params)
        conn.execute("set idle_in_transaction_session_timeout = 0")
        conn.commit()
        snap, tables = lock_and_export(conn, lock_timeout)
    except LockTimeout as err:
        r.hset(hold_key, "lock_error", err.message)
        r.expire(hold_key, 600)
        return
    except psycopg.Error as err:
        r.hset(hold_key, "error", str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__)
        r.expire(hold_key, 600)
        return
    r.hset(hold_key, mapping={"snapshot": snap, "tables": json.dumps(tables), "pid": os.getpid(),
                              "since": time.time()})
    deadline = time.monotonic() + max_seconds
    misses = 0
    try:
        while time.monotonic() < deadline:
            try:
                if not r.exists(lease_key):
                    break
                conn.execute("select 1")  # the session (and so the snapshot) is still there
                r.expire(hold_key, HEARTBEAT_TTL)
                misses = 0
            except redis.RedisError:
                misses += 1
                if misses * 2 > HEARTBEAT_TTL:
                    break
            except psycopg.Error:  # terminated: say so at once, chunks will start the backup over
                break
            time.sleep(2)
    finally:
        try:
            conn.rollback()
            conn.close()
        except psycopg.Error:
            pass
        try:
            r.delete(hold_key)
        except redis.RedisError:
            pass


if __name__ == "__main__":
    hold(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]))
