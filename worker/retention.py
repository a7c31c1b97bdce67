"""Backup retention: which backups `worktask backup cleanup` keeps and why (a pure function), and the deletion.

A complete backup is kept when any rule keeps it, each rule a reason (restic's `forget --keep-*`, in UTC):
- younger than RETENTION_DAYS;
- among the newest RETENTION_KEEP_LAST;
- the newest of one of the last RETENTION_KEEP_DAILY days / _WEEKLY ISO weeks / _MONTHLY months that have a
  complete backup;
and, whatever the policy: the newest complete backup, the newest complete backup whose last validation passed
(validated.json ok) and the newest whose last restore drill passed (verified.json ok). Every other complete
backup is deleted, with its reason. Failed and incomplete backups are leftovers: deleted once untouched for a
day (a younger one may be a backup still running).

Quarantines (worker/quarantine.py: what `worktask validate --fix` removed or overwrote, under
BACKUP_PREFIX/quarantine/<validation job id>/) follow the age rule alone: one is deleted once its newest object
is older than RETENTION_DAYS, kept while younger or while its validation job is still running (no keep-* rule,
nothing always kept). Deleting one that fails is reported and does not stop the others.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from worker import quarantine
from worker.backups import ID_RE, check_backup_id, prefix
from worker.errors import WorktaskError
from worker.store import ObjectStore

LEFTOVER_AGE = timedelta(days=1)
KEEP_RULES = ("keep_last", "keep_daily", "keep_weekly", "keep_monthly")


@dataclass(frozen=True)
class Policy:
    """What cleanup keeps; 0 turns a keep-* rule off. Carried in a cleanup job's options and its report."""

    retention_days: int
    keep_last: int = 0
    keep_daily: int = 0
    keep_weekly: int = 0
    keep_monthly: int = 0

    @classmethod
    def from_options(cls, options: dict[str, Any]) -> Policy:
        return cls(retention_days=options["retention_days"], **{k: int(options.get(k) or 0) for k in KEEP_RULES})

    def as_dict(self) -> dict[str, int]:
        return asdict(self)

    def describe(self) -> str:
        rules = [f"{self.retention_days} days"] + [f"{k.replace('_', '-')} {getattr(self, k)}" for k in KEEP_RULES
                                                   if getattr(self, k)]
        return ", ".join(rules)


def policy_options(settings: Any, retention_days: int | None = None, **keep: int | None) -> dict[str, int]:
    """A cleanup job's policy options: each given value (a flag) beats its setting (RETENTION_DAYS,
    RETENTION_KEEP_LAST/_DAILY/_WEEKLY/_MONTHLY)."""
    unknown = set(keep) - set(KEEP_RULES)
    assert not unknown, unknown
    out = {"retention_days": settings.retention_days if retention_days is None else retention_days}
    for rule in KEEP_RULES:
        value = keep.get(rule)
        out[rule] = getattr(settings, f"retention_{rule}") if value is None else value
    return out


def _day(at: datetime) -> str:
    return f"{at:%Y-%m-%d}"


def _week(at: datetime) -> str:
    year, week, _ = at.isocalendar()
    return f"{year}-W{week:02d}"


def _month(at: datetime) -> str:
    return f"{at:%Y-%m}"


def _newest_per_period(ids_newest_first: Iterable[tuple[str, datetime]], count: int,
                       period: Callable[[datetime], str]) -> dict[str, str]:
    """backup id -> its period, for the newest backup of each of the last `count` periods that have one."""
    kept: dict[str, str] = {}
    seen: set[str] = set()
    for backup_id, at in ids_newest_first:
        if len(seen) >= count:
            break
        p = period(at)
        if p not in seen:
            seen.add(p)
            kept[backup_id] = p
    return kept


def _newest_with(complete: list[dict[str, Any]], marker: str) -> str | None:
    return next((b["backup_id"] for b in complete if (b.get(marker) or {}).get("ok") is True), None)


