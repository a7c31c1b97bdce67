"""Backups in the object store (DESIGN §9): ids, layout, keys, manifest, listing, retention.

    BACKUP_PREFIX/<id>/manifest.json                    written last: no manifest, no backup
    BACKUP_PREFIX/<id>/failed.json                      written when the backup failed
    BACKUP_PREFIX/<id>/postgres/<table>/<n>.<token>.<ext>
    BACKUP_PREFIX/<id>/dynamodb/<table>/<n>.<token>.<ext>
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import secrets
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from worker.archive import new_data_key, unwrap_key, wrap_key
from worker.connections import aws_client
from worker.errors import BadInput
from worker.settings import Settings
from worker.store import LocalStore, ObjectStore, S3Store

FORMAT_VERSION = 1
ID_RE = re.compile(r"^(\d{8}T\d{6}Z)-[0-9A-Za-z-]{1,60}$")
_key_cache: dict[tuple[str, str], bytes] = {}


def new_backup_id() -> str:
    return f"{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}-backup-{secrets.token_hex(3)}"


def check_backup_id(value: str) -> str:
    if not ID_RE.match(value or ""):
        raise BadInput(f"backup id {value!r} is malformed: expected e.g. 20261124T101500Z-backup-1a2b3c "
                       "(see worktask backup list)")
    return value


def created_at(backup_id: str) -> datetime:
    stamp = ID_RE.match(backup_id).group(1)  # type: ignore[union-attr]
    return datetime.strptime(stamp, "%Y%m%dT%H%M%SZ").replace(tzinfo=timezone.utc)


def store_options(settings: Settings) -> dict[str, Any]:
    """Where and how a job's backup is written; part of the job's options (no secrets)."""
    return {"s3_bucket": settings.s3_bucket_name,
            "backup_dir": str((settings.backup_dir or settings.worktask_state_dir / "backups").resolve()),
            "prefix": settings.backup_prefix}


def store_for(settings: Settings, options: dict[str, Any]) -> ObjectStore:
    if options.get("s3_bucket"):
        return S3Store(settings, options["s3_bucket"])
    return LocalStore(Path(options["backup_dir"]))


def prefix(options: dict[str, Any], backup_id: str) -> str:
    return f"{options['prefix']}/{backup_id}/"


def chunk_ext(compressed: bool, encrypted: bool) -> str:
    return ".".join(["data"] + (["zst"] if compressed else []) + (["aes"] if encrypted else []))


def chunk_key(options: dict[str, Any], backup_id: str, store: str, table: str, n: int, token: str) -> str:
    ext = chunk_ext(options["compress"], options["encrypt"])
    return f"{prefix(options, backup_id)}{store}/{table}/{n:05d}.{token}.{ext}"


def chunk_aad(backup_id: str, store: str, table: str, n: int) -> str:
    """What a chunk's encryption is bound to: it cannot be moved to another backup, table or position."""
    return f"{backup_id}/{store}/{table}/{n}"


# keys ---------------------------------------------------------------------------------------------

def require_key(settings: Settings, encrypt: bool) -> None:
    if encrypt and not (settings.backup_encryption_key or settings.backup_kms_key_id):
        raise BadInput("ENCRYPTION_ENABLED=true needs BACKUP_ENCRYPTION_KEY (worktask keygen prints one) or "
                       "BACKUP_KMS_KEY_ID; or set ENCRYPTION_ENABLED=false")


def make_data_key(settings: Settings, backup_id: str, kms_key_id: str | None) -> tuple[bytes, dict[str, Any]]:
    """A fresh data key and how it is kept in the manifest (wrapped, never in clear)."""
    if kms_key_id:
        out = aws_client(settings, "kms").generate_data_key(
            KeyId=kms_key_id, KeySpec="AES_256", EncryptionContext={"backup_id": backup_id})
        return out["Plaintext"], {"wrapping": "kms", "kms_key_id": kms_key_id,
                                  "wrapped_key": base64.b64encode(out["CiphertextBlob"]).decode()}
    if not settings.backup_encryption_key:
        raise BadInput("this worker has no BACKUP_ENCRYPTION_KEY (nor BACKUP_KMS_KEY_ID); give the workers the key")
    master = base64.b64decode(settings.backup_encryption_key.get_secret_value())
    key = new_data_key()
    return key, {"wrapping": "key", "wrapped_key": wrap_key(key, master, backup_id),
                 "master_key_id": hashlib.sha256(master).hexdigest()[:16]}


