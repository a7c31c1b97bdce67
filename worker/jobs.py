"""Jobs: one submission each, with counters in Redis readable from any process (DESIGN §7).

This module is the only code that names a job's Redis keys. The job hash `worktask:job:<id>` holds
kind, state, options, counters, the first error, the family's plan (a pydantic model) and, at the
end, the report as JSON; beside it live the job's markers (`…:marker:<name>`: work done once), the
deliveries of its tasks (`…:attempts`), the tasks whose failure was recorded (`…:failed-tasks`) and
its snapshot keys. Resource locks (one restore at a time) are owned by a job and let go by its end.

The life of a job: `create` (worker/workers.py `submit` also sends its start task) → `start` (planned
once) → `add` per chunk → `finish` with the report, or `fail` with the first error; the task base
(worker/taskbase.py) calls the family's release when its job fails, whichever task fails it (a chunk
killed at its time limit too).

Every change of the record is also published on the job's channel (`…:events`, Redis pub/sub), so that a
waiting CLI (`wait`) wakes as soon as the job moves or ends instead of polling; the record stays the truth:
a waiter reads it after each message, and at a bounded interval when none comes.
"""

from __future__ import annotations

import json
import re
import secrets
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import redis
from pydantic import BaseModel

from worker.constants import BEAT_SLOT_KEY, ID_PATTERN, JOB_TTL_SECONDS, KEY_PREFIX
from worker.errors import BadInput, JobFailed, JobTimeout, ServiceUnavailable
from worker.reports import Progress, utcnow
from worker.settings import parse_crontab

JOB_KEY = KEY_PREFIX + "job:{job_id}"  # hash: kind, state, options, counters, plan, error, report
LOCK_KEY = KEY_PREFIX + "lock:{resource}"  # the id of the job holding the resource
INDEX_KEY = KEY_PREFIX + "jobs:index"  # sorted set: job id -> creation time (epoch s); read by `jobs list`
INDEX_MAX = 10_000  # ids kept in the index (besides those older than the job TTL, trimmed on each create)
ACTIVE_WINDOW_S = 24 * 3600  # a queued or running job older than this no longer holds back a scheduled one
LIST_FIELDS = ("kind", "trigger", "state", "created_at", "started_at", "finished_at", "skipped", "error")
COUNTERS = ("chunks_total", "chunks_done", "chunks_failed", "rows", "bytes")
M = TypeVar("M", bound=BaseModel)


def new_job_id(kind: str) -> str:
    return f"{utcnow():%Y%m%dT%H%M%SZ}-{kind}-{secrets.token_hex(3)}"


def check_id(value: str, what: str = "job") -> str:
    if not re.fullmatch(ID_PATTERN, value or ""):
        raise BadInput(f"{what} id {value!r} is malformed: ids hold only 0-9 A-Z a-z and -")
    return value


def _key(job_id: str, *parts: Any) -> str:
    return ":".join([JOB_KEY.format(job_id=job_id), *map(str, parts)])


def _channel(job_id: str) -> str:
    """The pub/sub channel on which every change of the job's record is announced (no payload is trusted)."""
    return _key(job_id, "events")


def _announce(r: Any, job_id: str, what: str) -> None:
    """Publish that the job's record changed (`r` may be a pipeline: then in the same round trip)."""
    r.publish(_channel(job_id), what)


def snapshot_keys(job_id: str, gen: int) -> tuple[str, str]:
    """The snapshot holder's hash (snapshot id, tables, pid | error; TTL = heartbeat) and the lease that
    exists while the backup wants the snapshot, for one generation of a backup."""
    return _key(job_id, "snapshot", gen), _key(job_id, "snapshot-lease", gen)


SNAPSHOT_LEASES = _key("*", "snapshot-lease", "*")  # scan pattern: the leases of every backup


def job_of_lease(key: str) -> tuple[str, int]:
    """(job id, generation) of a key matched by SNAPSHOT_LEASES."""
    head, gen = key.rsplit(":snapshot-lease:", 1)
    return head[len(JOB_KEY.format(job_id="")):], int(gen)


