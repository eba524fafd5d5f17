"""The chunk store: pieces of layer files, keyed by the sha256 of their
uncompressed bytes, zstd-compressed, shared by every layer and image.

A chunk is stored once however many layers list it, so two images with a
common base layer (or two layers with a common file) cost its bytes once.

Verification: a chunk's sha256 is checked where it enters, before it is
written (`put_many`; a caller that has just checked it, the lazy fetcher,
says so with ``verified=True``). After that, rot is caught by the zstd
checksum of each 64 KiB frame (`fusesnap.store.chunkformat`): a read decodes
only the frames it needs and checks theirs, instead of hashing the whole
chunk each time. A chunk that fails is a `StoreError`, never wrong bytes.
Chunks of older stores (formats 0 and 1) have no checksum and are still
checked against their sha256 on every read.

Concurrency: callers compress from worker threads; zstd contexts are not
thread-safe, so each thread keeps its own. `put_many` hashes and compresses
before it takes LMDB's writer lock, and writes a whole batch in one
transaction: give it ~8-32 MiB at a time.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from fusesnap.errors import DigestMismatchError, NotFoundError
from fusesnap.store import access, chunkformat
from fusesnap.store.blobs import Txn
from fusesnap.store.chunkformat import (
    DEFAULT_LEVEL,
    FRAME_SIZE,
    MAX_CHUNK_SIZE,
    corrupt,
    decode,
    encode,
    name,
)
from fusesnap.store.env import Env
from fusesnap.store.schema import CHUNKS, chunk_key

__all__ = [
    "DEFAULT_LEVEL",
    "FRAME_SIZE",
    "MAX_CHUNK_SIZE",
    "CachePolicy",
    "ChunkPutStats",
    "ChunkStats",
    "ChunkStore",
    "corrupt",
    "decode",
    "delete_chunks",
    "encode",
    "name",
    "not_found",
    "raw_size",
]


@dataclass(frozen=True, slots=True)
class ChunkStats:
    """A number of chunks and the bytes they take in the store."""

    count: int
    stored_bytes: int


@dataclass(frozen=True, slots=True)
class ChunkPutStats:
    """What one `ChunkStore.put_many` did. `raw_bytes` and `stored_bytes`
    count the new chunks only (uncompressed, and as stored); ``evicted``: what
    went to make room under the cache limit; ``refused``: new chunks not stored
    for want of room (they can be fetched again)."""

    new: int
    existing: int
    raw_bytes: int
    stored_bytes: int
    evicted: ChunkStats = ChunkStats(0, 0)
    refused: int = 0


class CachePolicy(Protocol):
    """The cache limit (`fusesnap.store.cache.StoreCache`)."""

    def make_room(self, txn: Txn, incoming: dict[bytes, int]) -> tuple[ChunkStats, set[bytes]]: ...

    def evict(self, need: int) -> ChunkStats: ...


def not_found(digest: bytes) -> NotFoundError:
    return NotFoundError(f"{name(digest)}: not found")


def raw_size(value: Any) -> int:
    """The uncompressed size recorded in a stored value (0 if unreadable)."""
    return chunkformat.raw_size(value)


def delete_chunks(txn: Txn, env: Env, digests: Iterable[bytes]) -> ChunkStats:
    """Delete inside the caller's transaction (a ``buffers`` one saves
    copying each value to learn its size); what was there and went. The
    store's size and the chunks' access stamps go with them."""
    db = env.db(CHUNKS)
    before = access.size(txn, env)
    count = stored = 0
    gone = []
    for digest in digests:
        value = txn.get(digest, db=db)
        if value is not None:
            count += 1
            stored += len(value)
            txn.delete(digest, db=db)
            gone.append(digest)
    if gone:
        access.forget(txn, env, gone)
        access.add_size(txn, env, before, -stored)
    return ChunkStats(count, stored)


class ChunkStore:
    """Add, read, check and delete chunks (keys: 32-byte raw sha256).

    A digest that is not 32 bytes raises `InvalidDigestError`. Methods are
    thread-safe; each is one transaction.
    """

    def __init__(
        self, env: Env, *, level: int = DEFAULT_LEVEL, policy: CachePolicy | None = None
    ) -> None:
        self._env = env
        self.level = level
        self._policy = policy

    def put_many(
        self,
        items: Iterable[tuple[bytes, bytes]],
        *,
        verified: bool = False,
        level: int | None = None,
    ) -> ChunkPutStats:
        """Store ``(digest, data)`` pairs that are not stored yet, in one
        write transaction.

        Every chunk is hashed first: one that does not match its digest
        raises `DigestMismatchError` and nothing of the batch is stored.
        ``verified=True`` skips that for a caller that has just hashed each
        chunk against its digest itself (the fetcher, `cut_span`, a layer being
        indexed): hashing it twice proves nothing more. Only the missing chunks
        are compressed (a re-pull costs hashes), at zstd ``level`` (default: the
        store's).
        """
        batch: dict[bytes, bytes] = {}
        repeated = 0
        for digest, data in items:
            key = chunk_key(digest)
            if len(data) > MAX_CHUNK_SIZE:
                raise ValueError(f"{name(key)}: {len(data)} bytes, over {MAX_CHUNK_SIZE}")
            got = key if verified else hashlib.sha256(data).digest()
            if got != key:
                raise DigestMismatchError(f"{name(key)}: digest mismatch (got {got.hex()[:12]})")
            if key in batch:
                repeated += 1
            else:
                batch[key] = data
        absent = self.missing(batch)
        zlevel = self.level if level is None else level
        encoded = sorted((key, encode(batch[key], zlevel, digest=key)) for key in absent)
        new = raw = stored = 0
        evicted, refused = ChunkStats(0, 0), set[bytes]()
        if encoded:
            env = self._env
            db = env.db(CHUNKS)
            with env.txn(write=True, buffers=True) as txn:
                # Another writer may have stored some since `missing`.
                encoded = [(k, v) for k, v in encoded if txn.get(k, db=db) is None]
                if self._policy is not None and encoded:
                    incoming = {key: len(value) for key, value in encoded}
                    evicted, refused = self._policy.make_room(txn, incoming)
                before = access.size(txn, env)
                added = []
                for key, value in encoded:
                    if key not in refused and txn.put(key, value, db=db, overwrite=False):
                        added.append(key)
                        raw += len(batch[key])
                        stored += len(value)
                new = len(added)
                if added:
                    access.add_size(txn, env, before, stored)
                    access.stamp(txn, env, added, access.bucket())
        existing = len(batch) + repeated - new - len(refused)
        return ChunkPutStats(new, existing, raw, stored, evicted, len(refused))

    def touch(self, digests: Iterable[bytes], when: int | None = None) -> None:
        """Stamp stored chunks as used (in bucket ``when``, default now), in one
        write transaction; chunks no longer stored are skipped. For a batch of
        reads, not for each read (`fusesnap.store.access`)."""
        keys = sorted({chunk_key(d) for d in digests})
        if not keys:
            return
        env = self._env
        db = env.db(CHUNKS)
        with env.txn(write=True, buffers=True) as txn:
            present = [key for key in keys if txn.get(key, db=db) is not None]
            access.stamp(txn, env, present, access.bucket() if when is None else when)

    def evict(self, need: int) -> ChunkStats:
        """Evict at least ``need`` bytes of chunks that can be fetched again, if
        there are so many (a writer whose disk is full; nothing without a policy)."""
        return ChunkStats(0, 0) if self._policy is None else self._policy.evict(need)

    def get(self, digest: bytes) -> bytes:
        """The whole chunk, checked. `NotFoundError` if it is not stored,
        `StoreError` if what is stored is corrupt."""
        key = chunk_key(digest)
        with self._env.txn(buffers=True) as txn:
            value = txn.get(key, db=self._env.db(CHUNKS))
            if value is None:
                raise not_found(key)
            return decode(key, value)

    def read(self, digest: bytes, start: int, end: int) -> tuple[int, bytes]:
        """``(lo, data)``: checked bytes of the chunk from offset ``lo <= start``
        that cover ``[start, end)`` (or up to the chunk's end); only the frames
        holding the range are decoded (`chunkformat.decode_range`).
        `NotFoundError` if it is not stored, `StoreError` if it is corrupt."""
        key = chunk_key(digest)
        with self._env.txn(buffers=True) as txn:
            value = txn.get(key, db=self._env.db(CHUNKS))
            if value is None:
                raise not_found(key)
            return chunkformat.decode_range(key, value, start, end)

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