def data_key(settings: Settings, backup_id: str, encryption: dict[str, Any] | None) -> bytes | None:
    """Unwrap a backup's data key (cached per process)."""
    if not encryption:
        return None
    cache = (backup_id, encryption["wrapped_key"])
    if cache in _key_cache:
        return _key_cache[cache]
    if encryption["wrapping"] == "kms":
        key = aws_client(settings, "kms").decrypt(
            CiphertextBlob=base64.b64decode(encryption["wrapped_key"]),
            EncryptionContext={"backup_id": backup_id})["Plaintext"]
    else:
        if not settings.backup_encryption_key:
            raise BadInput("backup is encrypted with a key: set BACKUP_ENCRYPTION_KEY on the workers")
        key = unwrap_key(encryption["wrapped_key"],
                         base64.b64decode(settings.backup_encryption_key.get_secret_value()), backup_id)
    _key_cache[cache] = key
    return key


# manifest -------------------------------------------------------------------------------------------

def manifest_checksum(manifest: dict[str, Any]) -> str:
    body = {k: v for k, v in manifest.items() if k != "checksum"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()


def write_manifest(store: ObjectStore, options: dict[str, Any], manifest: dict[str, Any]) -> str:
    manifest = {**manifest, "checksum": manifest_checksum(manifest)}
    key = prefix(options, manifest["backup_id"]) + "manifest.json"
    store.put(key, json.dumps(manifest, indent=1, default=str).encode())
    return key


def read_manifest(store: ObjectStore, options: dict[str, Any], backup_id: str) -> dict[str, Any]:
    check_backup_id(backup_id)
    key = prefix(options, backup_id) + "manifest.json"
    try:
        manifest = json.loads(store.get(key))
    except FileNotFoundError:
        raise BadInput(f"backup {backup_id} not found in {store.url(options['prefix'])} (no manifest); "
                       "see worktask backup list") from None
    if manifest.get("checksum") != manifest_checksum(manifest):
        raise BadInput(f"manifest of backup {backup_id} fails its checksum: it was altered")
    return manifest


# listing and retention --------------------------------------------------------------------------------

def list_backups(store: ObjectStore, options: dict[str, Any]) -> list[dict[str, Any]]:
    """Every backup id under the prefix, newest first, with its state and totals."""
    root = options["prefix"] + "/"
    seen: dict[str, dict[str, Any]] = {}
    for obj in store.list(root):
        backup_id = obj.key[len(root):].split("/", 1)[0]
        if not ID_RE.match(backup_id):
            continue
        entry = seen.setdefault(backup_id, {"objects": 0, "bytes": 0, "manifest": False, "failed": False,
                                            "last_write": obj.modified})
        entry["objects"] += 1
        entry["bytes"] += obj.size
        entry["last_write"] = max(entry["last_write"], obj.modified)
        entry["manifest"] |= obj.key.endswith("/manifest.json")
        entry["failed"] |= obj.key.endswith("/failed.json")
    out = []
    for backup_id, e in seen.items():
        row: dict[str, Any] = {"backup_id": backup_id, "created_at": created_at(backup_id).isoformat(),
                               "state": "incomplete", "tables": 0, "rows": 0, "bytes_stored": e["bytes"],
                               "encrypted": None, "compressed": None, "duration_s": None,
                               "last_write": e["last_write"].isoformat()}
        if e["manifest"]:
            try:
                m = read_manifest(store, options, backup_id)
                row.update(state="complete", tables=len(m["tables"]), rows=m["totals"]["rows"],
                           bytes_stored=m["totals"]["bytes_stored"], encrypted=m["options"]["encrypt"],
                           compressed=m["options"]["compress"], duration_s=m["duration_s"])
            except BadInput:
                row["state"] = "failed"
        elif e["failed"]:
            row["state"] = "failed"
        out.append(row)
    return sorted(out, key=lambda r: r["backup_id"], reverse=True)


def cleanup_plan(backups: list[dict[str, Any]], retention_days: int, now: datetime | None = None) -> list[dict[str, Any]]:
    """What retention removes: complete backups older than the retention except the newest complete one,
    and failed or incomplete leftovers whose last write is over a day old."""
    now = now or datetime.now(timezone.utc)
    complete = [b for b in backups if b["state"] == "complete"]
    newest = complete[0]["backup_id"] if complete else None
    plan = []
    for b in backups:
        age = now - datetime.fromisoformat(b["created_at"])
        if b["state"] == "complete":
            if b["backup_id"] != newest and age > timedelta(days=retention_days):
                plan.append({**b, "reason": f"older than {retention_days} days"})
        elif now - datetime.fromisoformat(b["last_write"]) > timedelta(days=1):
            plan.append({**b, "reason": f"{b['state']} leftover, untouched for over a day"})
    return plan


def delete_backup(store: ObjectStore, options: dict[str, Any], backup_id: str) -> int:
    """Delete the manifest first (the backup stops being complete at once), then the rest."""
    check_backup_id(backup_id)
    keys = [o.key for o in store.list(prefix(options, backup_id))]
    manifest = [k for k in keys if k.endswith("/manifest.json")]
    store.delete(manifest)
    store.delete([k for k in keys if k not in manifest])
    return len(keys)
