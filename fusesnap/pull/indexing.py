"""Store a layer blob as an indexed layer: a `LayerIndex` plus chunks.

The blob is read once, as it comes (from a file, or from the download itself:
`fusesnap.pull.streaming`): `build_index` walks the tar, every file's chunks
go into the de-duplicated chunk store in batches, and the layer record
(encoded index + chunk list) is written last, once the blob's digest and diff
ID have checked out. The raw blob is not kept: the chunks are the layer's
contents, and any byte of the blob can be fetched again from the registry by
range using the index's gzip checkpoints. Their windows go to the chunk store
too (`store_layer_index`): the stored index names them by digest, so loading
it does not load them.

Batches are written by a thread of their own (`_ChunkWriter`), so compressing
and committing one overlaps with parsing the next; chunks are hashed once (by
the index build) and compressed at `PULL_LEVEL`.

Ordering against gc: the caller holds a lease with ``("layer", digest)``
before calling this, so chunks written before the record exists are safe
(see `fusesnap.store.collect`).
"""

from __future__ import annotations

import queue
import threading
from pathlib import Path
from typing import BinaryIO

from fusesnap.digest import Digest
from fusesnap.errors import DigestMismatchError
from fusesnap.index import (
    DEFAULT_CHUNK_SIZE,
    EncodedToc,
    LayerIndex,
    Limits,
    build_index,
    encode,
)
from fusesnap.oci import Descriptor
from fusesnap.store import LayerRecord, Store, pack_chunk_digests

# Chunks are handed to the store in batches of about this many bytes: one LMDB
# write transaction each, large enough to amortize, small enough to stay cheap in memory.
BATCH_BYTES = 16 << 20
# Batches waiting for the writer thread (one more is being written): more would only
# hold more memory (16 MiB each, per layer).
_QUEUED_BATCHES = 1
# zstd level for the chunks of a layer being indexed. Level 1 compresses ~3x faster than
# the store's default 3 and stores ~10% more (Debian's largest layer: 0.41 vs 0.37 of the
# tar); it decompresses as fast. A full pull is bound by this on a fast link.
PULL_LEVEL = 1


class _ChunkWriter:
    """Collects a layer's chunks into batches that a thread of its own stores.

    `add` never waits for the store unless `_QUEUED_BATCHES` batches are
    already waiting; a failure of the store is raised by the next `add` or by
    `finish`. `close` stops the thread (after `finish`, or on failure).
    """

    def __init__(self, store: Store) -> None:
        self._store = store
        self._items: list[tuple[bytes, bytes]] = []
        self._seen: set[bytes] = set()
        self._bytes = 0
        self._queue: queue.Queue[list[tuple[bytes, bytes]] | None] = queue.Queue(_QUEUED_BATCHES)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="layer-chunks", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (batch := self._queue.get()) is not None:
            if self._error is None:
                try:
                    self._store.chunks.put_many(batch, level=PULL_LEVEL, verified=True)
                except BaseException as exc:
                    self._error = exc

    def add(self, digest: bytes, data: bytes) -> None:
        if self._error is not None:
            raise self._error
        if digest in self._seen:
            return  # the same chunk twice in one layer: store (and hash) it once
        self._seen.add(digest)
        self._items.append((digest, data))
        self._bytes += len(data)
        if self._bytes >= BATCH_BYTES:
            self._queue.put(self._items)
            self._items, self._bytes = [], 0

    def finish(self) -> None:
        """Store what is left and wait until every batch is in."""
        if self._items:
            self._queue.put(self._items)
            self._items, self._bytes = [], 0
        self.close()
        if self._error is not None:
            raise self._error

    def close(self) -> None:
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()


def ingest_layer_file(
    store: Store,
    path: Path,
    layer: Descriptor,
    *,
    diff_id: Digest | None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    limits: Limits | None = None,
) -> LayerIndex:
    """`ingest_layer_stream` of the (verified or not: it is checked) blob at ``path``."""
    with open(path, "rb") as f:
        return ingest_layer_stream(
            store, f, layer, diff_id=diff_id, chunk_size=chunk_size, limits=limits
        )


