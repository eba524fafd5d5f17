"""Layers: a layer's index and the list of chunks it is made of, by layer
(compressed blob) digest.

A pulled layer is not kept as a blob. Its files' bytes go to the chunk
store, where every layer and image shares them, and the layer itself is
this record: the encoded `LayerIndex` (opaque here; `fusesnap.lazy` owns
the format), the sorted chunk digests (for gc, and for "how much of this
layer is here"), and a few numbers for ``fusesnap layers``.

How a pull stores a layer (the order matters to gc, see `collect`):

1. add ``Resource.layer(digest)`` to the pull's lease — from then on gc
   sweeps no chunk while the record below does not exist yet;
2. download to a `ContentWriter` (resumable) and call `verified_path()`;
3. read that file to build the index, storing chunks with
   `ChunkStore.put_many` in batches of ~8-32 MiB as they come;
4. `LayerStore.put` the record, then ``writer.abort()`` drops the file;
5. write the image record, then delete the lease.

A lazy layer (index from the registry, chunks fetched on read) has a record
whose chunks are only partly stored; `present_chunks` says how much.

Reads check each part against the sha256 kept in the header (`LayerInfo`),
so a damaged index is a `StoreError`, not a wrong file tree.
"""

from __future__ import annotations

import builtins
import dataclasses
import hashlib
import itertools
import time
from collections.abc import Iterable, Iterator
from typing import NamedTuple

from fusesnap.digest import Digest
from fusesnap.errors import NotFoundError, StoreError
from fusesnap.store import access
from fusesnap.store import chunks as chunk_values
from fusesnap.store.blobs import Txn
from fusesnap.store.env import Env
from fusesnap.store.records import LAYER_SOURCES, LayerInfo, LayerRecord, get_record, iter_records
from fusesnap.store.schema import (
    CHUNK_DIGEST_SIZE,
    CHUNKS,
    LAYER_CHUNKS_PART,
    LAYER_DATA,
    LAYER_INDEX_PART,
    LAYER_WINDOWS_PART,
    LAYERS,
    SEGMENT_SIZE,
    chunk_key,
    delete_prefix,
    layer_data_key,
    layer_data_prefix,
    layer_key,
    pack,
    unpack,
)


class ChunkPresence(NamedTuple):
    """How much of a layer's chunk list is in the chunk store."""

    present: int
    total: int
    raw_bytes: int  # uncompressed size of the present chunks
    stored_bytes: int


def pack_chunk_digests(digests: Iterable[bytes]) -> bytes:
    """`LayerRecord.chunks` from any iterable of 32-byte digests (sorted,
    duplicates dropped)."""
    return b"".join(sorted({chunk_key(bytes(d)) for d in digests}))


def split_chunk_digests(packed: bytes) -> Iterator[bytes]:
    return (packed[i : i + CHUNK_DIGEST_SIZE] for i in range(0, len(packed), CHUNK_DIGEST_SIZE))


def not_found(digest: Digest) -> NotFoundError:
    return NotFoundError(f"layer {digest.short}: not found")


def _check(record: LayerRecord) -> LayerRecord:
    digest = Digest(record.digest)
    what = f"layer {digest.short}"
    if record.source not in LAYER_SOURCES:
        raise ValueError(f"{what}: unknown source {record.source!r}")
    for field in ("size", "uncompressed_size", "entry_count"):
        if getattr(record, field) < 0:
            raise ValueError(f"{what}: negative {field}")
    packed = record.chunks
    for name, part in (("chunk list", packed), ("window list", record.windows)):
        if len(part) % CHUNK_DIGEST_SIZE:
            raise ValueError(f"{what}: {name} is not a multiple of 32 bytes")
        keys = list(split_chunk_digests(part))
        if any(a >= b for a, b in itertools.pairwise(keys)):
            raise ValueError(f"{what}: {name} is not sorted and unique (pack_chunk_digests)")
    return dataclasses.replace(
        record,
        digest=digest,
        diff_id=Digest(record.diff_id),
        index=bytes(record.index),
        chunks=bytes(packed),
        windows=bytes(record.windows),
        created=record.created or time.time(),
    )


# -- inside a caller's transaction (for gc) ------------------------------------


def get_info(txn: Txn, env: Env, digest: Digest) -> LayerInfo | None:
    return get_record(txn, env.db(LAYERS), layer_key(digest), LayerInfo)


def has_layer(txn: Txn, env: Env, digest: Digest) -> bool:
    """Whether the header exists, without decoding it."""
    return txn.get(layer_key(digest), db=env.db(LAYERS)) is not None


def require_info(txn: Txn, env: Env, digest: Digest) -> LayerInfo:
    info = get_info(txn, env, digest)
    if info is None:
        raise not_found(digest)
    return info


def iter_infos(txn: Txn, env: Env) -> Iterator[LayerInfo]:
    return iter_records(txn, env.db(LAYERS), LayerInfo)


