"""The object store: one interface, an S3 and a local-folder implementation.

Writes are streaming and all-or-nothing: an object appears only when its writer closes without
error (S3: the transfer manager's multipart upload is aborted; local: a temporary file is removed).
"""

from __future__ import annotations

import io
import os
import queue
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from botocore.exceptions import BotoCoreError, ClientError

from worker.connections import aws_client
from worker.errors import BadInput, ServiceUnavailable
from worker.settings import Settings

PART_SIZE = 8 * 1024 * 1024  # multipart above this; S3 needs parts of at least 5 MiB


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    modified: datetime


@dataclass(frozen=True)
class OpenUpload:
    """An object begun and never finished (S3 multipart): its parts are stored, and billed, until aborted."""
    key: str
    upload_id: str
    initiated: datetime


class ObjectStore:
    """Keys are '/'-separated relative paths."""

    def url(self, key: str = "") -> str:
        raise NotImplementedError

    @contextmanager
    def writer(self, key: str) -> Iterator[IO[bytes]]:
        """A binary file to write `key` into; the object exists only if the block ends without error."""
        raise NotImplementedError
        yield

    def put(self, key: str, data: bytes | IO[bytes]) -> None:
        with self.writer(key) as out:
            if isinstance(data, bytes):
                out.write(data)
            else:
                while block := data.read(PART_SIZE):
                    out.write(block)

    def open(self, key: str) -> IO[bytes]:
        """A streaming binary reader; FileNotFoundError when the key does not exist."""
        raise NotImplementedError

    def get(self, key: str) -> bytes:
        with self.open(key) as f:
            return f.read()

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        raise NotImplementedError

    def delete(self, keys: list[str]) -> None:
        raise NotImplementedError

    def open_uploads(self, prefix: str = "") -> list[OpenUpload]:
        """Objects begun under the prefix and never finished nor aborted (a writer killed or cut off from the
        store mid-object). A local store has none: its unfinished `.part` files are listed as objects."""
        return []

    def abort(self, uploads: list[OpenUpload]) -> None:
        """Drop these unfinished objects and their stored parts."""

    def check(self) -> str:
        """Raise ServiceUnavailable when the store cannot be used; else one line about it."""
        raise NotImplementedError


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class LocalStore(ObjectStore):
    def __init__(self, root: Path):
        self.root = root.expanduser().resolve()

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if path != self.root and self.root not in path.parents:
            raise ValueError(f"key {key!r} leaves the store")
        return path

    def url(self, key: str = "") -> str:
        return f"file://{self.root / key}" if key else f"file://{self.root}"

    @contextmanager
    def writer(self, key: str) -> Iterator[IO[bytes]]:
        """Durable once the block ends: the data is synced before the rename, and the folder holding the new
        name (and the parent of every folder made for it) after, so that after a power cut a manifest
        cannot have survived while a chunk's rename was lost."""
        path = self._path(key)
        made = [p for p in (path.parent, *path.parent.parents) if self.root in (p, *p.parents) and not p.exists()]
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.part")
        try:
            with open(tmp, "wb") as f:
                yield f
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
            for folder in dict.fromkeys([path.parent, *(p.parent for p in made)]):
                _fsync_dir(folder)
        finally:
            tmp.unlink(missing_ok=True)

    def open(self, key: str) -> IO[bytes]:
        return open(self._path(key), "rb")

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        if not self.root.exists():
            return
        for dirpath, _dirs, files in os.walk(self.root):
            for name in sorted(files):  # .part files of unfinished writers too: leftovers to clean
                full = Path(dirpath) / name
                key = full.relative_to(self.root).as_posix()
                if key.startswith(prefix):
                    st = full.stat()
                    yield ObjectInfo(key, st.st_size, datetime.fromtimestamp(st.st_mtime, UTC))

    def delete(self, keys: list[str]) -> None:
        for key in keys:
            path = self._path(key)
            path.unlink(missing_ok=True)
            for parent in path.parents:  # drop folders left empty
                if parent == self.root or any(parent.iterdir()):
                    break
                parent.rmdir()

    def check(self) -> str:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            probe = self.root / f".probe-{uuid.uuid4().hex[:8]}"
            probe.write_bytes(b"ok")
            probe.unlink()
        except OSError as err:
            raise ServiceUnavailable(f"backup folder {self.root} is not writable: {err.strerror}") from None
        st = os.statvfs(self.root)
        return f"{self.url()} writable, {st.f_bavail * st.f_frsize // 2**30} GiB free"


class _Aborted(Exception):
    pass


class _QueueReader(io.RawIOBase):
    """The read end handed to the transfer manager: blocks from a bounded queue, so memory stays bounded."""

    def __init__(self, q: queue.Queue):
        self._q = q
        self._buf = b""
        self._eof = False

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        while not self._buf and not self._eof:
            item = self._q.get()
            if item is None:
                self._eof = True
            elif isinstance(item, BaseException):
                raise item
            else:
                self._buf = item
        n = min(len(b), len(self._buf))
        b[:n] = self._buf[:n]
        self._buf = self._buf[n:]
        return n


class _QueueWriter(io.RawIOBase):
    def __init__(self, q: queue.Queue, failed: list[BaseException]):
        self._q = q
        self._failed = failed

    def writable(self) -> bool:
        return True

    def write(self, b: Any) -> int:
        data = bytes(b)
        if data:
            _put(self._q, data, self._failed)
        return len(data)


