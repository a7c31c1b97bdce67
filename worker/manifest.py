"""The backup manifest (DESIGN §9): what `BACKUP_PREFIX/<backup-id>/manifest.json` holds, field by field.

The manifest is written last (no manifest, no backup) and read before anything is restored or validated.
It holds no secret. This module is its documentation and its reader's shape check; worker/backups.py
stores it (write_manifest), checks its checksum and MAC (read_manifest, verify_manifest) and lists it.

How the model is used, and why the JSON object itself is what travels:
- The checksum and the MAC are computed over the JSON object as stored (backups._canonical). A model
  re-serialised could differ from what was signed (a default filled in, 3 turned into 3.0, a key order),
  so the model never re-writes a manifest: `build_manifest` returns the exact dict that is signed and
  written (checked against the model first), and `read_manifest` checks the format version, the checksum,
  the id and the MAC on the raw dict, then validates it against the model, and returns the raw dict.
- Every model allows extra fields: a field added later (or by a newer build of the same format) is kept,
  never dropped; fields that older manifests of format 1 lack are optional.
- `format_version` is checked first: a manifest of a version this build does not read is refused with
  BadInput (exit 2) naming the version found and the versions read (`check_format`).
"""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from worker import chunks, rowhash
from worker.errors import BadInput, JobFailed
from worker.reports import utcnow

FORMAT_VERSION = 1  # what this build writes
READABLE_VERSIONS = (1,)  # what this build reads


class _Part(BaseModel):
    model_config = ConfigDict(extra="allow")


class Column(_Part):
    """A PostgreSQL column as COPY lists it (stored generated columns are left out: the restored table
    computes them)."""

    name: str
    type: str = Field(description="format_type() of the column, e.g. bigint, character varying(200)")


class Chunk(_Part):
    """One stored object: `<store>/<table>/<n>.<attempt token>.<ext>` under the backup's prefix, where ext is
    `data`, then `.zst` when compressed, then `.aes` when encrypted (backups.chunk_ext). Decrypted, it is one
    zstd frame; inside, a PostgreSQL text COPY stream (the table's `columns`, in order) or DynamoDB export JSON
    lines ({"Item": {...}}). Encryption is bound to `<backup_id>/<store>/<table>/<n>` (backups.chunk_aad)."""

    n: int = Field(description="position in the table, from 0")
    key: str = Field(description="the object's key in the store, BACKUP_PREFIX included")
    rows: int = Field(description="rows (COPY lines) or items (JSON lines) in the chunk")
    bytes_raw: int = Field(description="bytes before compression and encryption")
    bytes_stored: int = Field(description="bytes of the stored object")
    sha256: str = Field(description="hex SHA-256 of the stored object's bytes")
    range: list[str | int | None] | None = Field(
        None, description="backups made before page-range planning: [lo, hi]: rows whose leading key column k "
                          "has lo <= k < hi, as text of the key's type "
                          "(null = unbounded); format-1 manifests of integer keys recorded numbers")
    ctid: list[int | None] | None = Field(
        None, description="[lo, hi]: pages lo <= page < hi (hi null = to the end); every table's chunks since "
                          "page-range planning, only those of tables without a primary key before")
    row_hash: str | None = Field(
        None, description="hex of the chunk's order-independent row hash (worker/rowhash.py, the table's "
                          "row_hash_alg), read in the backup's snapshot; absent in older manifests")


class Capture(_Part):
    """How a DynamoDB table was read: at one instant by ExportTableToPointInTime, or by a parallel Scan
    over a stated window (DESIGN §9)."""

    method: Literal["export", "scan"]
    at: str | None = Field(None, description="export: the instant exported (ISO 8601 UTC)")
    export_arn: str | None = Field(None, description="export: the export's ARN")
    window: list[str] | None = Field(None, description="scan: [first segment's start, last segment's end]")
    snapshot_at: str | None = Field(None, description="scan: the PostgreSQL snapshot's time, for comparison")
    reason: str | None = Field(None, description="scan: why no export was used")


