"""`worktask backup rekey` on the real store, moto's KMS and real workers that hold only the new key."""

from __future__ import annotations

import base64
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from conftest import ROOT, own_worker, run_cli, run_job
from tasks.verify import unlisted
from test_backup import make_data
from test_restore import hashes, scramble
from worker import backups, commands, markers
from worker.archive import read_chunk
from worker.connections import aws_client
from worker.store import LocalStore


def new_key() -> str:
    return base64.b64encode(secrets.token_bytes(32)).decode()


def rekey(*args: str, env: dict[str, str], stdin: str | None = None) -> tuple[int, Any, str]:
    proc = subprocess.run([sys.executable, "-m", "worker.cli", "backup", "rekey", *args, "--json"], input=stdin,
                          capture_output=True, text=True, env={**os.environ, **env}, timeout=120, cwd=ROOT)
    return proc.returncode, json.loads(proc.stdout) if proc.stdout.strip() else None, proc.stderr


def worker_env(settings: Any, **keys: str) -> dict[str, str]:
    """The session's environment for a worker of the test's own, with these keys and no other."""
    env = {k: v for k, v in os.environ.items() if k not in ("BACKUP_ENCRYPTION_KEY", "BACKUP_KMS_KEY_ID")}
    return {**env, "CELERY_BROKER_URL": settings.celery_broker_url, "CELERY_RESULT_BACKEND": settings.result_backend,
            **keys}


def cli_env(folder: Path, key: str = "", kms: str = "") -> dict[str, str]:
    """A CLI on the test's store with only these keys ("" is unset)."""
    return {"BACKUP_DIR": str(folder), "BACKUP_ENCRYPTION_KEY": key, "BACKUP_KMS_KEY_ID": kms}


def keyed(settings: Any, folder: Path, key: str | None = None, kms: str | None = None) -> Any:
    return settings.model_copy(update={"backup_dir": folder, "backup_kms_key_id": kms,
                                       "backup_encryption_key": SecretStr(key) if key else None})


def readable(settings: Any, backup_id: str) -> bool:
    """A reader with these settings authenticates the manifest, unwraps the data key and decodes a chunk."""
    opts = backups.store_options(settings)
    store = backups.store_for(settings, opts)
    try:
        m = backups.read_manifest(store, opts, backup_id, settings)
        key = backups.data_key(settings, backup_id, m["encryption"])
    except Exception:  # noqa: BLE001 - any refusal is "not readable with this key"
        return False
    t = next(t for t in m["tables"] if t["name"] == "services")
    c = t["chunks"][0]
    with store.open(c["key"]) as f:
        blocks, _ = read_chunk(f, backups.chunk_aad(backup_id, "postgres", "services", c["n"]),
                               m["options"]["compress"], key)
        return b"".join(blocks).count(b"\n") == c["rows"]


def cli(*args: str, env: dict[str, str]) -> tuple[int, Any, str]:
    proc = run_cli(*args, "--json", env=env, timeout=300)
    return proc.returncode, json.loads(proc.stdout) if proc.stdout.strip() else None, proc.stderr


@pytest.fixture(scope="module")
def made(migrated: Any, tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Path, list[str]]:
    """Two backups made with the session's raw key, in a store of this module's own, each validated."""
    make_data(migrated)
    folder = tmp_path_factory.mktemp("rekey-store")
    s = migrated.model_copy(update={"backup_dir": folder})
    ids = []
    for _ in range(2):
        backup_id = run_job(s, lambda: commands.backup(s, True, True, 5000), 300)["backup_id"]
        assert run_job(s, lambda: commands.backup_validate(s, backup_id), 300)["ok"]  # noqa: B023 - run at once
        ids.append(backup_id)
    return migrated, folder, ids


def restores_exactly(settings: Any, backup_id: str, env: dict[str, str]) -> None:
    before = hashes(settings)
    scramble(settings)
    code, restored, err = cli("restore", backup_id, "--exact", env=env)
    assert code == 0 and restored["ok"] and restored["skipped"] == [], (restored, err)
    assert hashes(settings) == before


