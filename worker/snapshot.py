"""The snapshot holder seen from the backup: start it, read its snapshot, release it (DESIGN §12).

The holder (worker/snapshot_holder.py, a small process of its own) locks the backup's tables in ACCESS
SHARE mode, exports one PostgreSQL snapshot and keeps its transaction open until the backup releases it,
so TRUNCATE and table-rewriting DDL wait for the backup (or time out on their side), as with pg_dump. A
table it cannot lock within BACKUP_LOCK_TIMEOUT fails the backup, naming the table and the session that
holds it.

It lives outside the Celery pool (no pool slot, no redelivery), under a Redis lease: it exits when the
lease is deleted (finalize or failure), when the lease expires, at a hard maximum lifetime, or when
Redis stops answering. While it holds the snapshot, VACUUM cannot remove rows deleted after it began:
SNAPSHOT_MAX_LIFETIME bounds that cost.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import redis

from worker import jobs
from worker.errors import JobFailed, LockTimeout, ServiceUnavailable  # noqa: F401 - LockTimeout: its old import path
from worker.settings import Settings
from worker.snapshot_holder import (  # noqa: F401 - re-exported: the backup's chunks name blockers the same way
    BLOCKERS_SQL,
    LIST_TRIES,
    blockers,
    describe_blockers,
    locked_out,
)

HOLDER = Path(__file__).with_name("snapshot_holder.py")


def start_holder(r: redis.Redis, settings: Settings, job_id: str, gen: int, max_seconds: int, lock_timeout: float,
                 wait: float = 30.0) -> tuple[str, list[str]]:
    """Spawn the holder; return the exported snapshot id and the tables it locked. JobFailed when a table
    cannot be locked in time, ServiceUnavailable when the holder does not come."""
    from worker.connections import pg_params, redis_url

    hold_key, lease_key = jobs.snapshot_keys(job_id, gen)
    r.delete(hold_key)
    r.set(lease_key, "1", ex=max_seconds)
    wait += lock_timeout * LIST_TRIES
    spec = {"pg": pg_params(settings), "redis_url": redis_url(settings.result_backend), "hold_key": hold_key,
            "lease_key": lease_key, "max_seconds": max_seconds, "lock_timeout": lock_timeout, "job_id": job_id}
    # -P: the script's folder (worker/) is not put first on sys.path, so no module of ours shadows a library's
    proc = subprocess.Popen([sys.executable, "-P", str(HOLDER)], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:  # the spec (a password among it) goes through a pipe: never in argv or the environment
        proc.stdin.write((json.dumps(spec) + "\n").encode())
        proc.stdin.close()
    except OSError:
        pass  # it died at once: poll() below says so
    threading.Thread(target=proc.wait, name=f"reap-holder-{job_id}", daemon=True).start()  # no zombie
    deadline = time.monotonic() + wait
    pause = 0.01
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
        time.sleep(pause)
        pause = min(pause * 2, 0.1)
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
