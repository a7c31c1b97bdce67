"""The snapshot holder: a small process of its own that exports one PostgreSQL snapshot for a backup and
keeps its transaction open until the backup releases it (DESIGN §12).

It lives outside the Celery pool (no pool slot, no redelivery), under a Redis lease: it exits when the
lease is deleted (finalize or failure), when the lease expires, at a hard maximum lifetime, or when
Redis stops answering. While it holds the snapshot, VACUUM cannot remove rows deleted after it began:
SNAPSHOT_MAX_LIFETIME bounds that cost.

    python -m worker.snapshot JOB_ID GENERATION MAX_SECONDS
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from typing import Any

import psycopg
import redis

from worker.constants import KEY_PREFIX
from worker.errors import ServiceUnavailable

# One pair of keys per generation of a backup (a restart takes a fresh snapshot under new keys, so an
# old holder sees its own lease go and cannot touch the new one's keys).
HOLD_KEY = KEY_PREFIX + "job:{job_id}:snapshot:{gen}"  # hash: snapshot, pid, since | error; TTL = heartbeat
LEASE_KEY = KEY_PREFIX + "job:{job_id}:snapshot-lease:{gen}"  # exists while the backup wants the snapshot
HEARTBEAT_TTL = 30


def start_holder(r: redis.Redis, job_id: str, gen: int, max_seconds: int, wait: float = 30.0) -> str:
    """Spawn the holder and return the exported snapshot id; ServiceUnavailable if it does not come."""
    hold_key = HOLD_KEY.format(job_id=job_id, gen=gen)
    r.delete(hold_key)
    r.set(LEASE_KEY.format(job_id=job_id, gen=gen), "1", ex=max_seconds)
    proc = subprocess.Popen([sys.executable, "-m", "worker.snapshot", job_id, str(gen), str(max_seconds)],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True, env=dict(os.environ))
    threading.Thread(target=proc.wait, name=f"reap-holder-{job_id}", daemon=True).start()  # no zombie
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        held = r.hgetall(hold_key)
        if held.get("snapshot"):
            return held["snapshot"]
        if held.get("error"):
            raise ServiceUnavailable(f"snapshot holder: {held['error']}")
        if proc.poll() is not None:
            raise ServiceUnavailable(f"snapshot holder exited with code {proc.returncode} before exporting")
        time.sleep(0.1)
    proc.kill()
    raise ServiceUnavailable(f"snapshot holder did not export a snapshot within {wait:.0f} s")


def snapshot_id(r: redis.Redis, job_id: str, gen: int) -> str | None:
    return r.hget(HOLD_KEY.format(job_id=job_id, gen=gen), "snapshot")


def release(r: redis.Redis, job_id: str, gen: int) -> None:
    r.delete(LEASE_KEY.format(job_id=job_id, gen=gen))


def hold(job_id: str, gen: int, max_seconds: int) -> None:
    from worker.connections import pg_params, redis_client
    from worker.settings import get_settings

    settings = get_settings()
    r = redis_client(settings)
    hold_key, lease_key = HOLD_KEY.format(job_id=job_id, gen=gen), LEASE_KEY.format(job_id=job_id, gen=gen)
    params: dict[str, Any] = {**pg_params(settings), "application_name": f"worktask-snapshot {job_id}"[:63]}
    if not str(params["host"]).startswith("/"):
        params |= {"keepalives": 1, "keepalives_idle": 30, "keepalives_interval": 10, "keepalives_count": 3}
    try:
        conn = psycopg.connect(**params)
        conn.execute("set idle_in_transaction_session_timeout = 0")
        conn.commit()
        conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        conn.read_only = True
        snap = conn.execute("select pg_export_snapshot()").fetchone()[0]
    except psycopg.Error as err:
        r.hset(hold_key, "error", str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__)
        r.expire(hold_key, 600)
        return
    r.hset(hold_key, mapping={"snapshot": snap, "pid": os.getpid(), "since": time.time()})
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
    hold(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
