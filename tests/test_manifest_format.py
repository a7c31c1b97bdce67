"""The manifest's format (worker/manifest.py): its version is checked on read, its shape is the model's, and the
model keeps every field a real backup writes. A manifest of a format this build does not read is refused by
`backup validate` and `restore` (exit 2, one line naming the version found and the versions read), changing
nothing; `backup list` still lists it as complete (so that retention never takes it for a failed leftover)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from conftest import run_cli
from test_backup import backup, data  # noqa: F401 - `data` is a fixture
from test_restore import hashes
from worker import backups, commands, manifest
from worker.errors import BadInput


def store_of(settings: Any) -> tuple[Any, dict[str, Any]]:
    opts = backups.store_options(settings)
    return backups.store_for(settings, opts), opts


def manifest_key(opts: dict[str, Any], backup_id: str) -> str:
    return backups.prefix(opts, backup_id) + "manifest.json"


def test_check_format_reads_only_its_versions() -> None:
    manifest.check_format({"format_version": 1}, "b")
    for found in (2, 0, "1", 1.0, True, None):
        with pytest.raises(BadInput) as err:
            manifest.check_format({"format_version": found}, "20261124T101500Z-backup-1a2b3c")
        assert f"format version {found!r}" in str(err.value) and "reads format version 1" in str(err.value)
    with pytest.raises(BadInput, match="format version None"):
        manifest.check_format({}, "b")
    assert (manifest.FORMAT_VERSION == backups.FORMAT_VERSION == 1
            and manifest.FORMAT_VERSION in manifest.READABLE_VERSIONS)


def test_a_malformed_manifest_is_bad_input_naming_the_field() -> None:
    with pytest.raises(BadInput, match=r"malformed \(created_at: Field required\)"):
        manifest.validate({"format_version": 1, "backup_id": "b"}, "b")


@pytest.fixture()
def real(data: Any) -> Any:  # noqa: F811 - the fixture imported above
    report = backup(data)
    assert report["ok"], report
    store, opts = store_of(data)
    original = store.get(manifest_key(opts, report["backup_id"]))
    yield data, report["backup_id"], json.loads(original)
    store.put(manifest_key(opts, report["backup_id"]), original)


def test_the_model_keeps_every_field_of_a_real_manifest(real: Any) -> None:
    settings, backup_id, raw = real
    model = manifest.Manifest.model_validate(raw)
    assert model.model_dump(mode="json", exclude_unset=True) == raw  # nothing dropped, nothing added
    assert {t.store for t in model.tables} == {"postgres", "dynamodb"}
    assert model.auth is not None and model.checksum == raw["checksum"]
    store, opts = store_of(settings)
    # read_manifest returns the stored dict itself: what the checksum and the MAC were computed over
    assert backups.read_manifest(store, opts, backup_id, settings) == raw


@pytest.mark.parametrize("version", [2, "1"])
def test_a_manifest_of_an_unknown_format_is_refused_and_nothing_changes(real: Any, version: Any) -> None:
    settings, backup_id, raw = real
    store, opts = store_of(settings)
    # as a newer build would write it: checksum and MAC valid
    backups.write_manifest(store, opts, {**raw, "format_version": version}, sign_with=settings)
    body = store.get(manifest_key(opts, backup_id))
    before = hashes(settings)
    for args in (["backup", "validate", backup_id], ["restore", backup_id, "--dry-run"],
                 ["restore", backup_id, "--tables", "services"]):
        proc = run_cli(*args)
        assert proc.returncode == 2, (args, proc.returncode, proc.stdout[-2000:], proc.stderr[-2000:])
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1, proc.stderr
        assert backup_id in lines[0] and f"format version {version!r}" in lines[0], lines[0]
        assert "reads format version 1" in lines[0], lines[0]
    assert hashes(settings) == before
    assert store.get(manifest_key(opts, backup_id)) == body
    listed = {b["backup_id"]: b for b in commands.backup_list(settings)}
    assert (listed[backup_id]["state"], listed[backup_id]["authenticated"]) == ("complete", True)
