"""What is known about a backup after it was made, kept beside its manifest (they outlive Redis):

    BACKUP_PREFIX/<id>/validated.json   the last `worktask backup validate` of it
    BACKUP_PREFIX/<id>/verified.json    the last restore drill of it (`worktask backup verify ID --restore-test`)

Each is one JSON object with at least {"job_id", "ok", "at"} (ISO 8601 UTC); validated.json also has
"chunks_checked", "bad_chunks", "error"; verified.json has "tables" (per table its outcome) and "error".
They are hints for people and for retention (never deleting the newest backup that passed), not proofs: they
are not signed, and a restore never trusts them (it verifies every chunk itself).
"""

from __future__ import annotations

import json
from typing import Any

from worker.store import ObjectStore

VALIDATED = "validated.json"
VERIFIED = "verified.json"
NAMES = (VALIDATED, VERIFIED)


def _key(options: dict[str, Any], backup_id: str, name: str) -> str:
    return f"{options['prefix']}/{backup_id}/{name}"


def write(store: ObjectStore, options: dict[str, Any], backup_id: str, name: str, marker: dict[str, Any]) -> None:
    assert name in NAMES and {"job_id", "ok", "at"} <= marker.keys(), (name, sorted(marker))
    store.put(_key(options, backup_id, name), json.dumps(marker, default=str).encode())


def read(store: ObjectStore, options: dict[str, Any], backup_id: str, name: str) -> dict[str, Any] | None:
    """The marker, or None when there is none (never validated / never drilled) or it is not a JSON object."""
    try:
        marker = json.loads(store.get(_key(options, backup_id, name)))
    except FileNotFoundError:
        return None
    except ValueError:
        return None
    return marker if isinstance(marker, dict) and {"ok", "at"} <= marker.keys() else None
