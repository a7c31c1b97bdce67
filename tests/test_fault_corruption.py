"""Corrupted backups (issue 14): every kind of damage is detected by `worktask backup validate ID` and refused
by `worktask restore ID` before anything of the damaged table is written, each with its own message.

Cases covered end to end elsewhere (named in docs/RELIABILITY.md, not repeated here): a backup made with
another key (tests/test_hostile_input.py::test_a_backup_made_with_another_key_is_refused_by_the_cli_naming_
both_keys), a dropped chunk entry, reordered columns and a renamed table in an edited manifest
(tests/test_manifest_auth.py::test_an_edited_manifest_with_its_checksum_recomputed_is_refused).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import cli_json, run_cli, run_job
from test_backup import backup, make_data
from test_manifest_auth import put_manifest, raw_manifest, refused
from test_restore import hashes
from worker import backups, commands, render
from worker.connections import aws_client

pytestmark = [pytest.mark.fault]


@pytest.fixture(scope="module")
def made(migrated: Any) -> tuple[Any, str, str]:
    """Two complete encrypted backups of the same data, on the local store: the victim and another one."""
    make_data(migrated)
    first, second = backup(migrated), backup(migrated)
    assert first["ok"] and second["ok"], (first, second)
    return migrated, first["backup_id"], second["backup_id"]


@pytest.fixture()
def victim(made: tuple[Any, str, str], tmp_path: Path) -> Iterator[dict[str, Any]]:
    """The victim backup, its folder put back byte for byte after the test."""
    settings, backup_id, other = made
    opts = backups.store_options(settings)
    root = Path(opts["backup_dir"])
    folder = root / backups.prefix(opts, backup_id)
    shutil.copytree(folder, tmp_path / "saved")
    yield {"settings": settings, "id": backup_id, "root": root, "manifest": raw_manifest(settings, backup_id),
           "other": raw_manifest(settings, other)}
    shutil.rmtree(folder)
    shutil.copytree(tmp_path / "saved", folder)


def chunk_of(manifest: dict[str, Any], table: str, n: int) -> dict[str, Any]:
    return next(t for t in manifest["tables"] if t["name"] == table)["chunks"][n]


# chunk damage: (table, what is done to the store, words of the reason) ------------------------------------------

def flip(v: dict[str, Any], table: str) -> list[str]:
    path = v["root"] / chunk_of(v["manifest"], table, 0)["key"]
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    path.write_bytes(bytes(raw))
    return ["checksum mismatch", f"{len(raw)} bytes stored of {len(raw)}"]


def truncate(v: dict[str, Any], table: str) -> list[str]:
    path = v["root"] / chunk_of(v["manifest"], table, 0)["key"]
    raw = path.read_bytes()
    path.write_bytes(raw[:-20])
    return ["checksum mismatch", f"{len(raw) - 20} bytes stored of {len(raw)}"]


def missing(v: dict[str, Any], table: str) -> list[str]:
    (v["root"] / chunk_of(v["manifest"], table, 0)["key"]).unlink()
    return ["missing from the store"]


def from_another_backup(v: dict[str, Any], table: str) -> list[str]:
    """The same table's same chunk, from the other backup of the same data: valid bytes, wrong backup."""
    theirs = chunk_of(v["other"], table, 0)
    ours = chunk_of(v["manifest"], table, 0)
    shutil.copyfile(v["root"] / theirs["key"], v["root"] / ours["key"])
    return ["checksum mismatch", f"expected {ours['sha256'][:12]}", f"sha256 {theirs['sha256'][:12]}"]


def from_another_table(v: dict[str, Any], table: str) -> list[str]:
    """Another table's chunk of this very backup (one no other case damages), put in place of this one."""
    theirs = chunk_of(v["manifest"], "workgroup_skills", 0)
    ours = chunk_of(v["manifest"], table, 0)
    shutil.copyfile(v["root"] / theirs["key"], v["root"] / ours["key"])
    return ["checksum mismatch", f"sha256 {theirs['sha256'][:12]}"]