def ingest_layer_stream(
    store: Store,
    fileobj: BinaryIO,
    layer: Descriptor,
    *,
    diff_id: Digest | None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    limits: Limits | None = None,
) -> LayerIndex:
    """Index the blob read from ``fileobj`` (to its end, once) and store its chunks and
    layer record.

    The blob must hash to ``layer.digest`` (else `DigestMismatchError`, raised once the
    whole blob was read); ``diff_id`` is what the image config says the uncompressed
    tar hashes to: a layer that disagrees raises `DigestMismatchError`. Either way no
    record is written. Blocking: call it from a worker thread.
    """
    writer = _ChunkWriter(store)
    try:
        index = build_index(
            fileobj,
            layer_digest=layer.digest,
            media_type=layer.media_type,
            chunk_size=chunk_size,
            on_chunk=writer.add,
            on_window=writer.add,  # in the store before the index names them
            limits=limits or Limits(),
        )
        if diff_id is not None and index.diff_id != diff_id:
            raise DigestMismatchError(
                f"layer {layer.digest.short}: uncompressed digest {index.diff_id.short} does "
                f"not match the image config's diff_id {diff_id.short}"
            )
        # The windows went to the writer as they were found: name them by digest, and
        # encode while the writer stores the last batch.
        index = index.without_windows()
        encoded = encode(index)
        writer.finish()
    finally:
        writer.close()
    return store_layer_index(store, layer, index, "built", encoded=encoded)


def store_layer_index(
    store: Store,
    layer: Descriptor,
    index: LayerIndex,
    source: str,
    *,
    encoded: bytes | None = None,
) -> LayerIndex:
    """Write ``index`` as ``layer``'s record; return it as stored.

    Gzip windows carried inline move to the chunk store first, and the
    stored index names them by digest (`LayerIndex.without_windows`). The
    record lists the chunks and windows for gc; the chunks need not be
    stored yet (a lazily indexed layer). ``encoded``: the bytes ``index`` was
    decoded from, stored as they are if they carry no window. Blocking.
    """
    if index.checkpoints is not None:
        inline = index.checkpoints.inline_windows()
        if inline:
            store.chunks.put_many(inline.items())
            index, encoded = index.without_windows(), None
    store.layers.put(
        _record(
            layer,
            source,
            index.diff_id,
            index.uncompressed_size,
            index.entry_count,
            encode(index) if encoded is None else encoded,
            index.chunk_digests(),
            # gc keeps what the chunk store holds for the index: windows, and SOCI spans.
            index.window_digests() | index.span_digests(),
        )
    )
    return index


def store_encoded_toc(store: Store, layer: Descriptor, toc: EncodedToc, source: str) -> None:
    """Write the index read from ``layer``'s TOC as its record (as `store_layer_index`
    would, from what the TOC's encoding counted: no records decoded). Blocking."""
    store.layers.put(
        _record(
            layer,
            source,
            toc.diff_id,
            toc.uncompressed_size,
            toc.entry_count,
            toc.data,
            toc.chunk_digests,
            frozenset(),
        )
    )


def _record(
    layer: Descriptor,
    source: str,
    diff_id: Digest,
    uncompressed_size: int,
    entry_count: int,
    encoded: bytes,
    chunks: frozenset[bytes],
    windows: frozenset[bytes],
) -> LayerRecord:
    return LayerRecord(
        digest=layer.digest,
        diff_id=diff_id,
        media_type=layer.media_type,
        size=layer.size,
        uncompressed_size=uncompressed_size,
        entry_count=entry_count,
        source=source,
        index=encoded,
        chunks=pack_chunk_digests(chunks),
        windows=pack_chunk_digests(windows),
    )