@pytest.mark.slow  # ~30 s: a full restore on a worker of its own
def test_a_raw_key_backup_rekeyed_to_kms_validates_and_restores_with_only_the_kms_key(made: Any) -> None:
    settings, folder, (backup_id, _) = made
    old = settings.backup_encryption_key.get_secret_value()
    kms = aws_client(settings, "kms").create_key()["KeyMetadata"]["KeyId"]
    store, opts = LocalStore(folder), {**backups.store_options(settings), "backup_dir": str(folder)}
    chunks_before = {o.key: o.modified for o in store.list(backups.prefix(opts, backup_id)) if "/postgres/" in o.key}
    validated = markers.read(store, opts, backup_id, markers.VALIDATED)

    code, report, err = rekey(backup_id, "--new-kms-key-id", kms, env=cli_env(folder, key=old))
    assert code == 0 and report["ok"], (report, err)
    assert report["backups"] == [{"backup_id": backup_id, "outcome": "rekeyed",
                                  "reason": f"now under the KMS key {kms}"}]
    manifest = json.loads(store.get(backups.prefix(opts, backup_id) + "manifest.json"))
    assert manifest["encryption"]["wrapping"] == "kms" and manifest["encryption"]["kms_key_id"] == kms
    assert manifest["auth"]["key"] == "kms" and old not in json.dumps(manifest)
    # no chunk was rewritten; the validation's marker stays as it was
    assert {o.key: o.modified for o in store.list(backups.prefix(opts, backup_id)) if "/postgres/" in o.key} \
        == chunks_before
    assert markers.read(store, opts, backup_id, markers.VALIDATED) == validated and validated["ok"]
    assert readable(keyed(settings, folder, kms=kms), backup_id)
    assert not readable(keyed(settings, folder, key=old), backup_id)

    only_kms = cli_env(folder, kms=kms)  # the CLI and the workers without BACKUP_ENCRYPTION_KEY
    with own_worker(settings, "kmsonly", worker_env(settings, BACKUP_KMS_KEY_ID=kms)):
        code, checked, err = cli("backup", "validate", backup_id, env=only_kms)
        assert code == 0 and checked["ok"] and checked["bad_chunks"] == [], (checked, err)
        restores_exactly(settings, backup_id, only_kms)
    # the old key alone is refused, saying what the backup needs now
    proc = run_cli("backup", "validate", backup_id, env=cli_env(folder, key=old))
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert f"made with KMS key {kms}" in proc.stderr and "BACKUP_KMS_KEY_ID is not set" in proc.stderr
    # again: already under it, left alone
    code, report, err = rekey(backup_id, "--new-kms-key-id", kms, env=cli_env(folder, kms=kms))
    assert code == 0 and [b["outcome"] for b in report["backups"]] == ["already"], (report, err)


def test_a_raw_key_backup_rekeyed_to_a_new_raw_key_from_stdin_restores_with_only_the_new_key(made: Any) -> None:
    settings, folder, (_, backup_id) = made
    old, new = settings.backup_encryption_key.get_secret_value(), new_key()
    code, report, err = rekey(backup_id, "--new-key", "-", env=cli_env(folder, key=old), stdin=new + "\n")
    assert code == 0 and [b["outcome"] for b in report["backups"]] == ["rekeyed"], (report, err)
    assert readable(keyed(settings, folder, key=new), backup_id)
    only_new = cli_env(folder, key=new)
    with own_worker(settings, "newkey", worker_env(settings, BACKUP_ENCRYPTION_KEY=new)):
        code, checked, err = cli("backup", "validate", backup_id, env=only_new)
        assert code == 0 and checked["ok"], (checked, err)
        restores_exactly(settings, backup_id, only_new)
    proc = run_cli("backup", "validate", backup_id, env=cli_env(folder, key=old))
    assert proc.returncode == 2 and "cannot be authenticated here" in proc.stderr, proc.stderr
    assert "BACKUP_ENCRYPTION_KEY here is" in proc.stderr  # names both keys by their hash prefix


def _freeze(folder: Path) -> bool:
    """Make the folder refuse new files, for real: immutable (root ignores permissions), else read-only."""
    if os.geteuid() == 0:
        return shutil.which("chattr") is not None and \
            subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode == 0
    folder.chmod(0o555)
    return True


def _thaw(folder: Path) -> None:
    if os.geteuid() == 0:
        subprocess.run(["chattr", "-i", str(folder)], check=True)
    else:
        folder.chmod(0o755)


