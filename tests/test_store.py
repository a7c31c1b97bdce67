"""The object store: S3 (moto's server) and local folder pass the same tests."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from worker.store import PART_SIZE, LocalStore, ObjectStore, S3Store


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ObjectStore]:
    if request.param == "local":
        yield LocalStore(tmp_path / "store")
    else:
        settings = request.getfixturevalue("settings")
        bucket = request.getfixturevalue("bucket")
        s3 = S3Store(settings, bucket)
        yield s3
        s3.delete([o.key for o in s3.list("")])


def test_put_then_get_returns_the_same_bytes(store: ObjectStore) -> None:
    store.put("a/b/one.bin", b"hello")
    assert store.get("a/b/one.bin") == b"hello"


def test_large_object_streams_in_parts_and_reads_back_whole(store: ObjectStore) -> None:
    block = os.urandom(1024 * 1024)
    digest = hashlib.sha256()
    with store.writer("big/blob.bin") as out:
        for i in range(2 * PART_SIZE // len(block) + 3):  # > 2 parts
            chunk = block[i % 7:] + block[:i % 7]
            out.write(chunk)
            digest.update(chunk)
    back = hashlib.sha256()
    with store.open("big/blob.bin") as f:
        while data := f.read(1 << 20):
            back.update(data)
    assert back.hexdigest() == digest.hexdigest()
    if isinstance(store, S3Store):
        etag = store.client.head_object(Bucket=store.bucket, Key="big/blob.bin")["ETag"]
        assert "-" in etag  # a multipart upload's ETag ends in -<parts>


def test_a_writer_that_fails_leaves_no_object(store: ObjectStore) -> None:
    with pytest.raises(RuntimeError):
        with store.writer("x/partial.bin") as out:
            out.write(os.urandom(PART_SIZE + 1024))  # the first part may already be uploaded
            raise RuntimeError("the source failed mid-way")
    assert [o.key for o in store.list("x/")] == []
    with pytest.raises(FileNotFoundError):
        store.get("x/partial.bin")


def test_list_by_prefix_and_delete(store: ObjectStore) -> None:
    for key in ("p/1/a", "p/1/b", "p/2/c", "q/d"):
        store.put(key, key.encode())
    assert sorted(o.key for o in store.list("p/1/")) == ["p/1/a", "p/1/b"]
    assert {o.key: o.size for o in store.list("p/")} == {"p/1/a": 5, "p/1/b": 5, "p/2/c": 5}
    store.delete(["p/1/a", "p/2/c"])
    assert sorted(o.key for o in store.list("")) == ["p/1/b", "q/d"]


def test_missing_key_raises_file_not_found(store: ObjectStore) -> None:
    with pytest.raises(FileNotFoundError):
        store.open("nope/never")


def test_check_reports_a_usable_store(store: ObjectStore) -> None:
    assert store.url() in store.check()


def test_local_store_refuses_keys_that_leave_it(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "s")
    with pytest.raises(ValueError):
        store.put("../escape", b"x")
    assert not (tmp_path / "escape").exists()


def test_missing_bucket_names_the_bucket(settings: Any) -> None:
    from worker.errors import ServiceUnavailable

    with pytest.raises(ServiceUnavailable, match="no-such-bucket-xyz"):
        S3Store(settings, "no-such-bucket-xyz").check()


def test_local_store_syncs_the_file_before_its_rename_and_the_folders_after(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """A power cut after a write returns must not lose the object's name (issue 10 item 10): the file is synced
    before os.replace, and the folder that holds the new name (and any folder created for it) after."""
    events: list[tuple[str, str]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace(src: Any, dst: Any) -> None:
        real_replace(src, dst)
        events.append(("replace", str(dst)))

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    root = tmp_path / "store"
    root.mkdir()
    LocalStore(root).put("backups/b1/postgres/services/00000.x.data", b"rows")
    target = root / "backups/b1/postgres/services/00000.x.data"
    at = events.index(("replace", str(target)))
    assert [e for e in events[:at] if e[0] == "fsync" and e[1].endswith(".part")], events  # the data first
    synced_after = {path for kind, path in events[at + 1:] if kind == "fsync"}
    assert str(target.parent) in synced_after, events  # the new name
    assert str(root) in synced_after, events  # `backups/`, created by this write, is itself a name in the root


def test_an_s3_delete_that_refuses_some_keys_fails_naming_one(settings: Any, bucket: str) -> None:
    """A quiet DeleteObjects answers 200 and lists the keys it did not delete: that is a failure, not a success.
    (moto does not refuse single keys of a batch; botocore's Stubber stands in for S3's answer.)"""
    from botocore.stub import Stubber

    from worker.errors import ServiceUnavailable

    s3 = S3Store(settings, bucket)
    with Stubber(s3.client) as stub:
        stub.add_response("delete_objects", {"Errors": [{"Key": "backups/x/manifest.json", "Code": "AccessDenied",
                                                         "Message": "Access Denied"}]})
        with pytest.raises(ServiceUnavailable, match="did not delete 1 object.*manifest.json.*AccessDenied"):
            s3.delete(["backups/x/manifest.json", "backups/x/a"])
