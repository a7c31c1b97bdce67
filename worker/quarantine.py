"""Quarantines: what `worktask validate --fix` deleted or overwrote, kept in the backup store so that
`worktask validate undo JOB_ID` can put it back (worker/undo.py). Written by each fixing transaction
before it commits (worker/fixes.py); never after.

    BACKUP_PREFIX/quarantine/<validation job id>/<unit>.<token>.json[.zst][.aes]

One object per fixing transaction (a validation unit that changed something), named by its unit and a
random token (a unit run twice, e.g. redelivered, never overwrites an earlier object). Each object is a
header line (JSON: format, job_id, unit, how the body is stored, its wrapped data key) and the body: one
JSON document compressed and encrypted like a backup chunk (worker/archive.py), its encryption bound to
<job id>/<unit>.<token> (an object cannot be moved to another job or unit). The document:

    {"format": "worktask-quarantine/1", "job_id": ..., "unit": ..., "at": ISO 8601 UTC,
     "xid": the fixing PostgreSQL transaction's id (pg_current_xact_id) or null,
     "changes": [ in the order undo applies them (parents before the rows that reference them):
        {"kind": fix kind, "store": "postgres", "table": name, "action": "delete" | "update",
         "key_columns": [...], "rows": [{"key": {col: text}, "before": row text (t::text), "after": row text,
                                         only for "update"}]},
        {"kind": fix kind, "store": "dynamodb", "table": name, "action": "delete",
         "rows": [{"key": {"PK": ..., "SK": ...}, "before": the whole item as DynamoDB export JSON}]}]}

A row's text is PostgreSQL's text of the whole row (`t::text`, every column in the table's order) under
the pinned session settings of worker/rowhash.py: `text::table` gives the very same row back.
"""

from __future__ import annotations

import io
import json
import re
import secrets
from typing import Any

from worker.archive import ChunkWriter, read_chunk
from worker.backups import data_key, make_data_key, store_for
from worker.errors import BadInput
from worker.reports import utcnow
from worker.settings import Settings
from worker.store import ObjectStore

FORMAT = "worktask-quarantine/1"
FOLDER = "quarantine"
UNIT_RE = re.compile(r"[0-9A-Za-z_-]{1,80}")


def root(options: dict[str, Any]) -> str:
    return f"{options['prefix']}/{FOLDER}/"


def folder(options: dict[str, Any], job_id: str) -> str:
    return f"{root(options)}{job_id}/"


def where(settings: Settings, options: dict[str, Any], job_id: str) -> str:
    """The quarantine's location as an operator reads it (s3://bucket/prefix/... or a folder)."""
    return store_for(settings, options).url(folder(options, job_id))


def _aad(job_id: str, name: str) -> str:
    return f"{FOLDER}/{job_id}/{name}"


def store_settings(settings: Settings) -> dict[str, Any]:
    """How quarantines are stored: part of a validation job's options (no secret)."""
    from worker.backups import store_options

    return {**store_options(settings), "encrypt": settings.encryption_enabled, "compress": True,
            "kms_key_id": settings.backup_kms_key_id}


def write(settings: Settings, options: dict[str, Any], job_id: str, unit: str, changes: list[dict[str, Any]],
          xid: str | None) -> str:
    """Store one fixing transaction's changes (call before it commits); the object's key."""
    assert UNIT_RE.fullmatch(unit), unit
    name = f"{unit}.{secrets.token_hex(4)}.json" + (".zst" if options["compress"] else "") + (
        ".aes" if options["encrypt"] else "")
    key, encryption = None, None
    if options["encrypt"]:
        key, encryption = make_data_key(settings, _aad(job_id, name), options.get("kms_key_id"))
    doc = {"format": FORMAT, "job_id": job_id, "unit": unit, "at": utcnow().isoformat(), "xid": xid,
           "changes": changes}
    body = io.BytesIO()
    writer = ChunkWriter(body, _aad(job_id, name), options["compress"], key)
    writer.write(json.dumps(doc, separators=(",", ":")).encode())
    writer.close()
    header = {"format": FORMAT, "job_id": job_id, "object": name, "compressed": options["compress"],
              "encryption": encryption}
    object_key = folder(options, job_id) + name
    store_for(settings, options).put(object_key, json.dumps(header).encode() + b"\n" + body.getvalue())
    return object_key


def read(settings: Settings, store: ObjectStore, options: dict[str, Any], job_id: str) -> list[dict[str, Any]]:
    """Every document of a job's quarantine, oldest first; BadInput when there is none or one is unreadable."""
    keys = sorted(o.key for o in store.list(folder(options, job_id)))
    if not keys:
        raise BadInput(f"no quarantine for job {job_id} under {store.url(folder(options, job_id))}: see "
                       "`worktask backup cleanup --dry-run` for the quarantines kept (a validation that fixed "
                       "nothing has none)")
    docs = []
    for object_key in keys:
        raw = store.get(object_key)
        name = object_key.rsplit("/", 1)[-1]
        head, _, body = raw.partition(b"\n")
        try:
            header = json.loads(head)
            assert header["format"] == FORMAT and header["job_id"] == job_id and header["object"] == name
        except (ValueError, KeyError, TypeError, AssertionError):
            raise BadInput(f"quarantine object {object_key} is not a {FORMAT} object of job {job_id}") from None
        key = data_key(settings, _aad(job_id, name), header["encryption"])
        blocks, _ = read_chunk(io.BytesIO(body), _aad(job_id, name), bool(header["compressed"]), key)
        try:
            doc = json.loads(b"".join(blocks))
        except ValueError:
            raise BadInput(f"quarantine object {object_key} does not decode") from None
        if doc.get("format") != FORMAT or doc.get("job_id") != job_id:
            raise BadInput(f"quarantine object {object_key} belongs to another job")
        docs.append({**doc, "object": object_key})
    return sorted(docs, key=lambda d: d["at"])


def list_quarantines(store: ObjectStore, options: dict[str, Any]) -> list[dict[str, Any]]:
    """Every quarantine in the store, newest first: job_id, objects, bytes, last_write (datetime)."""
    top = root(options)
    seen: dict[str, dict[str, Any]] = {}
    for obj in store.list(top):
        job_id = obj.key[len(top):].split("/", 1)[0]
        entry = seen.setdefault(job_id, {"job_id": job_id, "objects": 0, "bytes": 0, "last_write": obj.modified})
        entry["objects"] += 1
        entry["bytes"] += obj.size
        entry["last_write"] = max(entry["last_write"], obj.modified)
    return sorted(seen.values(), key=lambda e: e["last_write"], reverse=True)


def delete(store: ObjectStore, options: dict[str, Any], job_id: str) -> int:
    keys = [o.key for o in store.list(folder(options, job_id))]
    if keys:
        store.delete(keys)
    return len(keys)
