"""The chunk format (DESIGN §9): plain data -> zstd -> AES-256-GCM -> store, and back.

Compressed only, a chunk is one standard zstd frame (`zstd -d` reads it). Encrypted, it is
`WTKE` + version + an 8-byte nonce prefix, then frames of [4-byte length][AES-GCM ciphertext+tag] over
the zstd bytes, each frame's nonce = prefix + frame counter, its associated data = the chunk's
name + counter + a last-frame flag: frames cannot be reordered, dropped, truncated or moved to
another chunk without failing authentication. Memory stays bounded by one frame.
The SHA-256 of the stored bytes is computed while writing and recorded in the manifest.
"""

from __future__ import annotations

import base64
import hashlib
import os
import struct
from collections.abc import Iterator
from typing import IO, Any

import zstandard
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from worker.errors import CorruptChunk

MAGIC = b"WTKE\x01"
FRAME = 1024 * 1024  # plaintext bytes per encrypted frame
ZSTD_LEVEL = 3


def _aad(name: str, counter: int, last: bool) -> bytes:
    return name.encode() + struct.pack(">QB", counter, 1 if last else 0)


class _Encryptor:
    """Buffers plaintext into frames; the last frame is flagged on close."""

    def __init__(self, out: Any, key: bytes, name: str):
        self.out, self.aead, self.name = out, AESGCM(key), name
        self.prefix = os.urandom(8)
        self.counter = 0
        self.buf = bytearray()
        out.write(MAGIC + self.prefix)

    def _frame(self, data: bytes, last: bool) -> None:
        nonce = self.prefix + struct.pack(">I", self.counter)
        sealed = self.aead.encrypt(nonce, data, _aad(self.name, self.counter, last))
        self.out.write(struct.pack(">I", len(sealed)) + sealed)
        self.counter += 1

    def write(self, data: bytes) -> int:
        self.buf += data
        while len(self.buf) > FRAME:  # keep at least one byte back: the last frame is written by close()
            self._frame(bytes(self.buf[:FRAME]), False)
            del self.buf[:FRAME]
        return len(data)

    def close(self) -> None:
        self._frame(bytes(self.buf), True)
        self.buf.clear()


class _Counting:
    """Counts and hashes the bytes that reach the store."""

    def __init__(self, out: IO[bytes]):
        self.out, self.sha, self.size = out, hashlib.sha256(), 0

    def write(self, data: bytes) -> int:
        self.out.write(data)
        self.sha.update(data)
        self.size += len(data)
        return len(data)


class ChunkWriter:
    """Write plain bytes; close() returns raw and stored sizes and the SHA-256 of the stored bytes."""

    def __init__(self, out: IO[bytes], name: str, compress: bool, key: bytes | None):
        self.stored = _Counting(out)
        self.raw = 0
        self.enc = _Encryptor(self.stored, key, name) if key else None
        sink: Any = self.enc or self.stored
        self.zw = (zstandard.ZstdCompressor(level=ZSTD_LEVEL, write_checksum=True).stream_writer(sink, closefd=False)
                   if compress else None)
        self.sink = self.zw or sink

    def write(self, data: bytes) -> None:
        self.raw += len(data)
        self.sink.write(data)

    def close(self) -> dict[str, Any]:
        if self.zw:
            self.zw.flush(zstandard.FLUSH_FRAME)
        if self.enc:
            self.enc.close()
        return {"bytes_raw": self.raw, "bytes_stored": self.stored.size, "sha256": self.stored.sha.hexdigest()}


class _Hashing:
    def __init__(self, src: IO[bytes]):
        self.src, self.sha, self.size = src, hashlib.sha256(), 0

    def read(self, n: int = -1) -> bytes:
        data = self.src.read(n)
        self.sha.update(data)
        self.size += len(data)
        return data


def _exact(src: Any, n: int) -> bytes:
    data = b""
    while len(data) < n:
        more = src.read(n - len(data))
        if not more:
            break
        data += more
    return data


def _decrypt(src: Any, key: bytes, name: str) -> Iterator[bytes]:
    head = _exact(src, len(MAGIC) + 8)
    if head[:len(MAGIC)] != MAGIC:
        raise CorruptChunk("not an encrypted chunk (bad header)")
    aead, prefix, counter = AESGCM(key), head[len(MAGIC):], 0
    pending = _exact(src, 4)
    while True:
        if len(pending) < 4:
            raise CorruptChunk("truncated: the last frame is missing")
        (size,) = struct.unpack(">I", pending)
        sealed = _exact(src, size)
        if len(sealed) < size:
            raise CorruptChunk(f"truncated in frame {counter}")
        pending = _exact(src, 4)
        last = not pending
        try:
            yield aead.decrypt(prefix + struct.pack(">I", counter), sealed, _aad(name, counter, last))
        except InvalidTag:
            raise CorruptChunk(f"frame {counter} fails authentication (wrong key, or altered)") from None
        if last:
            return
        counter += 1


class _Chain:
    """A file-like reader over an iterator of byte blocks (the decrypted frames)."""

    def __init__(self, blocks: Iterator[bytes]):
        self.blocks, self.buf = blocks, b""

    def read(self, n: int = -1) -> bytes:
        while n < 0 or len(self.buf) < n:
            block = next(self.blocks, None)
            if block is None:
                break
            self.buf += block
        if n < 0:
            out, self.buf = self.buf, b""
        else:
            out, self.buf = self.buf[:n], self.buf[n:]
        return out


def read_chunk(src: IO[bytes], name: str, compressed: bool, key: bytes | None,
               block: int = 1 << 20) -> tuple[Iterator[bytes], _Hashing]:
    """Plain blocks of a stored chunk, and the hasher of its stored bytes (final once exhausted)."""
    hashed = _Hashing(src)
    stream: Any = _Chain(_decrypt(hashed, key, name)) if key else hashed

    def blocks() -> Iterator[bytes]:
        try:
            if compressed:
                reader = zstandard.ZstdDecompressor().stream_reader(stream, read_across_frames=True)
                while data := reader.read(block):
                    yield data
            else:
                while data := stream.read(block):
                    yield data
        except zstandard.ZstdError as err:
            raise CorruptChunk(f"not a valid zstd stream: {err}") from None
        while hashed.read(block):  # hash any bytes after the end too
            pass
    return blocks(), hashed


def new_data_key() -> bytes:
    return AESGCM.generate_key(bit_length=256)


def wrap_key(data_key: bytes, master: bytes, backup_id: str) -> str:
    nonce = os.urandom(12)
    return base64.b64encode(nonce + AESGCM(master).encrypt(nonce, data_key, backup_id.encode())).decode()


def unwrap_key(wrapped: str, master: bytes, backup_id: str) -> bytes:
    raw = base64.b64decode(wrapped)
    try:
        return AESGCM(master).decrypt(raw[:12], raw[12:], backup_id.encode())
    except InvalidTag:
        raise CorruptChunk("the data key does not unwrap: BACKUP_ENCRYPTION_KEY is not the key this "
                           "backup was made with") from None