# one damage per table, all in one backup: one validate and one restore see them all, each named with its own reason
CHUNK_DAMAGE: dict[str, tuple[str, Callable[[dict[str, Any], str], list[str]]]] = {
    "flipped-byte": ("work_tasks", flip),
    "truncated": ("todo_items", truncate),
    "missing": ("services", missing),
    "from-another-backup": ("quality_checks", from_another_backup),
    "from-another-table": ("deliverables", from_another_table),
    "dynamodb-flipped-byte": ("", flip),  # the DynamoDB table's chunk: verified before any item is written
}


def test_damaged_chunks_are_each_named_by_validate_and_their_tables_are_not_touched_by_restore(
        victim: dict[str, Any]) -> None:
    settings, backup_id = victim["settings"], victim["id"]
    expected: dict[str, tuple[str, list[str]]] = {}  # table -> (chunk key, words of its reason)
    for table, damage in CHUNK_DAMAGE.values():
        table = table or settings.dynamo_table_name
        expected[table] = (chunk_of(victim["manifest"], table, 0)["key"], damage(victim, table))
    before = hashes(settings)

    code, checked = cli_json("backup", "validate", backup_id)
    assert code == 1 and not checked["ok"], checked
    assert sorted((b["table"], b["chunk"], b["path"]) for b in checked["bad_chunks"]) == \
        sorted((t, 0, key) for t, (key, _) in expected.items()), checked["bad_chunks"]
    for b in checked["bad_chunks"]:
        for w in expected[b["table"]][1]:
            assert w in b["reason"], (b["table"], w, b["reason"])

    # every damaged table and one sound one (restored: the others are, README "restore")
    code, restored = cli_json("restore", backup_id, "--tables", ",".join([*expected, "quality_standards"]),
                              "--exact", timeout=300)
    assert code == 1 and not restored["ok"], restored
    assert [t["name"] for t in restored["tables"]] == ["quality_standards"], restored
    assert sorted(x["name"] for x in restored["skipped"]) == sorted(expected), restored["skipped"]
    for x in restored["skipped"]:
        key, words = expected[x["name"]]
        assert x["reason"].startswith(f"not touched: chunk 0 ({key})"), x
        for w in words:
            assert w in x["reason"], (w, x)
        assert x["name"] in restored["error"], restored["error"]
    assert hashes(settings) == before  # every table and the DynamoDB items: nothing of a damaged table written


def test_an_extra_chunk_in_the_store_is_named_by_validate_and_never_read_by_restore(victim: dict[str, Any]) -> None:
    """An object in a table's folder that the manifest does not list (finalize removes every other attempt's
    object): validate names it; a restore reads only the listed, checksummed chunks, so it writes exactly the
    backup's rows whatever the object holds, and is not refused (a good backup at 3 a.m.), but says it saw the
    object (one LIST of the backup's folder), in its report and on its output."""
    settings, backup_id = victim["settings"], victim["id"]
    ours = chunk_of(victim["manifest"], "services", 0)
    extra = ours["key"].replace("/00000.", "/00001.")
    shutil.copyfile(victim["root"] / chunk_of(victim["other"], "work_tasks", 0)["key"], victim["root"] / extra)
    before = hashes(settings)
    code, checked = cli_json("backup", "validate", backup_id)
    assert code == 1 and not checked["ok"], checked
    assert [(b["table"], b["chunk"], b["path"]) for b in checked["bad_chunks"]] == [("services", 1, extra)], checked
    assert "not in the manifest" in checked["bad_chunks"][0]["reason"], checked
    code, restored = cli_json("restore", backup_id, "--tables", "services")
    assert code == 0 and [(t["name"], t["rows"]) for t in restored["tables"]] == [("services", ours["rows"])], restored
    assert hashes(settings) == before
    assert restored["unlisted"] == [extra], restored
    with render.out.capture() as shown:  # what the restore prints without --json
        render.render_restore(restored)
    said = [line for line in shown.get().splitlines() if extra in line]
    assert said and "not in the manifest" in said[0] and "not read" in said[0], shown.get()
    assert f"worktask backup validate {backup_id}" in said[0], said


