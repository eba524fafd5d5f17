"""Store a downloaded, verified layer blob as an indexed layer: a `LayerIndex` plus chunks.

The blob is read once, locally: `tarindex.build_index` walks the tar, every
file's chunks go into the de-duplicated chunk store in batches, and the layer
record (encoded index + chunk list) is written last. The raw blob is not kept:
the chunks are the layer's contents, and any byte of the blob can be fetched
again from the registry by range using the index's gzip checkpoints. Their
windows go to the chunk store too (`store_layer_index`): the stored index
names them by digest, so loading it does not load them.

Ordering against gc: the caller holds a lease with ``("layer", digest)``
before calling this, so chunks written before the record exists are safe
(see `fusesnap.store.collect`).
"""

from __future__ import annotations

from pathlib import Path

from fusesnap.digest import Digest
from fusesnap.errors import DigestMismatchError
from fusesnap.index import DEFAULT_CHUNK_SIZE, LayerIndex, Limits, build_index, encode
from fusesnap.oci import Descriptor
from fusesnap.store import LayerRecord, Store, pack_chunk_digests

# Chunks are handed to the store in batches of about this many bytes: one LMDB
# write transaction each, large enough to amortize, small enough to stay cheap in memory.
BATCH_BYTES = 16 << 20


class _ChunkBatcher:
    def __init__(self, store: Store) -> None:
        self._store = store
        self._items: list[tuple[bytes, bytes]] = []
        self._seen: set[bytes] = set()
        self._bytes = 0
        self.raw_bytes = 0
        self.stored_bytes = 0

    def add(self, digest: bytes, data: bytes) -> None:
        if digest in self._seen:
            return  # the same chunk twice in one layer: store (and hash) it once
        self._seen.add(digest)
        self._items.append((digest, data))
        self._bytes += len(data)
        if self._bytes >= BATCH_BYTES:
            self.flush()

    def flush(self) -> None:
        if self._items:
            stats = self._store.chunks.put_many(self._items)
            self.raw_bytes += stats.raw_bytes
            self.stored_bytes += stats.stored_bytes
            self._items, self._bytes = [], 0


def ingest_layer_file(
    store: Store,
    path: Path,
    layer: Descriptor,
    *,
    diff_id: Digest | None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    limits: Limits | None = None,
) -> LayerIndex:
    """Index the verified blob at ``path`` and store its chunks and layer record.

    ``diff_id`` is what the image config says the uncompressed tar hashes to;
    a layer that disagrees raises `DigestMismatchError` and no record is
    written. Blocking: call it from a worker thread.
    """
    batcher = _ChunkBatcher(store)
    with open(path, "rb") as f:
        index = build_index(
            f,
            layer_digest=layer.digest,
            media_type=layer.media_type,
            chunk_size=chunk_size,
            on_chunk=batcher.add,
            limits=limits or Limits(),
        )
    if diff_id is not None and index.diff_id != diff_id:
        raise DigestMismatchError(
            f"layer {layer.digest.short}: uncompressed digest {index.diff_id.short} does not "
            f"match the image config's diff_id {diff_id.short}"
        )
    batcher.flush()
    return store_layer_index(store, layer, index, "built")


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
        LayerRecord(
            digest=layer.digest,
            diff_id=index.diff_id,
            media_type=layer.media_type,
            size=layer.size,
            uncompressed_size=index.uncompressed_size,
            entry_count=index.entry_count,
            source=source,
            index=encode(index) if encoded is None else encoded,
            chunks=pack_chunk_digests(index.chunk_digests()),
            # gc keeps what the chunk store holds for the index: windows, and SOCI spans.
            windows=pack_chunk_digests(index.window_digests() | index.span_digests()),
        )
    )
    return index
