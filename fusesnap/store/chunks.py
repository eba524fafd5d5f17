"""The chunk store: pieces of layer files, keyed by the sha256 of their
uncompressed bytes, zstd-compressed, shared by every layer and image.

A chunk is stored once however many layers list it, so two images with a
common base layer (or two layers with a common file) cost its bytes once.

Verification: a chunk's sha256 is checked before it is written (by
`put_many`, or by a caller that has just computed it from the very bytes,
``hashed=True``) *and* after every read (decompress, then hash). Hashing 1 MiB costs about half a
millisecond, a small part of a FUSE read, and it means no byte is served
that does not match its digest — not after a disk error, a bug in a
writer, or a hand-edited store. A chunk that fails is a `StoreError`, never
wrong bytes.

Each stored value is one format byte and a payload (see `schema`): the zstd
frame, or the chunk itself when zstd does not make it smaller (already
compressed or random data), so reading those costs only the hash.

Concurrency: callers compress from worker threads; zstd contexts are not
thread-safe, so each thread keeps its own (`threading.local`). `put_many`
hashes and compresses before it takes LMDB's writer lock, and writes a
whole batch in one transaction: give it ~8-32 MiB at a time.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import zstandard

from fusesnap.errors import DigestMismatchError, NotFoundError, StoreError
from fusesnap.store.blobs import Txn
from fusesnap.store.env import Env
from fusesnap.store.schema import CHUNK_RAW, CHUNK_ZSTD, CHUNKS, chunk_key

DEFAULT_LEVEL = 3
# Chunks are 1 MiB by default; this only bounds what a corrupt
# frame header can make a read allocate.
MAX_CHUNK_SIZE = 64 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class ChunkPutStats:
    """What one `ChunkStore.put_many` did. `raw_bytes` and `stored_bytes`
    count the new chunks only (uncompressed, and as stored)."""

    new: int
    existing: int
    raw_bytes: int
    stored_bytes: int


@dataclass(frozen=True, slots=True)
class ChunkStats:
    """A number of chunks and the bytes they take in the store."""

    count: int
    stored_bytes: int


_local = threading.local()


def _compressor(level: int) -> zstandard.ZstdCompressor:
    per_level: dict[int, zstandard.ZstdCompressor] | None = getattr(_local, "compressors", None)
    if per_level is None:
        per_level = _local.compressors = {}
    compressor = per_level.get(level)
    if compressor is None:
        compressor = per_level[level] = zstandard.ZstdCompressor(level=level)
    return compressor


def _decompressor() -> zstandard.ZstdDecompressor:
    decompressor: zstandard.ZstdDecompressor | None = getattr(_local, "decompressor", None)
    if decompressor is None:
        decompressor = _local.decompressor = zstandard.ZstdDecompressor()
    return decompressor


def name(digest: bytes) -> str:
    """``chunk 3f2a9c01b2d4`` for messages."""
    return f"chunk {digest.hex()[:12]}"


def not_found(digest: bytes) -> NotFoundError:
    return NotFoundError(f"{name(digest)}: not found")


def corrupt(digest: bytes) -> StoreError:
    return StoreError(f"{name(digest)}: corrupt in store (digest mismatch)")


def encode(data: bytes, level: int = DEFAULT_LEVEL) -> bytes:
    """The stored form of ``data``: zstd if that is smaller, else as is."""
    frame = _compressor(level).compress(data)
    if len(frame) < len(data):
        return bytes((CHUNK_ZSTD,)) + frame
    return bytes((CHUNK_RAW,)) + data


def decode(digest: bytes, value: Any) -> bytes:
    """The chunk from its stored form (bytes or a buffer), verified."""
    payload = memoryview(value)[1:]
    fmt = value[0] if len(value) else None
    if fmt == CHUNK_RAW:
        data = bytes(payload)
    elif fmt == CHUNK_ZSTD:
        try:
            size = zstandard.frame_content_size(payload)
            if not 0 <= size <= MAX_CHUNK_SIZE:
                raise corrupt(digest)
            data = _decompressor().decompress(payload)
        except zstandard.ZstdError:
            raise corrupt(digest) from None
    else:
        raise corrupt(digest)
    if hashlib.sha256(data).digest() != digest:
        raise corrupt(digest)
    return data


def raw_size(value: Any) -> int:
    """The uncompressed size recorded in a stored value (0 if unreadable);
    read from the zstd frame header, without decompressing."""
    if not len(value):
        return 0
    if value[0] == CHUNK_RAW:
        return len(value) - 1
    try:
        return max(zstandard.frame_content_size(memoryview(value)[1:]), 0)
    except zstandard.ZstdError:
        return 0


def delete_chunks(txn: Txn, env: Env, digests: Iterable[bytes]) -> ChunkStats:
    """Delete inside the caller's transaction (a ``buffers`` one saves
    copying each value to learn its size); what was there and went."""
    db = env.db(CHUNKS)
    count = stored = 0
    for digest in digests:
        value = txn.get(digest, db=db)
        if value is not None:
            count += 1
            stored += len(value)
            txn.delete(digest, db=db)
    return ChunkStats(count, stored)


class ChunkStore:
    """Add, read, check and delete chunks (keys: 32-byte raw sha256).

    A digest that is not 32 bytes raises `InvalidDigestError`. Methods are
    thread-safe; each is one transaction.
    """

    def __init__(self, env: Env, *, level: int = DEFAULT_LEVEL) -> None:
        self._env = env
        self.level = level

    def put_many(
        self,
        items: Iterable[tuple[bytes, bytes]],
        *,
        level: int | None = None,
        hashed: bool = False,
    ) -> ChunkPutStats:
        """Store ``(digest, data)`` pairs that are not stored yet, in one
        write transaction.

        Every chunk is hashed first: one that does not match its digest
        raises `DigestMismatchError` and nothing of the batch is stored.
        ``hashed=True`` skips that for a caller that has just computed each
        digest from these very bytes (a layer being indexed), so they are
        not hashed twice. Only the missing chunks are compressed (a re-pull
        costs hashes), at zstd ``level`` (default: the store's).
        """
        batch: dict[bytes, bytes] = {}
        repeated = 0
        for digest, data in items:
            key = chunk_key(digest)
            if len(data) > MAX_CHUNK_SIZE:
                raise ValueError(f"{name(key)}: {len(data)} bytes, over {MAX_CHUNK_SIZE}")
            if not hashed and (got := hashlib.sha256(data).digest()) != key:
                raise DigestMismatchError(f"{name(key)}: digest mismatch (got {got.hex()[:12]})")
            if key in batch:
                repeated += 1
            else:
                batch[key] = data
        absent = self.missing(batch)
        zlevel = self.level if level is None else level
        encoded = sorted((key, encode(batch[key], zlevel)) for key in absent)
        new = raw = stored = 0
        if encoded:
            db = self._env.db(CHUNKS)
            with self._env.txn(write=True) as txn:
                for key, value in encoded:
                    # Another writer may have stored it since `missing`.
                    if txn.put(key, value, db=db, overwrite=False):
                        new += 1
                        raw += len(batch[key])
                        stored += len(value)
        return ChunkPutStats(new, len(batch) + repeated - new, raw, stored)

    def get(self, digest: bytes) -> bytes:
        """The chunk, verified. `NotFoundError` if it is not stored,
        `StoreError` if what is stored does not hash to ``digest``."""
        key = chunk_key(digest)
        with self._env.txn(buffers=True) as txn:
            value = txn.get(key, db=self._env.db(CHUNKS))
            if value is None:
                raise not_found(key)
            return decode(key, value)

    def get_many(self, digests: Iterable[bytes]) -> dict[bytes, bytes]:
        """The stored ones among ``digests``, verified, in one read
        transaction; missing ones are left out (fetch those), a corrupt one
        raises `StoreError`."""
        keys = [chunk_key(d) for d in digests]
        out: dict[bytes, bytes] = {}
        db = self._env.db(CHUNKS)
        with self._env.txn(buffers=True) as txn:
            for key in keys:
                value = txn.get(key, db=db)
                if value is not None and key not in out:
                    out[key] = decode(key, value)
        return out

    def exists(self, digest: bytes) -> bool:
        key = chunk_key(digest)
        with self._env.txn(buffers=True) as txn:
            return txn.get(key, db=self._env.db(CHUNKS)) is not None

    def missing(self, digests: Iterable[bytes]) -> set[bytes]:
        """Those of ``digests`` that are not stored (one read transaction)."""
        keys = {chunk_key(d) for d in digests}
        db = self._env.db(CHUNKS)
        with self._env.txn(buffers=True) as txn:
            return {key for key in keys if txn.get(key, db=db) is None}

    def delete_many(self, digests: Iterable[bytes]) -> ChunkStats:
        """Delete chunks (absent ones are skipped); what was removed.

        Chunks are shared: deleting one that a layer lists makes that layer
        incomplete. The garbage collector is the usual way to remove them.
        """
        keys = sorted({chunk_key(d) for d in digests})
        with self._env.txn(write=True, buffers=True) as txn:
            return delete_chunks(txn, self._env, keys)

    def stats(self) -> ChunkStats:
        """How many chunks, and their stored size (one pass over the keys;
        LMDB knows a value's size without reading it)."""
        db = self._env.db(CHUNKS)
        with self._env.txn(buffers=True) as txn:
            count = int(txn.stat(db)["entries"])
            stored = sum(len(value) for _key, value in txn.cursor(db=db))
        return ChunkStats(count, stored)

    def iter_digests(self) -> Iterator[bytes]:
        """Every stored chunk's digest, in order (batched, not one snapshot)."""
        return self._env.iter_keys(CHUNKS)