# manifest edits, by someone without the key (the unkeyed checksum recomputed) ------------------------------------

def changed_row_count(m: dict[str, Any]) -> str:
    chunk_of(m, "work_tasks", 0)["rows"] += 1
    next(t for t in m["tables"] if t["name"] == "work_tasks")["rows"] += 1
    m["totals"]["rows"] += 1
    return "work_tasks"


def chunk_key_elsewhere(m: dict[str, Any], other: dict[str, Any]) -> str:
    """work_tasks' first chunk pointed at the other backup's, its checksum and sizes copied with it."""
    mine, theirs = chunk_of(m, "work_tasks", 0), chunk_of(other, "work_tasks", 0)
    mine.update({k: theirs[k] for k in ("key", "sha256", "bytes_stored", "bytes_raw", "rows")})
    return "work_tasks"


def dotdot_path(m: dict[str, Any], other: dict[str, Any]) -> str:
    """The same, through `..` from this backup's own folder."""
    mine, theirs = chunk_of(m, "work_tasks", 0), chunk_of(other, "work_tasks", 0)
    mine.update({k: theirs[k] for k in ("sha256", "bytes_stored", "bytes_raw", "rows")})
    mine["key"] = theirs["key"].replace(f"/{other['backup_id']}/", f"/{m['backup_id']}/../{other['backup_id']}/")
    return "work_tasks"


def extra_chunk_entry(m: dict[str, Any], other: dict[str, Any]) -> str:
    t = next(t for t in m["tables"] if t["name"] == "services")
    t["chunks"].append({**chunk_of(other, "services", 0), "n": len(t["chunks"])})
    return "services"


def renamed_table(m: dict[str, Any]) -> str:
    next(t for t in m["tables"] if t["name"] == "services")["name"] = "services_restored"
    return "services_restored"


MANIFEST_EDITS: dict[str, Callable[..., str]] = {
    "changed-row-count": lambda m, other: changed_row_count(m),
    "chunk-key-of-another-backup": chunk_key_elsewhere,
    "path-with-dotdot": dotdot_path,
    "extra-chunk-entry": extra_chunk_entry,
    "changed-table-name": lambda m, other: renamed_table(m),
}


@pytest.mark.parametrize("edit", list(MANIFEST_EDITS))
def test_an_edited_manifest_is_refused_by_validate_and_restore_before_anything_is_read(
        victim: dict[str, Any], edit: str) -> None:
    settings, backup_id = victim["settings"], victim["id"]
    edited = json.loads(json.dumps(victim["manifest"]))
    table = MANIFEST_EDITS[edit](edited, victim["other"])
    put_manifest(settings, edited)
    before = hashes(settings)
    refused(run_cli("backup", "validate", backup_id), backup_id, "fails its MAC", "altered")
    refused(run_cli("restore", backup_id, "--tables", table), backup_id, "fails its MAC", "altered")
    assert hashes(settings) == before


@pytest.fixture(scope="module")
def plain(made: tuple[Any, str, str]) -> tuple[Any, str, str]:
    """Two unencrypted backups of the same data, the first's manifest without its MAC: what a backup made without
    a key looks like (no encryption, no authentication), read with --allow-unauthenticated."""
    settings = made[0]
    first, second = (run_job(settings, lambda: commands.backup(settings, True, False, 1000), 300) for _ in range(2))
    assert first["ok"] and second["ok"], (first, second)
    return settings, first["backup_id"], second["backup_id"]


