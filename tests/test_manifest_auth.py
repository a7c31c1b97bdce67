"""The manifest is authenticated (issue 10 item 2), on real PostgreSQL, moto and real workers.

A manifest forged or edited by someone without the key, its unkeyed checksum recomputed, is refused by
`backup validate` and `restore` (exit 2, one line, nothing changed); a backup made without a key is
accepted where no key is configured, and elsewhere only with --allow-unauthenticated.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import zstandard

from conftest import cli_json, run_cli
from test_backup import backup, data, decode  # noqa: F401 - `data` is a fixture
from test_restore import hashes
from worker import backups, commands
from worker.connections import aws_client, pg_connect

# Fidelity cases: run once, on the local services path (.ci/run), not again on the embedded path.
pytestmark = pytest.mark.slow


def store_of(settings: Any) -> tuple[Any, dict[str, Any]]:
    opts = backups.store_options(settings)
    return backups.store_for(settings, opts), opts


def raw_manifest(settings: Any, backup_id: str) -> dict[str, Any]:
    """The manifest as stored, read without any check (what someone with write access to the store sees)."""
    store, opts = store_of(settings)
    return json.loads(store.get(backups.prefix(opts, backup_id) + "manifest.json"))


def put_manifest(settings: Any, manifest: dict[str, Any]) -> None:
    """Store a manifest with its unkeyed checksum recomputed, as a forger would."""
    store, opts = store_of(settings)
    manifest = {**manifest, "checksum": backups.manifest_checksum(manifest)}
    store.put(backups.prefix(opts, manifest["backup_id"]) + "manifest.json", json.dumps(manifest, indent=1).encode())


def refused(proc: Any, *words: str) -> None:
    assert proc.returncode == 2, (proc.returncode, proc.stdout[-2000:], proc.stderr[-2000:])
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    for w in words:
        assert w in lines[0], lines[0]


@pytest.fixture()
def encrypted(data: Any) -> Iterator[tuple[Any, str, dict[str, Any]]]:
    """A real encrypted backup (BACKUP_ENCRYPTION_KEY), its stored manifest put back afterwards."""
    report = backup(data)
    assert report["ok"], report
    original = raw_manifest(data, report["backup_id"])
    yield data, report["backup_id"], original
    store, opts = store_of(data)
    store.put(backups.prefix(opts, report["backup_id"]) + "manifest.json", json.dumps(original, indent=1).encode())


def forged_services(settings: Any, manifest: dict[str, Any]) -> dict[str, Any]:
    """The forgery of the issue: encryption null, `services` pointed at a plain zstd chunk with an altered row,
    every other table left out (so that a validate of the whole backup passes on an unauthenticated reader)."""
    t = next(t for t in manifest["tables"] if t["name"] == "services")
    columns = [c["name"] for c in t["columns"]]
    lines = decode(settings, manifest, "services")
    at = columns.index("name")
    rows = []
    for line in lines:
        fields = line.split(b"\t")
        if fields[at] == b"billing":
            fields[at] = b"forged"
        rows.append(b"\t".join(fields))
    assert rows != lines
    plain = b"\n".join(rows) + b"\n"
    stored = zstandard.ZstdCompressor().compress(plain)
    store, opts = store_of(settings)
    key = backups.prefix(opts, manifest["backup_id"]) + "postgres/services/00000.forged.data.zst"
    store.put(key, stored)
    chunk = {"n": 0, "key": key, "rows": len(rows), "bytes_raw": len(plain), "bytes_stored": len(stored),
             "sha256": hashlib.sha256(stored).hexdigest()}
    table = {**t, "rows": len(rows), "bytes_raw": len(plain), "bytes_stored": len(stored), "chunks": [chunk]}
    return {**manifest, "encryption": None, "options": {**manifest["options"], "encrypt": False},
            "tables": [table], "totals": {**manifest["totals"], "rows": len(rows), "chunks": 1}}


def put_back_billing(settings: Any) -> None:
    with pg_connect(settings, autocommit=True) as pg:
        pg.execute("update services set name = 'billing' where name = 'forged'")


@pytest.mark.parametrize("keep_auth", [True, False], ids=["mac-left-in", "mac-removed"])
def test_the_forgery_of_the_issue_is_refused_by_validate_and_restore(encrypted: Any, keep_auth: bool) -> None:
    settings, backup_id, original = encrypted
    forged = forged_services(settings, original)
    if not keep_auth:
        forged.pop("auth", None)
    put_manifest(settings, forged)
    before = hashes(settings)
    try:
        proc = run_cli("backup", "validate", backup_id)
        refused(proc, backup_id)
        proc = run_cli("restore", backup_id, "--tables", "services")
        refused(proc, backup_id)
        assert "--allow-unauthenticated" in proc.stderr if not keep_auth else "altered" in proc.stderr
        assert hashes(settings) == before
    finally:
        put_back_billing(settings)
    listed = {b["backup_id"]: b for b in commands.backup_list(settings)}
    # a MAC that fails is a failed backup; a manifest without one lists as complete but unauthenticated
    assert listed[backup_id]["state"] == ("failed" if keep_auth else "complete")
    assert listed[backup_id]["authenticated"] is False


def drop_chunk(m: dict[str, Any]) -> None:
    t = next(t for t in m["tables"] if t["name"] == "work_tasks")
    t["chunks"] = t["chunks"][:-1]


def reorder_columns(m: dict[str, Any]) -> None:
    t = next(t for t in m["tables"] if t["name"] == "services")
    cols = t["columns"]
    i, j = [c["name"] for c in cols].index("name"), [c["name"] for c in cols].index("description")
    cols[i], cols[j] = cols[j], cols[i]  # both text: a COPY would load each into the other, silently


def rename_table(m: dict[str, Any]) -> None:
    m["tables"] = [t for t in m["tables"] if t["name"] != "dependencies"]
    next(t for t in m["tables"] if t["name"] == "services")["name"] = "dependencies"


EDITS: dict[str, tuple[Callable[[dict[str, Any]], None], str]] = {
    "dropped-chunk": (drop_chunk, "work_tasks"),
    "reordered-columns": (reorder_columns, "services"),
    "renamed-table": (rename_table, "dependencies"),
}


@pytest.mark.parametrize("edit", list(EDITS))
def test_an_edited_manifest_with_its_checksum_recomputed_is_refused(encrypted: Any, edit: str) -> None:
    settings, backup_id, original = encrypted
    change, table = EDITS[edit]
    edited = json.loads(json.dumps(original))
    change(edited)
    put_manifest(settings, edited)
    before = hashes(settings)
    refused(run_cli("backup", "validate", backup_id), backup_id, "altered")
    refused(run_cli("restore", backup_id, "--tables", table), backup_id, "altered")
    assert hashes(settings) == before


def unkeyed(settings: Any, encrypt: bool) -> str:
    """A backup as an installation without a key writes it (or today's code, format 1): no MAC."""
    report = backup(settings, encryption_enabled=encrypt)
    assert report["ok"], report
    manifest = raw_manifest(settings, report["backup_id"])
    put_manifest(settings, {k: v for k, v in manifest.items() if k not in ("checksum", "auth")})
    return report["backup_id"]


def test_a_backup_made_without_a_key_needs_allow_unauthenticated_where_a_key_is_configured(data: Any) -> None:
    backup_id = unkeyed(data, encrypt=False)
    before = hashes(data)
    # an installation without any key accepts it, as before (the workers here have a key: the check itself)
    opts = backups.store_options(data)
    keyless = data.model_copy(update={"backup_encryption_key": None, "backup_kms_key_id": None})
    assert backups.read_manifest(backups.store_for(data, opts), opts, backup_id, keyless)["backup_id"] == backup_id
    # a CLI without a key cannot waive the workers' check: they have a key, and refuse it
    code, checked = cli_json("backup", "validate", backup_id,
                             env={"BACKUP_ENCRYPTION_KEY": "", "BACKUP_KMS_KEY_ID": ""})
    assert code != 0 and not checked["ok"] and "--allow-unauthenticated" in checked["error"], checked
    # one with a key refuses it, naming the flag
    refused(run_cli("backup", "validate", backup_id), backup_id, "--allow-unauthenticated")
    refused(run_cli("restore", backup_id, "--tables", "services"), backup_id, "--allow-unauthenticated")
    # unless the operator says so
    code, checked = cli_json("backup", "validate", backup_id, "--allow-unauthenticated")
    assert code == 0 and checked["ok"], checked
    code, restored = cli_json("restore", backup_id, "--tables", "services", "--allow-unauthenticated")
    assert code == 0 and restored["ok"], restored
    assert hashes(data) == before


def test_an_encrypted_backup_of_format_1_restores_with_allow_unauthenticated(data: Any) -> None:
    backup_id = unkeyed(data, encrypt=True)
    assert raw_manifest(data, backup_id)["format_version"] == 1
    refused(run_cli("restore", backup_id, "--tables", "services"), "--allow-unauthenticated")
    code, restored = cli_json("restore", backup_id, "--tables", "services", "--allow-unauthenticated")
    assert code == 0 and restored["ok"], restored


def test_a_kms_backup_is_authenticated_through_kms_and_an_edit_is_refused(data: Any, bucket: str) -> None:
    kms_key = aws_client(data, "kms").create_key()["KeyMetadata"]["KeyId"]
    env = {"S3_BUCKET_NAME": bucket, "BACKUP_KMS_KEY_ID": kms_key, "BACKUP_ENCRYPTION_KEY": ""}
    code, report = cli_json("backup", "--chunk-rows", "1000", "--no-encrypt", env=env, timeout=300)
    assert code == 0 and report["ok"], report
    s3, key = aws_client(data, "s3"), f"backups/{report['backup_id']}/manifest.json"
    manifest = json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
    assert manifest["auth"]["key"] == "kms" and manifest["auth"]["kms_key_id"] == kms_key
    assert "wrapped_key" in manifest["auth"] and manifest["encryption"] is None
    code, checked = cli_json("backup", "validate", report["backup_id"], env=env)
    assert code == 0 and checked["ok"], checked
    drop_chunk(manifest)
    manifest["checksum"] = backups.manifest_checksum(manifest)
    s3.put_object(Bucket=bucket, Key=key, Body=json.dumps(manifest).encode())
    refused(run_cli("backup", "validate", report["backup_id"], env=env), "altered")
    other = aws_client(data, "kms").create_key()["KeyMetadata"]["KeyId"]  # not the key it was made with
    refused(run_cli("backup", "validate", report["backup_id"], env={**env, "BACKUP_KMS_KEY_ID": other}),
            "BACKUP_KMS_KEY_ID")