class Table(_Part):
    """One table of the backup: a PostgreSQL table (a leaf partition, never a partitioned parent) or the
    DynamoDB table."""

    name: str
    store: Literal["postgres", "dynamodb"]
    rows: int = Field(description="sum of the chunks' rows")
    bytes_raw: int
    bytes_stored: int
    seconds: float | None = Field(None, description="sum of the chunks' read times")
    chunks: list[Chunk]
    # PostgreSQL
    columns: list[Column] | None = Field(None, description="postgres: the columns, in COPY order")
    primary_key: list[str] | None = Field(None, description="postgres: primary key columns ([] for none)")
    key: str | None = Field(None, description="postgres, key-range backups: the leading key column cut on")
    key_type: str | None = Field(None, description="postgres, key-range backups: its type (regtype)")
    partition_of: str | None = Field(None, description="postgres: the partitioned parent of a leaf partition")
    partition_bound: str | None = Field(None, description="postgres: the leaf's bound (pg_get_expr)")
    row_hash: str | None = Field(None, description="order-independent hash of the table's rows at the snapshot: "
                                                   "the sum of its chunks' row_hash mod 2**64 (the restore drill "
                                                   "compares it); absent in older manifests")
    row_hash_alg: str | None = Field(None, description="how row_hash was computed (worker/rowhash.py ALG for "
                                                       "postgres, DYNAMO_ALG for dynamodb)")
    planned_rows: int | None = Field(None, description="postgres, backups made before page-range planning: rows "
                                                       "counted under the snapshot at planning (the page ranges "
                                                       "now tile the table instead, checked at finalize)")
    # DynamoDB
    key_schema: list[dict[str, Any]] | None = Field(None, description="dynamodb: the table's KeySchema")
    capture: Capture | None = Field(None, description="dynamodb: how it was read")


class Totals(_Part):
    rows: int
    bytes_raw: int
    bytes_stored: int
    chunks: int
    postgres_wall_s: float | None = Field(None, description="first PostgreSQL chunk's start to the last one's end")
    dynamodb_wall_s: float | None = Field(None, description="the same for DynamoDB")


class SourceDynamo(_Part):
    table: str
    key_schema: list[dict[str, Any]]


class Source(_Part):
    """What was backed up."""

    server_version: str | None = Field(None, description="PostgreSQL's `show server_version`")
    database: str | None = None
    migration_head: str | None = Field(None, description="alembic_version at the snapshot (a restore compares it)")
    dynamodb: SourceDynamo | None = Field(None, description="the DynamoDB table, null when there was none")


class Options(_Part):
    compress: bool = Field(description="chunks are zstd frames")
    encrypt: bool = Field(description="chunks are AES-256-GCM frames over the zstd bytes (worker/archive.py)")
    chunk_rows: int | None = Field(None, description="rows per PostgreSQL chunk asked for")
    skip_dynamodb: bool = Field(False, description="the DynamoDB table was left out on purpose (--skip-dynamodb)")


class Encryption(_Part):
    """The backup's data key, wrapped (never in clear): by BACKUP_ENCRYPTION_KEY (`key`, named by a hash prefix
    of it) or by KMS (`kms`, with the encryption context {backup_id})."""

    wrapping: Literal["key", "kms"]
    wrapped_key: str
    master_key_id: str | None = Field(None, description="key: sha256 prefix naming the master key")
    kms_key_id: str | None = Field(None, description="kms: the KMS key")


class Auth(_Part):
    """The manifest's MAC (backups.sign_manifest): HMAC-SHA256 over the canonical JSON of the whole manifest
    but `checksum` and `auth.mac`, with a key derived (HKDF) from BACKUP_ENCRYPTION_KEY (`master`) or from a
    KMS-made MAC key stored wrapped (`kms`)."""

    alg: str = Field(description="hmac-sha256")
    key: str = Field(description="master | kms")
    key_id: str | None = Field(None, description="master: sha256 prefix naming BACKUP_ENCRYPTION_KEY")
    kms_key_id: str | None = Field(None, description="kms: the KMS key")
    wrapped_key: str | None = Field(None, description="kms: the MAC key wrapped by KMS (base64)")
    mac: str = Field(description="hex")