# edit: (the table it is restored by, what validate says, what restore says): each names what was changed
UNAUTHENTICATED = {
    "changed-row-count": ("work_tasks", "1 bad chunk", "not touched: chunk 0"),
    "changed-table-name": ("services_restored", "in the folder of table services of this backup, not in its table's "
                           "folder", None),
    "chunk-key-of-another-backup": ("work_tasks", "of another backup ({other})", None),
    "path-with-dotdot": ("work_tasks", "a path that climbs ('..')", None),
}


@pytest.mark.parametrize("edit", list(UNAUTHENTICATED))
def test_each_edit_of_an_unauthenticated_manifest_is_refused_with_its_own_message(
        plain: tuple[Any, str, str], edit: str) -> None:
    """Without a MAC and with --allow-unauthenticated (the operator vouches for the manifest), its checksum
    recomputed: a changed row count is the chunk's count against the manifest's (validate names the chunk, restore
    skips the table); a chunk stored anywhere but its own table's folder of this backup is refused before anything
    is enqueued (exit 2), each place named for what it is: another table's folder, another backup, a `..` path."""
    settings, backup_id, other_id = plain
    saved = raw_manifest(settings, backup_id)
    mine = {k: v for k, v in json.loads(json.dumps(saved)).items() if k != "auth"}
    table, said_by_validate, said_by_restore = UNAUTHENTICATED[edit]
    MANIFEST_EDITS[edit](mine, raw_manifest(settings, other_id))
    put_manifest(settings, mine)
    before = hashes(settings)
    try:
        words = said_by_validate.format(other=other_id)
        if said_by_restore is None:  # the manifest itself is refused, by both, in one line
            for args in (("backup", "validate", backup_id), ("restore", backup_id, "--tables", table)):
                proc = run_cli(*args, "--allow-unauthenticated")
                refused(proc, backup_id, chunk_of(mine, table, 0)["key"], words, "it was altered")
        else:  # the chunk's rows against the manifest's
            code, checked = cli_json("backup", "validate", backup_id, "--allow-unauthenticated")
            assert code == 1 and [(b["table"], b["chunk"]) for b in checked["bad_chunks"]] == [(table, 0)], checked
            assert checked["error"].startswith(words), checked["error"]
            n = chunk_of(mine, table, 0)["rows"]
            assert checked["bad_chunks"][0]["reason"] == f"{n - 1} rows, manifest says {n}", checked["bad_chunks"]
            code, restored = cli_json("restore", backup_id, "--tables", table, "--allow-unauthenticated")
            assert code == 1 and [x["name"] for x in restored["skipped"]] == [table], restored
            assert restored["skipped"][0]["reason"].startswith(said_by_restore), restored["skipped"]
            assert f"{n - 1} rows, manifest says {n}" in restored["skipped"][0]["reason"], restored["skipped"]
        assert hashes(settings) == before
    finally:
        put_manifest(settings, saved)


def test_a_disabled_kms_key_is_named_by_validate_and_restore(made: tuple[Any, str, str], bucket: str) -> None:
    settings = made[0]
    kms = aws_client(settings, "kms")
    kms_key = kms.create_key()["KeyMetadata"]["KeyId"]
    env = {"S3_BUCKET_NAME": bucket, "BACKUP_KMS_KEY_ID": kms_key}
    code, report = cli_json("backup", "--chunk-rows", "100000", "--skip-dynamodb", env=env, timeout=300)
    assert code == 0 and report["ok"], report
    kms.disable_key(KeyId=kms_key)
    before = hashes(settings)
    try:
        for args in (("backup", "validate", report["backup_id"]),
                     ("restore", report["backup_id"], "--tables", "services")):
            refused(run_cli(*args, env=env), kms_key, "disabled", "enable-key")
        assert hashes(settings) == before
    finally:
        kms.enable_key(KeyId=kms_key)
    code, checked = cli_json("backup", "validate", report["backup_id"], env=env)  # enabled again: it validates
    assert code == 0 and checked["ok"], checked