def _put(q: queue.Queue, item: Any, failed: list[BaseException]) -> None:
    """Put into the bounded queue, giving up as soon as the upload thread has failed."""
    while True:
        if failed:
            raise failed[0]
        try:
            q.put(item, timeout=0.5)
            return
        except queue.Full:
            continue


class S3Store(ObjectStore):
    def __init__(self, settings: Settings, bucket: str):
        from boto3.s3.transfer import TransferConfig  # here: a command on a local store does not load boto3

        self.bucket = bucket
        self.client = aws_client(settings, "s3")
        self.transfer = TransferConfig(multipart_threshold=PART_SIZE, multipart_chunksize=PART_SIZE,
                                       max_concurrency=2, max_io_queue=4)

    def url(self, key: str = "") -> str:
        return f"s3://{self.bucket}/{key}"

    @contextmanager
    def writer(self, key: str) -> Iterator[IO[bytes]]:
        q: queue.Queue = queue.Queue(maxsize=64)
        failed: list[BaseException] = []

        def upload() -> None:
            try:
                self.client.upload_fileobj(io.BufferedReader(_QueueReader(q)), self.bucket, key, Config=self.transfer)
            except BaseException as err:  # noqa: BLE001 - handed to the writing thread
                failed.append(err)

        thread = threading.Thread(target=upload, name=f"s3-upload-{key}", daemon=True)
        thread.start()
        out = io.BufferedWriter(_QueueWriter(q, failed), buffer_size=1024 * 1024)
        try:
            yield out
            out.flush()
            _put(q, None, failed)
        except BaseException as err:
            if not failed:  # the transfer manager aborts the multipart upload on a read error
                _put(q, _Aborted("writer failed"), failed)
            thread.join(timeout=60)
            if failed and err is failed[0] and isinstance(err, ClientError):  # S3 refused the upload: say where
                raise self._error(err) from err
            raise
        thread.join()
        if failed:
            # S3's refusals (AccessDenied, NoSuchBucket) name the bucket and the fix; a connection error stays
            # itself, so that the task retries it (taskbase.TRANSIENT)
            raise self._error(failed[0]) if isinstance(failed[0], ClientError) else failed[0]

    def _error(self, err: Exception) -> Exception:
        """botocore's errors as the project's: a missing bucket is bad input, the rest unreachable."""
        if isinstance(err, ClientError):
            code = err.response.get("Error", {}).get("Code", "?")
            if code == "NoSuchBucket":
                return BadInput(f"bucket {self.bucket} does not exist: create it or fix S3_BUCKET_NAME")
            return ServiceUnavailable(f"S3 refused {self.url()} ({code}): check the credentials and the bucket policy")
        return ServiceUnavailable(f"cannot reach S3 for bucket {self.bucket}: {err}")

    def open(self, key: str) -> IO[bytes]:
        try:
            return self.client.get_object(Bucket=self.bucket, Key=key)["Body"]
        except ClientError as err:
            if err.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                raise FileNotFoundError(self.url(key)) from None
            raise self._error(err) from None
        except BotoCoreError as err:
            raise self._error(err) from None

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
        try:
            for page in pages:
                for obj in page.get("Contents", []):
                    yield ObjectInfo(obj["Key"], obj["Size"], obj["LastModified"])
        except (ClientError, BotoCoreError) as err:
            raise self._error(err) from None

    def delete(self, keys: list[str]) -> None:
        for i in range(0, len(keys), 1000):
            batch = [{"Key": k} for k in keys[i:i + 1000]]
            try:
                out = self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True})
            except (ClientError, BotoCoreError) as err:
                raise self._error(err) from None
            refused = out.get("Errors") or []  # a quiet multi-delete answers 200 and lists the keys it refused
            if refused:
                first = refused[0]
                raise ServiceUnavailable(f"S3 did not delete {len(refused)} object(s) of {self.url()}, e.g. "
                                         f"{first.get('Key')} ({first.get('Code')}: {first.get('Message')}): check "
                                         "the credentials and the bucket policy (s3:DeleteObject)")

    def open_uploads(self, prefix: str = "") -> list[OpenUpload]:
        pages = self.client.get_paginator("list_multipart_uploads").paginate(Bucket=self.bucket, Prefix=prefix)
        try:
            return [OpenUpload(u["Key"], u["UploadId"], u["Initiated"]) for page in pages
                    for u in page.get("Uploads", [])]
        except (ClientError, BotoCoreError) as err:
            raise self._error(err) from None

    def abort(self, uploads: list[OpenUpload]) -> None:
        for u in uploads:
            try:
                self.client.abort_multipart_upload(Bucket=self.bucket, Key=u.key, UploadId=u.upload_id)
            except ClientError as err:
                if err.response.get("Error", {}).get("Code") != "NoSuchUpload":  # aborted or finished meanwhile
                    raise self._error(err) from None

    def check(self) -> str:
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except ClientError as err:
            code = err.response.get("Error", {}).get("Code", "?")
            raise ServiceUnavailable(f"bucket {self.bucket} ({code}): create it or fix S3_BUCKET_NAME") from None
        except BotoCoreError as err:
            raise ServiceUnavailable(f"cannot reach S3 for bucket {self.bucket}: {err}") from None
        return f"{self.url()} reachable"