class Manifest(_Part):
    """`manifest.json` of one backup."""

    format_version: int = Field(description=f"the format; this build writes {FORMAT_VERSION} and reads "
                                            f"{', '.join(map(str, READABLE_VERSIONS))}")
    backup_id: str = Field(description="UTC timestamp plus a short random suffix; the folder's name")
    created_at: str = Field(description="when the backup was planned (ISO 8601 UTC)")
    finished_at: str = Field(description="when the manifest was made (ISO 8601 UTC)")
    duration_s: float | None = Field(description="seconds from the start to the manifest")
    source: Source
    options: Options
    encryption: Encryption | None = Field(description="null when the chunks are not encrypted")
    tables: list[Table]
    totals: Totals
    auth: Auth | None = Field(None, description="absent when made without a key (or by an older build)")
    checksum: str | None = Field(None, description="unkeyed SHA-256 of the rest (catches accidents, not forgers)")


def check_format(raw: Any, backup_id: str) -> None:
    """BadInput (exit 2) unless the manifest is of a format version this build reads."""
    found = raw.get("format_version") if isinstance(raw, dict) else None
    if type(found) is not int or found not in READABLE_VERSIONS:
        readable = ", ".join(map(str, READABLE_VERSIONS))
        raise BadInput(f"manifest of backup {backup_id} is of format version {found!r}, this build of worktask "
                       f"reads format version {readable}: use a worktask that reads it (upgrade), or pick another "
                       "backup (worktask backup list)")


def validate(raw: dict[str, Any], backup_id: str) -> Manifest:
    """The manifest's shape checked against the model: BadInput (exit 2) naming the first bad field."""
    try:
        model = Manifest.model_validate(raw)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(map(str, first["loc"])) or "manifest"
        raise BadInput(f"manifest of backup {backup_id} is malformed ({where}: {first['msg']}): it was altered or "
                       "made by another version; pick another backup (worktask backup list)") from None
    for t in model.tables:  # a backup reads only its own objects: <prefix>/<id>/<store>/<table>/<name>
        folder = f"/{backup_id}/{t.store}/{t.name}"
        for c in t.chunks:
            if not ("/" + c.key.rsplit("/", 1)[0]).endswith(folder) or \
                    any(p in ("", ".", "..") for p in c.key.split("/")):
                raise BadInput(f"manifest of backup {backup_id}: chunk {c.n} of {t.name} is stored at {c.key!r}, "
                               f"{_elsewhere(c.key, backup_id)}, not in its table's folder ({folder[1:]}/): it was "
                               "altered; do not restore it, pick another backup (worktask backup list)")
    return model


def _elsewhere(key: str, backup_id: str) -> str:
    """Where a chunk key that is not in its table's folder points, so that each edit is named for what it is."""
    parts = key.split("/")
    if key.startswith("/") or any(p in ("", ".", "..") for p in parts):
        return "a path that climbs ('..') or is not plain ('/', '.', an empty part)"
    ids = [p for p in parts if _BACKUP_ID.fullmatch(p)]
    if ids and ids[0] != backup_id:
        return f"in the folder of another backup ({ids[0]})"
    if backup_id in parts and len(parts) > parts.index(backup_id) + 3:
        return f"in the folder of table {parts[parts.index(backup_id) + 2]} of this backup"
    return "outside the backup's folder"


_BACKUP_ID = re.compile(r"\d{8}T\d{6}Z-[0-9A-Za-z-]{1,60}")  # a backup's id, as worker/backups.py ID_RE


# building (moved from tasks/backup.py; pure) --------------------------------------------------------------------

def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat()