def test_a_rekey_that_fails_half_way_leaves_each_backup_readable_with_one_of_the_keys(
        migrated: Any, tmp_path: Path) -> None:
    make_data(migrated)
    s = migrated.model_copy(update={"backup_dir": tmp_path})
    old, new = migrated.backup_encryption_key.get_secret_value(), new_key()
    ids = []
    for encrypt in (True, True, False):  # one without encryption: it gets only the new MAC
        report = run_job(s, lambda: commands.backup(s, True, encrypt, 100_000, True), 300)  # noqa: B023
        assert report["ok"], report
        ids.append(report["backup_id"])
    ids.sort()  # the order --all takes them in (by id: two made in one second sort by their suffix)
    key_file = tmp_path.parent / f"{tmp_path.name}.key"
    key_file.write_text(new + "\n")
    opts = backups.store_options(s)
    second = tmp_path / opts["prefix"] / ids[1]
    if not _freeze(second):
        pytest.skip("cannot make a folder refuse writes here (chattr +i unsupported)")
    try:  # the PUT of the second manifest fails: the store refuses it
        code, report, err = rekey("--all", "--new-key", str(key_file), env=cli_env(tmp_path, key=old))
    finally:
        _thaw(second)
    assert code == 1 and not report["ok"], (report, err)
    assert [(b["backup_id"], b["outcome"]) for b in report["backups"]] == \
        [(ids[0], "rekeyed"), (ids[1], "failed"), (ids[2], "rekeyed")], report
    assert "could not be written" in report["backups"][1]["reason"] and ids[1] in report["error"]
    with_old, with_new = keyed(migrated, tmp_path, key=old), keyed(migrated, tmp_path, key=new)
    assert [(readable(with_old, i), readable(with_new, i)) for i in ids] == \
        [(False, True), (True, False), (False, True)]
    for backup_id in ids:  # nothing staged left beside the manifests: validate would not flag anything
        m = backups.read_manifest(LocalStore(tmp_path), opts, backup_id)
        assert unlisted(LocalStore(tmp_path), {**opts, "backup_id": backup_id},
                        {c["key"] for t in m["tables"] for c in t["chunks"]}) == []
    # run again: the two done are left alone, the third is done
    code, report, err = rekey("--all", "--new-key", str(key_file), env=cli_env(tmp_path, key=old))
    assert code == 0 and [b["outcome"] for b in report["backups"]] == ["already", "rekeyed", "already"], (report, err)
    assert all(readable(with_new, i) and not readable(with_old, i) for i in ids)


@pytest.mark.parametrize("case", ["key-on-the-command-line", "no-key", "both-keys", "ids-and-all", "no-ids",
                                  "malformed-id", "unknown-id", "file-without-a-key", "unknown-kms-key"])
def test_bad_input_exits_2_naming_the_fix_and_changes_nothing(made: Any, case: str, tmp_path: Path) -> None:
    settings, folder, ids = made
    store = LocalStore(folder)
    before = {o.key: store.get(o.key) for o in store.list()}
    good = tmp_path / "new.key"
    good.write_text(new_key())
    (tmp_path / "not.key").write_text("hello\n")
    args, expect = {
        "key-on-the-command-line": (["--all", "--new-key", new_key()], "visible to every user"),
        "no-key": (["--all"], "--new-key FILE"),
        "both-keys": (["--all", "--new-key", str(good), "--new-kms-key-id", "alias/x"], "exactly one"),
        "ids-and-all": ([ids[0], "--all", "--new-key", str(good)], "not both"),
        "no-ids": (["--new-key", str(good)], "--all"),
        "malformed-id": (["../etc", "--new-key", str(good)], "malformed"),
        "unknown-id": ([ids[0], "20990101T000000Z-backup-000000", "--new-key", str(good)], "not found"),
        "file-without-a-key": (["--all", "--new-key", str(tmp_path / "not.key")], "does not hold a key"),
        "unknown-kms-key": (["--all", "--new-kms-key-id", "alias/no-such-key"], "--new-kms-key-id 'alias/no-such-key'"),
    }[case]
    code, report, err = rekey(*args, env=cli_env(folder, key=settings.backup_encryption_key.get_secret_value()))
    assert code == 2 and report is None and len(err.strip().splitlines()) == 1, (code, report, err)
    assert expect in err, err
    assert {o.key: store.get(o.key) for o in store.list()} == before


def test_local_store_put_replaces_an_object_whole_or_not_at_all(tmp_path: Path) -> None:
    """What rekey's switch relies on: a PUT that fails part-way leaves the old object, and no temporary file."""
    store = LocalStore(tmp_path)
    store.put("b/manifest.json", b"old" * 1000)

    class Failing:
        sent = 0

        def read(self, n: int = -1) -> bytes:
            self.sent += 1
            if self.sent > 1:
                raise OSError("the source failed part-way")
            return b"new" * 100

    with pytest.raises(OSError):
        store.put("b/manifest.json", Failing())  # type: ignore[arg-type]
    assert store.get("b/manifest.json") == b"old" * 1000
    assert [o.key for o in store.list()] == ["b/manifest.json"]
    store.put("b/manifest.json", b"new")
    assert store.get("b/manifest.json") == b"new" and [o.key for o in store.list()] == ["b/manifest.json"]