def read_part(txn: Txn, env: Env, info: LayerInfo, part: bytes) -> bytes:
    """The index, the chunk list or the window list, checked against the header."""
    if part == LAYER_INDEX_PART:
        size, want, what = info.index_size, info.index_sha256, "index"
    elif part == LAYER_WINDOWS_PART:
        if not info.window_count:
            return b""
        size, want = info.window_count * CHUNK_DIGEST_SIZE, info.windows_sha256
        what = "window list"
    else:
        size, want, what = info.chunk_count * CHUNK_DIGEST_SIZE, info.chunks_sha256, "chunk list"
    db = env.db(LAYER_DATA)
    pieces = []
    for n in range(-(-size // SEGMENT_SIZE)):
        piece = txn.get(layer_data_key(info.digest, part, n), db=db)
        if piece is None:
            raise StoreError(
                f"layer {info.digest.short}: {what} segment {n} missing (store corrupt)"
            )
        pieces.append(piece)
    data = b"".join(pieces)
    if len(data) != size or hashlib.sha256(data).digest() != want:
        raise StoreError(f"layer {info.digest.short}: {what} corrupt in store (digest mismatch)")
    return data


def put_layer(txn: Txn, env: Env, record: LayerRecord, info: LayerInfo) -> None:
    """Replace the layer's header and parts (``info`` is ``record.info()``); its
    cache mode (`fusesnap.store.access`) stays."""
    _delete_record(txn, env, record.digest)
    db = env.db(LAYER_DATA)
    parts = (
        (LAYER_INDEX_PART, record.index),
        (LAYER_CHUNKS_PART, record.chunks),
        (LAYER_WINDOWS_PART, record.windows),
    )
    for part, data in parts:
        view = memoryview(data)
        for n, start in enumerate(range(0, len(view), SEGMENT_SIZE)):
            txn.put(
                layer_data_key(record.digest, part, n), view[start : start + SEGMENT_SIZE], db=db
            )
    txn.put(layer_key(record.digest), pack(info.to_record()), db=env.db(LAYERS))


def delete_layer(txn: Txn, env: Env, digest: Digest) -> LayerInfo | None:
    """Delete header, parts and cache mode; `None` if there was no header."""
    access.set_layer_mode(txn, env, digest, None)
    return _delete_record(txn, env, digest)


def _delete_record(txn: Txn, env: Env, digest: Digest) -> LayerInfo | None:
    info = get_info(txn, env, digest)
    if info is not None:
        txn.delete(layer_key(digest), db=env.db(LAYERS))
    delete_prefix(txn, env.db(LAYER_DATA), layer_data_prefix(digest))
    return info


def stored_size(info: LayerInfo) -> int:
    """Bytes of the parts (what deleting the record frees, about)."""
    return info.index_size + (info.chunk_count + info.window_count) * CHUNK_DIGEST_SIZE


class LayerStore:
    """Create, read, list and delete layer records. Each method is one
    transaction; thread-safe."""

    def __init__(self, env: Env) -> None:
        self._env = env

    def put(self, record: LayerRecord) -> LayerInfo:
        """Store ``record`` (replacing any record of that digest); return
        its header. `created` is set to now when 0. `ValueError` for an
        unknown source, a negative size or an unsorted chunk list."""
        record = _check(record)
        info = record.info()  # hashes the parts before taking the writer lock
        with self._env.txn(write=True) as txn:
            put_layer(txn, self._env, record, info)
        return info

    def get(self, digest: Digest) -> LayerRecord:
        """The whole record, index and chunk list checked."""
        digest = Digest(digest)
        with self._env.txn(buffers=True) as txn:
            info = require_info(txn, self._env, digest)
            index = read_part(txn, self._env, info, LAYER_INDEX_PART)
            packed = read_part(txn, self._env, info, LAYER_CHUNKS_PART)
            windows = read_part(txn, self._env, info, LAYER_WINDOWS_PART)
        return LayerRecord.from_parts(info, index, packed, windows)

    def info(self, digest: Digest) -> LayerInfo:
        """The header only (no index, no chunk list)."""
        digest = Digest(digest)
        with self._env.txn() as txn:
            return require_info(txn, self._env, digest)

    def index(self, digest: Digest) -> bytes:
        """The encoded index only, checked."""
        digest = Digest(digest)
        with self._env.txn(buffers=True) as txn:
            info = require_info(txn, self._env, digest)
            return read_part(txn, self._env, info, LAYER_INDEX_PART)

    def exists(self, digest: Digest) -> bool:
        digest = Digest(digest)
        with self._env.txn(buffers=True) as txn:
            return has_layer(txn, self._env, digest)

    def list(self) -> builtins.list[LayerInfo]:
        """Every layer's header, by digest; reads no index or chunk list."""
        return [LayerInfo.from_record(unpack(raw)) for _k, raw in self._env.iter_items(LAYERS)]

    def delete(self, digest: Digest) -> LayerInfo:
        """Remove the record (not its chunks: gc frees those no layer
        lists); return its header."""
        digest = Digest(digest)
        with self._env.txn(write=True) as txn:
            info = delete_layer(txn, self._env, digest)
        if info is None:
            raise not_found(digest)
        return info

    def chunk_digests(self, digest: Digest) -> Iterator[bytes]:
        """The layer's chunk digests, sorted. `NotFoundError` is raised
        here, not on the first ``next()``."""
        digest = Digest(digest)
        with self._env.txn(buffers=True) as txn:
            info = require_info(txn, self._env, digest)
            packed = read_part(txn, self._env, info, LAYER_CHUNKS_PART)
        return split_chunk_digests(packed)

    def present_chunks(self, digest: Digest) -> ChunkPresence:
        """How many of the layer's chunks are stored, and their size
        (uncompressed and stored), in one read transaction."""
        digest = Digest(digest)
        present = raw = stored = 0
        db = self._env.db(CHUNKS)
        with self._env.txn(buffers=True) as txn:
            info = require_info(txn, self._env, digest)
            packed = read_part(txn, self._env, info, LAYER_CHUNKS_PART)
            for key in split_chunk_digests(packed):
                value = txn.get(key, db=db)
                if value is not None:
                    present += 1
                    raw += chunk_values.raw_size(value)
                    stored += len(value)
        return ChunkPresence(present, info.chunk_count, raw, stored)
