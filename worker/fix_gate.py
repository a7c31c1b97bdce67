"""Whether a fix may be made now (worker/fixer.py, worker/fix_dynamo.py): its kind is among the run's, no restore of
the live database is running (for a destructive kind), and nothing it touches is young.

Young: a row's created_at / updated_at / checked_at (an item's created_at / updated_at attribute), or the rows the
finding rests on, less than FIX_MIN_AGE_MINUTES ago. Where anything a fix touches has no such timestamp (a
dependency edge, an analysis item), the second look decides: the first run that sees the finding records when, and
a fingerprint of every row it would touch (each row's text and xmin: any write to them, a row deleted and made
again, a new row in the cascade, changes it); a later run fixes it only when the fingerprint is the same and at
least FIX_MIN_AGE_MINUTES have passed; a different fingerprint starts the wait again. Each record is a Redis key of
its own that expires (FIRST_LOOK_TTL_S past the minimum age): a finding that went away and came back later is
seen anew.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import redis

from worker import jobs
from worker.errors import FixPending
from worker.fixes import KINDS
from worker.restore_target import LIVE_LOCK

SEEN_KEY = jobs.KEY_PREFIX + "fix:first-look:{digest}"
FIRST_LOOK_TTL_S = 3 * 86400  # past the minimum age: two nightly runs apart fit, a stale record does not linger
STAMPS = ("created_at", "updated_at", "checked_at")


def minutes(seconds: float) -> str:
    return f"{seconds / 60:.0f} min" if seconds >= 60 else f"{seconds:.0f} s"


def fingerprint(parts: list[Any]) -> str:
    return hashlib.sha256(json.dumps(sorted(map(str, parts))).encode()).hexdigest()[:32]


@dataclass
class Gate:
    redis: redis.Redis
    options: dict[str, Any]
    _fixed_looks: list[str] = field(default_factory=list)
    _restore: tuple[str | None] | None = None

    @property
    def kinds(self) -> list[str]:
        return list(self.options.get("fix_kinds") or [])

    @property
    def min_age_s(self) -> float:
        return float(self.options.get("fix_min_age_minutes", 60)) * 60

    def refusal(self, kind: str) -> tuple[str, str] | None:
        """(state, why) when a fix of this kind is not made by this run at all; None when it may be tried."""
        if kind not in self.kinds:
            return "skipped", f"fix kind {kind} not applied (this run's kinds: {', '.join(self.kinds) or 'none'})"
        running = self.restore_running() if KINDS[kind] else None
        if running:
            what = ("an undo of fixes" if jobs.job_kind(self.redis, running) == "validate_undo"
                    else "a restore of the live database")
            return "pending", (f"{what} is running (job {running}): destructive fixes wait for it (its rows and "
                               "items are not settled until it ends)")
        return None

    def restore_running(self) -> str | None:
        if self._restore is None:
            holder = self.redis.get(jobs.LOCK_KEY.format(resource=LIVE_LOCK))
            held = jobs.read(self.redis, holder) if holder else None
            self._restore = (holder if held is not None and not held.finished else None,)
        return self._restore[0]

    def young(self, what: str, age_s: float | None) -> None:
        if age_s is not None and age_s < self.min_age_s:
            raise FixPending(f"a {what} row or item involved changed {minutes(max(age_s, 0))} ago "
                             f"(FIX_MIN_AGE_MINUTES={self.options.get('fix_min_age_minutes')}): left for a later run")

    def second_look(self, kind: str, table: str, label: str, parts: list[Any]) -> None:
        """Pending unless this finding, with every row it touches as it is now, was first seen at least
        FIX_MIN_AGE_MINUTES ago."""
        if self.min_age_s <= 0:
            return
        key = SEEN_KEY.format(digest=hashlib.sha256(f"{kind}|{table}|{label}".encode()).hexdigest()[:32])
        now, mark = time.time(), fingerprint(parts)
        seen = self.redis.get(key)
        first = json.loads(seen) if seen else None
        if first and first.get("fp") == mark and now - float(first["at"]) >= self.min_age_s:
            self._fixed_looks.append(key)
            return
        if not first or first.get("fp") != mark:
            first = {"at": now, "fp": mark}
            self.redis.set(key, json.dumps(first), ex=int(self.min_age_s) + FIRST_LOOK_TTL_S)
        due = datetime.fromtimestamp(float(first["at"]) + self.min_age_s, UTC)
        raise FixPending(f"first seen as it is now {minutes(now - float(first['at']))} ago, with rows that have no "
                         f"timestamp to age them by: fixed by a run after {due:%Y-%m-%d %H:%M} UTC if nothing it "
                         f"touches changes (FIX_MIN_AGE_MINUTES={self.options.get('fix_min_age_minutes')})")

    def forget(self) -> None:
        """After the commit: the fixed findings' first looks are done with (a failure here changes nothing)."""
        if self._fixed_looks:
            try:
                self.redis.delete(*self._fixed_looks)
            except redis.RedisError:
                pass  # they expire on their own
            self._fixed_looks.clear()
