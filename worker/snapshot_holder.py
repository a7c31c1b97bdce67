"""The snapshot holder's process: lock the backup's tables, export one snapshot, keep it until released.

Run as a script by path (`python worker/snapshot_holder.py`), not as `-m worker.snapshot_holder`: it
imports only psycopg and redis, never the `worker` package (Celery, pydantic settings, boto3), so it
starts in about a quarter of a second and the backup's planning waits for it that long (worker/snapshot.py
starts it and documents its life). What it needs comes as one JSON object on stdin, never in argv or the
environment: the libpq parameters (the password among them, resolved by the parent from POSTGRES_* or
Secrets Manager), the Redis URL, its two keys (named by worker/jobs.py), its bounds.

A snapshot does not protect against TRUNCATE or a table-rewriting ALTER TABLE (they are not MVCC-safe:
a reader that imports an older snapshot afterwards sees the new, empty relation). So, as pg_dump does,
the holder takes ACCESS SHARE on every table it will back up, in the transaction that exports the
snapshot and before the snapshot is taken, and keeps the locks until the backup ends.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

import psycopg
import redis
from psycopg import sql

HEARTBEAT_TTL = 30
LEASE_POLL = 0.25  # seconds between looks at the lease
HEARTBEAT_EVERY = 8  # looks between checks of the session and renewals of the hash (2 s)
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

# Who holds (or queues for) the ACCESS EXCLUSIVE lock on a table that a backup's lock waits behind.
BLOCKERS_SQL = """
    select a.pid, coalesce(nullif(a.application_name, ''), '-'), a.state, left(a.query, 80), l.granted
    from pg_locks l join pg_stat_activity a on a.pid = l.pid
    where l.locktype = 'relation' and l.mode = 'AccessExclusiveLock'
      and l.relation = to_regclass('public.' || quote_ident({param})) and a.pid <> pg_backend_pid()
    order by not l.granted, a.pid"""


class _Locked(Exception):
    """A table could not be locked within the lock timeout (the message names it and who holds it). Private:
    this script imports nothing of the package (its error tree included); the parent raises JobFailed with
    the message it leaves in Redis."""


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
    as LOCK does not take one): every table in the snapshot is safe from TRUNCATE and rewrites, and the
    tables locked are exactly the tables of the snapshot."""
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
            raise _Locked(locked_out(current, lock_timeout, blockers(conn, current))) from None
        # The listing above ran before the locks, outside the snapshot: a table that a migration (or anyone)
        # created and committed while a lock waited for it is in the snapshot but not in the list, and the
        # backup would hold the new schema's migration head without that table's rows. List again through the
        # snapshot (this query takes it: LOCK does not); if the tables differ, let go and start over.
        if [row[0] for row in conn.execute(TABLES_SQL, (list(SKIP_TABLES), REPLACEMENT_MARKER + "%"))] != tables:
            conn.rollback()
            continue
        snap = conn.execute("select pg_export_snapshot()").fetchone()[0]
        return snap, tables
    raise _Locked(f"tables kept being created or dropped while the backup locked them ({LIST_TRIES} tries)")


def hold(spec: dict[str, Any]) -> None:
    """spec: pg (libpq keywords), redis_url, hold_key, lease_key, max_seconds, lock_timeout, job_id."""
    r = redis.Redis.from_url(spec["redis_url"], socket_connect_timeout=3, socket_timeout=10, decode_responses=True)
    hold_key, lease_key = spec["hold_key"], spec["lease_key"]
    params: dict[str, Any] = {**spec["pg"], "application_name": f"worktask-snapshot {spec['job_id']}"[:63]}
    if not str(params["host"]).startswith("/"):
        params |= {"keepalives": 1, "keepalives_idle": 30, "keepalives_interval": 10, "keepalives_count": 3}
    try:
        conn = psycopg.connect(**params)
        # its own bounds (lock_timeout below, max_seconds, the lease), not the database's defaults: a holder waits
        # idle in its transaction by design, and a tight statement_timeout must not cancel its locks or listing
        conn.execute("set idle_in_transaction_session_timeout = 0")
        conn.execute("set statement_timeout = 0")
        conn.commit()
        snap, tables = lock_and_export(conn, spec["lock_timeout"])
    except _Locked as err:
        r.hset(hold_key, "lock_error", str(err))
        r.expire(hold_key, 600)
        return
    except psycopg.Error as err:
        r.hset(hold_key, "error", str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__)
        r.expire(hold_key, 600)
        return
    with r.pipeline() as p:  # never a key without its expiry: a holder killed now leaves nothing behind
        p.hset(hold_key, mapping={"snapshot": snap, "tables": json.dumps(tables), "pid": os.getpid(),
                                  "since": time.time()})
        p.expire(hold_key, HEARTBEAT_TTL)
        p.execute()
    deadline = time.monotonic() + spec["max_seconds"]
    last_ok, beat = time.monotonic(), 0
    try:
        while time.monotonic() < deadline:
            try:  # the lease every LEASE_POLL s (its release lets the tables go at once), the rest every 2 s
                if not r.exists(lease_key):
                    break
                beat += 1
                if beat % HEARTBEAT_EVERY == 0:
                    conn.execute("select 1")  # the session (and so the snapshot) is still there
                    r.expire(hold_key, HEARTBEAT_TTL)
                last_ok = time.monotonic()
            except redis.RedisError:
                if time.monotonic() - last_ok > HEARTBEAT_TTL / 2:
                    break
            except psycopg.Error:  # terminated: say so at once, chunks will start the backup over
                break
            time.sleep(LEASE_POLL)
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
    hold(json.loads(sys.stdin.readline()))