def test_kms_unreachable_exits_3_naming_it_and_changes_nothing(made: Any) -> None:
    settings, folder, _ids = made
    store = LocalStore(folder)
    before = {o.key: store.get(o.key) for o in store.list()}
    stack = json.loads((settings.worktask_state_dir / "stack.json").read_text()).get("env", {})
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    env = {**stack, "WORKTASK_IGNORE_STACK": "1", "AWS_ENDPOINT_URL": dead,
           **cli_env(folder, key=settings.backup_encryption_key.get_secret_value())}
    code, report, err = rekey("--all", "--new-kms-key-id", "alias/anything", env=env)
    assert code == 3 and report is None and "KMS" in err and dead in err, (code, err)
    assert {o.key: store.get(o.key) for o in store.list()} == before


def test_on_s3_one_line_per_backup_and_a_manifest_that_fails_its_mac_is_refused(migrated: Any, bucket: str) -> None:
    make_data(migrated)
    prefix = f"rekey-{secrets.token_hex(3)}"
    s = migrated.model_copy(update={"s3_bucket_name": bucket, "backup_prefix": prefix})
    ids = sorted(run_job(s, lambda: commands.backup(s, True, True, 100_000, True), 300)["backup_id"] for _ in range(2))
    s3 = aws_client(migrated, "s3")
    forged_key = f"{prefix}/{ids[1]}/manifest.json"
    forged = json.loads(s3.get_object(Bucket=bucket, Key=forged_key)["Body"].read())
    forged["tables"][0]["chunks"][0]["rows"] += 1  # an edit by someone who can write to the bucket, not sign
    forged["checksum"] = backups.manifest_checksum(forged)
    s3.put_object(Bucket=bucket, Key=forged_key, Body=json.dumps(forged).encode())
    old, new = migrated.backup_encryption_key.get_secret_value(), new_key()
    env = {"S3_BUCKET_NAME": bucket, "BACKUP_PREFIX": prefix, "BACKUP_ENCRYPTION_KEY": old}
    proc = subprocess.run([sys.executable, "-m", "worker.cli", "backup", "rekey", "--all", "--new-key", "-"],
                          input=new, capture_output=True, text=True, env={**os.environ, **env}, timeout=120, cwd=ROOT)
    assert proc.returncode == 1, (proc.stdout, proc.stderr)
    lines = proc.stdout.strip().splitlines()
    assert lines[0].startswith(f"{ids[0]}  rekeyed  now under the key "), lines
    assert lines[1].startswith(f"{ids[1]}  failed  ") and "fails its MAC" in lines[1], lines
    assert lines[2].startswith("2 backup(s) under the key ") and "1 rekeyed, 0 already, 1 failed" in lines[2], lines
    assert json.loads(s3.get_object(Bucket=bucket, Key=forged_key)["Body"].read()) == forged  # left as it was
    with_new = s.model_copy(update={"backup_encryption_key": SecretStr(new)})
    assert readable(with_new, ids[0]) and not readable(s, ids[0])


def test_from_a_kms_key_to_another_then_to_a_raw_key(migrated: Any, tmp_path: Path) -> None:
    """The old key is the installation's KMS key: it unwraps and authenticates; each step needs only the next."""
    make_data(migrated)
    kms = aws_client(migrated, "kms")
    first, second = (kms.create_key()["KeyMetadata"]["KeyId"] for _ in range(2))
    s = keyed(migrated, tmp_path, kms=first)
    backup_id = run_job(s, lambda: commands.backup(s, True, True, 100_000, True), 300)["backup_id"]
    assert backups.read_manifest(LocalStore(tmp_path), backups.store_options(s), backup_id)["encryption"][
        "kms_key_id"] == first
    code, report, err = rekey(backup_id, "--new-kms-key-id", second, env=cli_env(tmp_path, kms=first))
    assert code == 0 and [b["outcome"] for b in report["backups"]] == ["rekeyed"], (report, err)
    assert readable(keyed(migrated, tmp_path, kms=second), backup_id)
    assert not readable(keyed(migrated, tmp_path, kms=first), backup_id)
    raw = new_key()
    code, report, err = rekey(backup_id, "--new-key", "-", env=cli_env(tmp_path, kms=second), stdin=raw)
    assert code == 0 and [b["outcome"] for b in report["backups"]] == ["rekeyed"], (report, err)
    assert readable(keyed(migrated, tmp_path, key=raw), backup_id)
    assert not readable(keyed(migrated, tmp_path, kms=second), backup_id)