def create(r: redis.Redis, kind: str, options: dict[str, Any], job_id: str | None = None,
           trigger: str = "cli", **extra: Any) -> str:
    """The job's hash (`queued`, or the state given in `extra`), indexed by creation time for `jobs list`."""
    job_id = job_id or new_job_id(kind)
    at = utcnow()
    now = at.isoformat()
    fields = {"kind": kind, "state": "queued", "trigger": trigger, "options": json.dumps(options), "created_at": now,
              "updated_at": now, **dict.fromkeys(COUNTERS, 0), **extra}
    with r.pipeline() as p:
        p.hset(_key(job_id), mapping=fields)
        p.expire(_key(job_id), JOB_TTL_SECONDS)
        p.zadd(INDEX_KEY, {job_id: at.timestamp()})
        p.zremrangebyscore(INDEX_KEY, "-inf", at.timestamp() - JOB_TTL_SECONDS)
        p.zremrangebyrank(INDEX_KEY, 0, -INDEX_MAX - 1)
        p.expire(INDEX_KEY, JOB_TTL_SECONDS)
        p.execute()
    return job_id


def previous_fire(schedule: Any, now: datetime | None = None) -> datetime:
    """The most recent time at or before `now` (UTC, whole minutes) that a celery crontab is due: the slot a
    beat fired for, the same in every beat that fired for it."""
    t = (now or utcnow()).astimezone(UTC).replace(second=0, microsecond=0)
    minute = timedelta(minutes=1)
    for _ in range(100_000):  # each step skips a whole month, day, hour or minute that cannot match
        if t.month not in schedule.month_of_year:
            t = t.replace(day=1, hour=0, minute=0) - minute
        elif t.day not in schedule.day_of_month or t.isoweekday() % 7 not in schedule.day_of_week:
            t = t.replace(hour=0, minute=0) - minute
        elif t.hour not in schedule.hour:
            t = t.replace(minute=0) - minute
        elif t.minute not in schedule.minute:
            t -= minute
        else:
            return t
    raise BadInput(f"the schedule {schedule} has no due time in the past")