def dynamo_capture(table: dict[str, Any], chunks: list[dict[str, Any]]) -> dict[str, Any]:
    """How the DynamoDB part was taken, for the manifest and the report: at one instant (export), or by a
    scan between the first segment's start and the last one's end."""
    capture = table.get("capture") or {"method": "scan"}
    if capture["method"] == "export":
        rows, expected = sum(c["rows"] for c in chunks), {c.get("export_items") for c in chunks} - {None}
        if expected and rows != max(expected):
            raise JobFailed(f"table {table['name']}: the export holds {max(expected)} items, its chunks {rows}")
        return {k: capture[k] for k in ("method", "at", "export_arn")}
    windows = [c["window"] for c in chunks if c.get("window")]
    return {"method": "scan", "window": [_iso(min(w[0] for w in windows)), _iso(max(w[1] for w in windows))]
            if windows else None, "snapshot_at": capture.get("snapshot_at"), "reason": capture.get("reason")}


def build_manifest(backup_id: str, plan: dict[str, Any], results: list[dict[str, Any]],
                   started: float) -> dict[str, Any]:
    """The manifest of a backup from its plan and its chunks' results: the exact dict that is signed and
    written (backups.write_manifest), checked against the model. JobFailed when chunks or rows are missing."""
    by_table: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in results:
        by_table.setdefault((r["store"], r["table"]), []).append(r)
    tables = []
    for t in plan["tables"]:
        got = sorted(by_table.get((t["store"], t["name"]), []), key=lambda c: c["n"])
        if len(got) != len(t["chunks"]):
            raise JobFailed(f"table {t['name']}: {len(got)} of {len(t['chunks'])} chunks came back")
        rows = sum(c["rows"] for c in got)
        gap = chunks.check_tiling(t["name"], got) if t["store"] == "postgres" else None
        if gap:
            raise JobFailed(f"{gap}: no manifest is written")
        hashes = [c["row_hash"] for c in got if c.get("row_hash") is not None]
        hashed = {"row_hash": rowhash.combine(hashes),
                  "row_hash_alg": rowhash.ALG if t["store"] == "postgres" else rowhash.DYNAMO_ALG} \
            if len(hashes) == len(got) else {}
        tables.append({**{k: v for k, v in t.items() if k not in ("chunks", "filenode")}, **hashed,
                       "rows": rows, "bytes_raw": sum(c["bytes_raw"] for c in got),
                       "bytes_stored": sum(c["bytes_stored"] for c in got),
                       "seconds": round(sum(c["seconds"] for c in got), 3),
                       "chunks": [{k: c[k] for k in ("n", "key", "rows", "bytes_raw", "bytes_stored", "sha256")}
                                  | {k: c[k] for k in ("range", "ctid", "row_hash") if k in c} for c in got]}
                      | ({"capture": dynamo_capture(t, got)} if t["store"] == "dynamodb" else {}))
    totals = {k: sum(t[k] for t in tables) for k in ("rows", "bytes_raw", "bytes_stored")}
    totals["chunks"] = sum(len(t["chunks"]) for t in tables)
    for store in ("postgres", "dynamodb"):  # wall time from the first chunk's start to the last one's end, per store
        ends = [(r["ended_at"] - r["seconds"], r["ended_at"]) for r in results if r["store"] == store]
        if ends:
            totals[f"{store}_wall_s"] = round(max(e for _, e in ends) - min(b for b, _ in ends), 3)
    manifest = {"format_version": FORMAT_VERSION, "backup_id": backup_id, "created_at": plan["created_at"],
                "finished_at": utcnow().isoformat(), "duration_s": round(time.time() - started, 3),
                "source": plan["source"],
                "options": {k: plan["options"][k] for k in ("compress", "encrypt", "chunk_rows")}
                | ({"skip_dynamodb": True} if plan["options"].get("skip_dynamodb") else {}),
                "encryption": plan["encryption"], "tables": tables, "totals": totals}
    Manifest.model_validate(manifest)  # a bug here fails the backup, never writes a manifest readers refuse
    return manifest