def decide(backups: list[dict[str, Any]], policy: Policy, now: datetime | None = None) -> list[dict[str, Any]]:
    """Every backup of a listing (worker.backups.list_backups rows, any order) with its decision, newest first:
    {backup_id, created_at, state, bytes_stored, action: keep|delete, reasons: [...]}. A row's `validated` and
    `verified` ({ok, at} or None) name the backups that passed; `last_write` ages failed and incomplete ones."""
    now = now or datetime.now(UTC)
    rows = sorted(backups, key=lambda b: b["backup_id"], reverse=True)
    complete = [b for b in rows if b["state"] == "complete"]
    stamped = [(b["backup_id"], datetime.fromisoformat(b["created_at"]).astimezone(UTC)) for b in complete]
    last = {bid for bid, _ in stamped[:policy.keep_last]}
    daily = _newest_per_period(stamped, policy.keep_daily, _day)
    weekly = _newest_per_period(stamped, policy.keep_weekly, _week)
    monthly = _newest_per_period(stamped, policy.keep_monthly, _month)
    always: dict[str, list[str]] = {}
    if complete:
        always[complete[0]["backup_id"]] = ["the newest complete backup (always kept)"]
    for marker, what in (("validated", "passed validation"), ("verified", "passed a restore drill")):
        newest = _newest_with(complete, marker)
        if newest:
            always.setdefault(newest, []).append(f"the newest backup that {what} (always kept)")
    out = []
    for b in rows:
        bid = b["backup_id"]
        reasons: list[str] = []
        if b["state"] == "complete":
            age = now - datetime.fromisoformat(b["created_at"])
            if age <= timedelta(days=policy.retention_days):
                reasons.append(f"younger than {policy.retention_days} days")
            if bid in last:
                reasons.append(f"among the newest {policy.keep_last} (keep-last)")
            if bid in daily:
                reasons.append(f"newest of day {daily[bid]} (keep-daily {policy.keep_daily})")
            if bid in weekly:
                reasons.append(f"newest of week {weekly[bid]} (keep-weekly {policy.keep_weekly})")
            if bid in monthly:
                reasons.append(f"newest of month {monthly[bid]} (keep-monthly {policy.keep_monthly})")
            reasons.extend(always.get(bid, []))
            action = "keep" if reasons else "delete"
            if not reasons:
                rules = [r.replace("_", "-") for r in KEEP_RULES if getattr(policy, r)]
                reasons.append(f"older than {policy.retention_days} days" +
                               (f" and kept by no {'/'.join(rules)} rule" if rules else ""))
        elif now - datetime.fromisoformat(b["last_write"]) > LEFTOVER_AGE:
            action = "delete"
            reasons.append(f"{b['state']} leftover, untouched for over a day")
        else:
            action = "keep"
            reasons.append(f"{b['state']}, written within the last day (perhaps still running)")
        out.append({"backup_id": bid, "created_at": b["created_at"], "state": b["state"],
                    "bytes_stored": b.get("bytes_stored", 0), "action": action, "reasons": reasons})
    return out


def abort_open_uploads(store: ObjectStore, options: dict[str, Any], backup_id: str | None = None,
                       busy: Callable[[str], bool] = lambda _id: False, dry_run: bool = False) -> list[str]:
    """Abort the objects begun and never finished (a worker killed mid-upload, an endpoint lost mid-object) in
    one backup's folder, or in every backup's whose job is not `busy` (still running: its uploads are live).
    The keys aborted (a dry run: that would be)."""
    root = prefix(options, backup_id) if backup_id else options["prefix"] + "/"
    dead = []
    for u in store.open_uploads(root):
        owner = u.key[len(options["prefix"]) + 1:].split("/", 1)[0]
        if backup_id or (ID_RE.fullmatch(owner) and not busy(owner)):  # a backup's, not another tool's
            dead.append(u)
    if not dry_run:
        store.abort(dead)
    return [u.key for u in dead]


def delete_backup(store: ObjectStore, options: dict[str, Any], backup_id: str) -> int:
    """Delete the manifest first (the backup stops being complete at once), then the rest (markers included)."""
    check_backup_id(backup_id)
    keys = [o.key for o in store.list(prefix(options, backup_id))]
    manifest = [k for k in keys if k.endswith("/manifest.json")]
    store.delete(manifest)
    store.delete([k for k in keys if k not in manifest])
    return len(keys)


def _days(age: timedelta) -> str:
    return f"{age.total_seconds() / 86_400:.1f} days"


def decide_quarantines(quarantines: list[dict[str, Any]], retention_days: int, now: datetime | None = None,
                       busy: Callable[[str], bool] = lambda _id: False) -> list[dict[str, Any]]:
    """Every quarantine of a listing (worker.quarantine.list_quarantines rows) with its decision, newest first:
    {job_id, objects, bytes, last_write (ISO 8601), action: keep|delete, reason}. Its age is its newest
    object's: a quarantine is deleted once that is older than retention_days, unless its validation job is
    still running (`busy`: it may write another object)."""
    now = now or datetime.now(UTC)
    out = []
    for q in sorted(quarantines, key=lambda q: q["last_write"], reverse=True):
        age = now - q["last_write"]
        if age <= timedelta(days=retention_days):
            action, reason = "keep", f"last written {_days(age)} ago, younger than {retention_days} days"
        elif busy(q["job_id"]):
            action, reason = "keep", "its validation job is still running"
        else:
            action, reason = "delete", f"last written {_days(age)} ago, older than {retention_days} days"
        out.append({"job_id": q["job_id"], "objects": q["objects"], "bytes": q["bytes"],
                    "last_write": q["last_write"].isoformat(), "action": action, "reason": reason})
    return out


def delete_quarantines(store: ObjectStore, options: dict[str, Any], decisions: list[dict[str, Any]]) -> list[str]:
    """Delete each quarantine decided `delete`; one that fails keeps going with the others and gets an
    `error` (one line) in its decision. The errors, `<job id>: <error>`."""
    errors = []
    for d in decisions:
        if d["action"] != "delete":
            continue
        try:
            quarantine.delete(store, options, d["job_id"])
        except (WorktaskError, ClientError, BotoCoreError, OSError) as err:
            lines = str(err).strip().splitlines()
            d["error"] = lines[0] if lines else type(err).__name__
            errors.append(f"{d['job_id']}: {d['error']}")
    return errors