def _slot(schedule: Any) -> tuple[str, int]:
    """The slot of a beat trigger and how long its key lives: for a crontab, its previous due time; for a
    period in seconds (the older form), the period's number since the epoch."""
    if isinstance(schedule, int | float):
        return str(int(time.time() // schedule)), max(int(schedule) * 2, 3600)
    return f"{previous_fire(schedule):%Y%m%dT%H%MZ}", 2 * 86_400


def active(r: redis.Redis, kind: str, window_s: int = ACTIVE_WINDOW_S) -> str | None:
    """The id of a queued or running job of this kind created in the last `window_s` seconds, newest first."""
    ids = r.zrevrangebyscore(INDEX_KEY, "+inf", time.time() - window_s)
    with r.pipeline() as p:
        for job_id in ids:
            p.hmget(_key(job_id), "kind", "state")
        rows = p.execute() if ids else []
    return next((job_id for job_id, (k, st) in zip(ids, rows, strict=True)
                 if k == kind and st in ("queued", "running")), None)


def scheduled(r: redis.Redis, kind: str, schedule: Any, options: dict[str, Any]) -> str | None:
    """A job (trigger `beat`) for a beat trigger, or None when there is nothing to run: this schedule slot was
    taken already (a second beat, or a beat restarted within the slot: one SET NX per kind and slot), or a
    job of the same kind is queued or running (then a `succeeded` job whose `skipped` field says which one is
    recorded, for `jobs list`). The slot comes from the crontab the beat fired by, which beat_schedule.py puts in
    the options (`schedule`: the beat's settings, not this worker's, name the slot), else from `schedule`: a
    celery crontab, or (the older form) a period in seconds."""
    if options.get("schedule"):
        schedule = parse_crontab(options["schedule"])
    slot, ttl = _slot(schedule)
    if not r.set(BEAT_SLOT_KEY.format(name=kind, slot=slot), "1", nx=True, ex=ttl):
        return None
    running = active(r, kind)
    if running is not None:
        now = utcnow().isoformat()
        why = f"{kind} {running} is running"
        job_id = create(r, kind, options, trigger="beat", state="succeeded", started_at=now, finished_at=now,
                        skipped=why, planned="1")
        r.hset(_key(job_id), "report", json.dumps({
            "job_id": job_id, "kind": kind, "state": "succeeded", "ok": True, "started_at": now, "finished_at": now,
            "dry_run": bool(options.get("dry_run")), "error": None, "skipped": why}))
        return None
    return create(r, kind, options, trigger="beat")


def recent(r: redis.Redis, limit: int = 20) -> list[dict[str, Any]]:
    """The newest `limit` jobs (from the index: no scan of Redis), newest first, as `jobs list` shows them."""
    out: list[dict[str, Any]] = []
    start = 0
    while len(out) < limit:
        ids = r.zrevrange(INDEX_KEY, start, start + limit - len(out) - 1)
        if not ids:
            break
        start += len(ids)
        with r.pipeline() as p:
            for job_id in ids:
                p.hmget(_key(job_id), *LIST_FIELDS)
            rows = p.execute()
        gone = []
        for job_id, values in zip(ids, rows, strict=True):
            row = dict(zip(LIST_FIELDS, values, strict=True))
            if row["kind"] is None:  # its hash expired
                gone.append(job_id)
                continue
            began, ended = row["started_at"], row["finished_at"]
            duration = None
            if began and ended:
                duration = round((datetime.fromisoformat(ended) - datetime.fromisoformat(began)).total_seconds(), 3)
            out.append({"job_id": job_id, "kind": row["kind"], "trigger": row["trigger"] or "cli",
                        "state": row["state"], "started_at": began, "finished_at": ended, "duration_s": duration,
                        "created_at": row["created_at"], "skipped": row["skipped"], "error": row["error"]})
        if gone:
            r.zrem(INDEX_KEY, *gone)
    return out


def start(r: redis.Redis, job_id: str, chunks_total: int) -> bool:
    """Mark the job planned and running; False when a redelivered start task finds it planned already, or
    the job has ended (a start sent by a start-over that lost the race with the job's end)."""
    if r.hget(_key(job_id), "state") in ("succeeded", "failed") or not r.hsetnx(_key(job_id), "planned", "1"):
        return False
    now = utcnow().isoformat()
    with r.pipeline() as p:
        p.hset(_key(job_id), mapping={"state": "running", "started_at": now, "updated_at": now,
                                      "chunks_total": chunks_total})
        _announce(p, job_id, "start")
        p.execute()
    return True


def set_total(r: redis.Redis, job_id: str, chunks_total: int) -> None:
    with r.pipeline() as p:
        p.hset(_key(job_id), "chunks_total", chunks_total)
        _announce(p, job_id, "progress")
        p.execute()


def add(r: redis.Redis, job_id: str, chunks: int = 1, rows: int = 0, nbytes: int = 0, failed: int = 0) -> None:
    with r.pipeline() as p:
        p.hincrby(_key(job_id), "chunks_done", chunks)
        if rows:
            p.hincrby(_key(job_id), "rows", rows)
        if nbytes:
            p.hincrby(_key(job_id), "bytes", nbytes)
        if failed:
            p.hincrby(_key(job_id), "chunks_failed", failed)
        p.hset(_key(job_id), "updated_at", utcnow().isoformat())
        _announce(p, job_id, "progress")
        p.execute()


def _transition(r: redis.Redis, job_id: str, decide: Callable[[str | None], dict[str, Any] | None]) -> None:
    """Read the state and write the next one atomically (WATCH/MULTI): a failing duplicate chunk and a
    finalize racing each other cannot leave a failed job with a report that says ok (the claim of the
    job's end is watched too: a failure takes it before the state says failed). The change is announced
    in the same transaction."""
    key = _key(job_id)
    with r.pipeline() as p:
        while True:
            try:
                p.watch(key, _key(job_id, "ending"))
                fields = decide(p.hget(key, "state"))
                if fields is None:
                    p.unwatch()
                    return
                p.multi()
                p.hset(key, mapping=fields)
                _announce(p, job_id, fields.get("state", "progress"))
                p.execute()
                return
            except redis.WatchError:
                continue


def claim_end(r: redis.Redis, job_id: str, owner: str, takes_over: str | None = None) -> bool:
    """Claim the job's one end for `owner` ("fail:<task>", or "finish:<task>" for the finalize about to write
    what the job leaves: a manifest, a swap). True for the owner (again when the same task is redelivered),
    and for `takes_over`'s successor (a finalize that claimed the end and then failed); False once the job
    ended or another owns its end: a backup's finalize then writes no manifest over a failure's release."""
    key, claim = _key(job_id), _key(job_id, "ending")
    with r.pipeline() as p:
        while True:
            try:
                p.watch(key, claim)
                current = p.get(claim)
                if p.hget(key, "state") in ("succeeded", "failed"):
                    p.unwatch()
                    return False
                if current not in (None, owner, takes_over):
                    p.unwatch()
                    return current == owner
                p.multi()
                p.set(claim, owner, ex=JOB_TTL_SECONDS)
                p.execute()
                return True
            except redis.WatchError:
                continue


def fail(r: redis.Redis, job_id: str, error: str, task_id: str | None = None,
         release: Callable[[], None] | None = None) -> bool:
    """Mark the job failed, keeping the first error (the one that names the chunk). A job that already
    succeeded stays so: a late duplicate of one of its chunks does not undo its report. A task's failure
    counts once however many paths report it. The call that ends the job runs `release` (what the job held)
    before the state says failed: whoever waits for the job wakes to find it let go. True for that call, and
    for the same task's failure reported again (its first report cut short inside the release: it runs again).
    The error is written by the call that owns the end: a late duplicate that loses to the finalize leaves a
    succeeded job without one."""
    first = True
    if task_id:
        r.expire(_key(job_id, "failed-tasks"), JOB_TTL_SECONDS)
        first = bool(r.sadd(_key(job_id, "failed-tasks"), task_id))
    task = task_id or secrets.token_hex(4)
    if not claim_end(r, job_id, f"fail:{task}", takes_over=f"finish:{task}"):
        return False
    if first:
        r.hsetnx(_key(job_id), "error", error.splitlines()[0][:500] if error else "failed")
        r.hincrby(_key(job_id), "chunks_failed", 1)
    try:
        if release:
            release()
    finally:
        now = utcnow().isoformat()
        _transition(r, job_id, lambda state: None if state == "failed" else
                    {"state": "failed", "updated_at": now, "finished_at": now})
    return True


def finish(r: redis.Redis, job_id: str, report: BaseModel | dict[str, Any]) -> None:
    """Store the final report (the job's start and end times filled in from its record). A job already
    failed by a chunk stays failed."""
    now = utcnow().isoformat()
    if isinstance(report, BaseModel):
        started = r.hget(_key(job_id), "started_at")
        if getattr(report, "started_at", "") is None and started:
            report.started_at = datetime.fromisoformat(started)
        if getattr(report, "finished_at", "") is None:
            report.finished_at = utcnow()
        report = report.model_dump(mode="json")

    def decide(state: str | None) -> dict[str, Any]:
        final = report
        if state == "failed" or (r.get(_key(job_id, "ending")) or "").startswith("fail:"):
            final = {**report, "state": "failed", "ok": False, "error": r.hget(_key(job_id), "error")}
        return {"state": final["state"], "report": json.dumps(final, default=str), "updated_at": now,
                "finished_at": now}
    _transition(r, job_id, decide)


def options(r: redis.Redis, job_id: str) -> dict[str, Any]:
    return json.loads(r.hget(_key(job_id), "options") or "{}")


def state(r: redis.Redis, job_id: str) -> str | None:
    return r.hget(_key(job_id), "state")


def job_kind(r: redis.Redis, job_id: str) -> str | None:
    return r.hget(_key(job_id), "kind")


def is_planned(r: redis.Redis, job_id: str) -> bool:
    return bool(r.hget(_key(job_id), "planned"))


# the family's plan and values ------------------------------------------------------------------------------

def save_plan(r: redis.Redis, job_id: str, plan: BaseModel) -> None:
    r.hset(_key(job_id), "plan", plan.model_dump_json())


def load_plan(r: redis.Redis, job_id: str, model: type[M]) -> M | None:
    raw = r.hget(_key(job_id), "plan")
    return model.model_validate_json(raw) if raw else None


def put_once(r: redis.Redis, job_id: str, name: str, value: Any) -> Any:
    """Store `value` under `name` unless a value is there already (a redelivered start); the stored one."""
    r.hsetnx(_key(job_id), f"value:{name}", json.dumps(value, default=str))
    return json.loads(r.hget(_key(job_id), f"value:{name}"))


def put_value(r: redis.Redis, job_id: str, name: str, value: Any) -> None:
    with r.pipeline() as p:
        p.hset(_key(job_id), f"value:{name}", json.dumps(value, default=str))
        _announce(p, job_id, "progress")  # a pipeline's running step (`current`) shows at once
        p.execute()


def value(r: redis.Redis, job_id: str, name: str, default: Any = None) -> Any:
    raw = r.hget(_key(job_id), f"value:{name}")
    return json.loads(raw) if raw is not None else default


def mark(r: redis.Redis, job_id: str, name: str, result: Any = True) -> bool:
    """Record that a piece of work `name` is done (with its result); False when it was recorded already."""
    return bool(r.set(_key(job_id, "marker", name), json.dumps(result, default=str), nx=True,
                      ex=JOB_TTL_SECONDS))


def marked(r: redis.Redis, job_id: str, name: str) -> Any:
    """The result recorded by `mark`, or None when the work is not done."""
    raw = r.get(_key(job_id, "marker", name))
    return json.loads(raw) if raw is not None else None


def count_delivery(r: redis.Redis, job_id: str, task_id: str) -> int:
    """How many times this task has been delivered (retries included)."""
    with r.pipeline() as p:
        p.hincrby(_key(job_id, "attempts"), task_id, 1)
        p.expire(_key(job_id, "attempts"), JOB_TTL_SECONDS)
        return int(p.execute()[0])


def deliveries(r: redis.Redis, job_id: str) -> dict[str, int]:
    """Task id -> how many times it was delivered."""
    return {k: int(v) for k, v in r.hgetall(_key(job_id, "attempts")).items()}


def generation(r: redis.Redis, job_id: str) -> int:
    """Which attempt of the job runs: a backup that lost its snapshot starts over at the next one."""
    return int(r.hget(_key(job_id), "generation") or 0)


def next_generation(r: redis.Redis, job_id: str, gen: int) -> bool:
    """Start the job over at generation gen + 1 (counters and plan cleared, planned again by its start task);
    False when another task of generation `gen` did it already, or the job's end is claimed."""
    with r.pipeline() as p:
        while True:
            try:
                p.watch(_key(job_id, "ending"), _key(job_id, "restart", gen))
                # ending (a failure's release let go of the snapshot on purpose), or restarted already
                if p.exists(_key(job_id, "ending"), _key(job_id, "restart", gen)):
                    p.unwatch()
                    return False
                p.multi()
                p.set(_key(job_id, "restart", gen), "1", ex=JOB_TTL_SECONDS)
                p.hset(_key(job_id), mapping={"generation": gen + 1, "chunks_done": 0, "rows": 0, "bytes": 0})
                p.hdel(_key(job_id), "planned", "plan")
                _announce(p, job_id, "progress")
                p.execute()
                return True
            except redis.WatchError:
                continue


# resource locks ----------------------------------------------------------------------------------------------

def lock(r: redis.Redis, resource: str, job_id: str) -> str | None:
    """Hold `resource` for the job; None when held, else the id of the running job that holds it.

    The lock belongs to a job and is let go by the job's end, whichever way it ends (finish, a failed
    chunk, a chunk killed at its time limit: worker/taskbase.py). It is never taken over because its
    holder looks slow (a restore may wait long behind backup chunks in the queue): only from a holder
    whose record says it ended, or whose record is gone."""
    key = LOCK_KEY.format(resource=resource)
    with r.pipeline() as p:
        while True:
            try:
                p.watch(key)
                holder = p.get(key)
                if holder and holder != job_id:
                    held = read(p, holder)  # type: ignore[arg-type]
                    if held is not None and not held.finished:
                        p.unwatch()
                        return holder
                p.multi()
                p.set(key, job_id, ex=JOB_TTL_SECONDS)
                p.execute()
                return None
            except redis.WatchError:
                continue


def unlock(r: redis.Redis, resource: str, job_id: str) -> None:
    """Let go of `resource` if this job holds it."""
    key = LOCK_KEY.format(resource=resource)
    with r.pipeline() as p:
        try:
            p.watch(key)
            if p.get(key) == job_id:
                p.multi()
                p.delete(key)
                p.execute()
            else:
                p.unwatch()
        except redis.WatchError:
            pass  # someone else took it meanwhile: it is not ours to delete


def read(r: redis.Redis, job_id: str) -> Progress | None:
    raw = r.hgetall(_key(job_id))
    if not raw.get("kind") or not raw.get("state"):  # none, or only the counters a chunk still running wrote
        return None  # after Redis lost the record (restarted or flushed)
    p = Progress(job_id=job_id, **{k: v for k, v in raw.items() if k in Progress.model_fields and v != ""})
    if p.started_at and p.chunks_done:
        elapsed = ((p.finished_at or utcnow()) - p.started_at).total_seconds()
        if elapsed > 0:
            p.rate_chunks_per_s = round(p.chunks_done / elapsed, 3)
            p.rate_rows_per_s = round(p.rows / elapsed, 1)
            left = max(p.chunks_total - p.chunks_done, 0)
            p.eta_seconds = 0.0 if p.finished else round(left / p.rate_chunks_per_s, 1)
    return p


def report(r: redis.Redis, job_id: str) -> dict[str, Any] | None:
    raw = r.hget(_key(job_id), "report")
    return json.loads(raw) if raw else None


def failed_report(r: redis.Redis, job_id: str) -> dict[str, Any]:
    """The report of a job that failed before its finalize wrote one."""
    p = read(r, job_id)
    assert p is not None
    opts = options(r, job_id)
    return {"job_id": job_id, "kind": p.kind, "state": "failed", "ok": False,
            "started_at": p.started_at, "finished_at": p.finished_at or utcnow(),
            "dry_run": bool(opts.get("dry_run")), "error": p.error or "failed"}


def wait(r: redis.Redis, job_id: str, timeout: float,
         on_progress: Callable[[Progress], None] | None = None, interval: float = 1.0,
         submitted: bool = False) -> dict[str, Any]:
    """The job's report once it has one (or failed); JobTimeout past `timeout` seconds.

    Blocks on the job's channel between reads of its record: a change wakes it at once (no polling delay at
    the end). Subscribed (confirmed by Redis) before the first read, so no change after that read is missed;
    should a message be lost all the same (a dropped connection, a worker that does not announce), the record
    is read again every `interval` seconds."""
    deadline = time.monotonic() + timeout
    seen = [submitted]  # the record exists (the caller made it, or it was read): its absence means Redis lost it
    while True:
        try:
            return _wait(r, job_id, timeout, deadline, on_progress, interval, seen)
        except (redis.ConnectionError, redis.TimeoutError) as err:  # Redis went away: give it a moment to return
            if time.monotonic() >= deadline:
                raise JobTimeout(f"job {job_id} not finished after {timeout:.0f} s (Redis: {err})") from None
            back = time.monotonic() + min(REDIS_RETURN_S, max(deadline - time.monotonic(), 0))
            while not _pings(r):
                if time.monotonic() >= back:
                    raise ServiceUnavailable(
                        f"lost Redis at {_where(r)} while waiting for job {job_id} ({err}); the job's outcome is "
                        f"unknown: once Redis is back, see worktask jobs show {job_id}") from None
                time.sleep(0.5)
            seen[0] = True  # then read the record again: a restarted Redis may have lost it


REDIS_RETURN_S = 30  # how long a waiting CLI gives Redis to come back before it says it lost it


def _where(r: redis.Redis) -> str:
    """The job store as host:port/db (or socket/db): no password."""
    kw = r.connection_pool.connection_kwargs
    place = kw.get("path") or f"{kw.get('host')}:{kw.get('port')}"
    return f"{place}/{kw.get('db', 0)}"


def _pings(r: redis.Redis) -> bool:
    try:
        return bool(r.ping())
    except redis.RedisError:
        return False


def _wait(r: redis.Redis, job_id: str, timeout: float, deadline: float,
          on_progress: Callable[[Progress], None] | None, interval: float, seen: list[bool]) -> dict[str, Any]:
    with r.pubsub() as events:
        events.subscribe(_channel(job_id))
        _next_event(events, min(interval, max(deadline - time.monotonic(), 0.01)), "subscribe")
        while True:
            p = read(r, job_id)
            if p is None and seen[0]:
                raise JobFailed(f"job {job_id} is gone from Redis at {_where(r)} (restarted or flushed while it ran): "
                                f"its outcome is unknown and nothing will finish it; run it again")
            if p is None:
                raise BadInput(f"job {job_id} not found (jobs are kept {JOB_TTL_SECONDS // 86400} days)")
            seen[0] = True
            if on_progress:
                on_progress(p)
            if p.state == "failed":
                return report(r, job_id) or failed_report(r, job_id)
            if p.state == "succeeded":
                rep = report(r, job_id)
                if rep is not None:
                    return rep
            left = deadline - time.monotonic()
            if left <= 0:
                raise JobTimeout(f"job {job_id} not finished after {timeout:.0f} s "
                                 f"({p.chunks_done}/{p.chunks_total} chunks); see worktask jobs show {job_id}")
            _next_event(events, min(interval, left))


def _next_event(events: Any, timeout: float, kind: str = "message") -> None:
    """Return when a message of this kind came on the subscribed channel (then also take the messages already
    queued behind it: a burst of progress is read once), or after `timeout` seconds."""
    until = time.monotonic() + timeout
    while (left := until - time.monotonic()) > 0:
        got = events.get_message(timeout=left)
        if got is not None and got["type"] == kind:
            while events.get_message(timeout=0) is not None:
                pass
            return
