"""Reading a stored chunk back and checking it against its manifest entry, and the objects of a backup's folder
its manifest does not list (backup validate, restore)."""

from __future__ import annotations

from typing import Any

from worker import backups, markers
from worker.archive import read_chunk
from worker.errors import CorruptChunk
from worker.reports import BadChunk
from worker.settings import Settings


def open_chunk(settings: Settings, options: dict[str, Any], backup_id: str, encryption: dict[str, Any] | None,
               compressed: bool, store_kind: str, table: str, chunk: dict[str, Any]) -> tuple[Any, Any, Any]:
    """(source, plain blocks, hashed reader) of one stored chunk: the blocks decrypt and decompress as they
    are read; the hashed reader's SHA-256 of the stored bytes is complete once they are all read."""
    store = backups.store_for(settings, options)
    key = backups.data_key(settings, backup_id, encryption)
    src = store.open(chunk["key"])
    try:
        blocks, hashed = read_chunk(src, backups.chunk_aad(backup_id, store_kind, table, chunk["n"]), compressed, key)
    except BaseException:
        src.close()
        raise
    return src, blocks, hashed


def check_chunk(settings: Settings, options: dict[str, Any], backup_id: str, encryption: dict[str, Any] | None,
                compressed: bool, store_kind: str, table: str, chunk: dict[str, Any]) -> str | None:
    """None when the chunk verifies; else the reason, checksum first (it says the bytes changed)."""
    try:
        src, blocks, hashed = open_chunk(settings, options, backup_id, encryption, compressed, store_kind, table, chunk)
    except FileNotFoundError:
        return "missing from the store"
    rows, problem = 0, None
    with src:
        try:
            for block in blocks:
                rows += block.count(b"\n")
        except CorruptChunk as err:
            problem = str(err)
            drain(hashed)
    return verdict(hashed, chunk, rows, problem)


def drain(hashed: Any) -> None:
    """Read the rest of the stored bytes, so that their SHA-256 is complete."""
    while hashed.read(1 << 20):
        pass


def verdict(hashed: Any, chunk: dict[str, Any], rows: int, problem: str | None) -> str | None:
    """Whether a chunk read whole verifies: None, else the reason, the checksum first (it says the bytes
    changed), then decryption or decompression (`problem`), then the row count."""
    if hashed.sha.hexdigest() != chunk["sha256"]:
        return (f"checksum mismatch: {hashed.size} bytes stored of {chunk['bytes_stored']}, "
                f"sha256 {hashed.sha.hexdigest()[:12]}… expected {chunk['sha256'][:12]}…")
    if problem:
        return problem
    if rows != chunk["rows"]:
        return f"{rows} rows, manifest says {chunk['rows']}"
    return None


def unlisted(store: Any, options: dict[str, Any], listed: set[str]) -> list[BadChunk]:
    """Objects in the backup's folder that its manifest does not list (finalize removes every other attempt's
    object, so a complete backup has none): put there since, or left by a finalize that did not end. A restore
    never reads them; validate names them."""
    root = backups.prefix(options, options["backup_id"])
    out = []
    for obj in store.list(root):
        rel = obj.key[len(root):]
        if obj.key in listed or rel in ("manifest.json", *markers.NAMES):
            continue
        parts = rel.split("/")
        n = parts[-1].split(".", 1)[0]
        out.append(BadChunk(table=parts[1] if len(parts) == 3 else "?", chunk=int(n) if n.isdigit() else -1,
                            path=obj.key, reason=f"not in the manifest ({obj.size} bytes): the backup did not "
                                                 "write it this way; check and remove it"))
    return sorted(out, key=lambda b: b.path)
