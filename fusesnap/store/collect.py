"""Garbage collection of a real store: mark (`links`, `gc`), then sweep
content, layer records, chunks and ingests.

Concurrency. Marking on one snapshot and deleting later would race a pull
that starts using a blob in between (e.g. an image that shares a layer with
the one just removed). So every deletion batch re-marks inside its own write
transaction — LMDB's single writer lock means no image, lease, layer or
content can change while it runs — and deletes only what is still
unreachable (the marker's caches make a re-mark cheap, see `links`). Each
batch is one transaction in which a blob's info and segments, or a layer's
header and parts, go together: gc killed at any point leaves a consistent
store, and the next run finishes the job.

Chunks written before their layer record. A pull stores a layer's chunks
while it streams the layer, before the layer record that lists them
exists, so for a while nothing links to those chunks. Rule: while any live
lease holds ``("layer", d)`` and there is no record for ``d`` yet, gc
deletes no chunk at all (it still sweeps content, layers, leases and
ingests); `GCResult.chunks_skipped` says why. A pull therefore adds
`Resource.layer` to its lease before its first `ChunkStore.put_many` and
keeps it until the image record is written. The rule is checked again in
every chunk deletion batch, so a pull that starts during a gc stops the
chunk sweep at once. A chunk list that cannot be read (corrupt) stops the
chunk sweep too: gc cannot tell what that layer needs.

Ingests are removed last, unless a writer holds one (a non-blocking flock
says so), a live lease holds it as ``("ingest", d)``, or ``d`` is reachable
as content or layer and neither the blob nor the layer record is stored
yet (a partial file left once either exists is a leftover: the
`verified_path` flow stores a layer record, not the blob).

Freed space is reused by LMDB; its data file does not shrink.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from fusesnap.errors import AlreadyExistsError, NotFoundError
from fusesnap.store import chunks, gc, layers
from fusesnap.store.blobs import Txn, delete_blob, get_info, iter_infos
from fusesnap.store.chunks import ChunkStats
from fusesnap.store.env import Env
from fusesnap.store.ingest import list_ingests, remove_ingest
from fusesnap.store.leases import delete_lease, is_live, iter_leases
from fusesnap.store.links import ARTIFACT_MANIFEST, PARENT_TYPES, Marker, Marks
from fusesnap.store.records import (
    CONTENT,
    INGEST,
    LAYER,
    ContentInfo,
    IngestInfo,
    LayerInfo,
    LeaseRecord,
)
from fusesnap.store.schema import CHUNKS
from fusesnap.store.store import Store

__all__ = ["ARTIFACT_MANIFEST", "PARENT_TYPES", "GCResult", "collect_garbage"]

log = logging.getLogger(__name__)

DEFAULT_BATCH = 256
DEFAULT_CHUNK_BATCH = 4096

T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True, slots=True)
class GCResult:
    """What a collection removed (or, with ``dry_run``, would remove).

    `chunks_skipped` is empty if chunks were swept, else why the chunk
    sweep did not run or stopped (a pull storing a layer: module docstring).
    """

    removed_content: tuple[ContentInfo, ...]
    removed_leases: tuple[LeaseRecord, ...]
    removed_ingests: tuple[IngestInfo, ...]
    removed_layers: tuple[LayerInfo, ...] = ()
    removed_chunks: ChunkStats = field(default_factory=lambda: ChunkStats(0, 0))
    chunks_skipped: str = ""
    dry_run: bool = False

    @property
    def bytes_freed(self) -> int:
        """Blob and partial-file sizes, layer indexes and chunk lists, and
        chunks as stored (compressed)."""
        return (
            sum(c.size for c in self.removed_content)
            + sum(i.offset for i in self.removed_ingests)
            + sum(layers.stored_size(x) for x in self.removed_layers)
            + self.removed_chunks.stored_bytes
        )


def _in_batches(
    env: Env,
    marker: Marker,
    items: list[T],
    size: int,
    delete: Callable[[Txn, Marks, list[T]], list[R] | None],
) -> list[R]:
    """Run ``delete`` on ``items``, ``size`` at a time, each batch in its own
    write transaction that re-marks first. ``delete`` returns what went, or
    `None` to stop. Results count only once their transaction committed."""
    out: list[R] = []
    for start in range(0, len(items), size):
        with env.txn(write=True, buffers=True) as txn:
            gone = delete(txn, marker.mark(txn), items[start : start + size])
        if gone is None:
            break
        out.extend(gone)
    return out


def collect_garbage(
    store: Store,
    *,
    dry_run: bool = False,
    now: float | None = None,
    batch_size: int = DEFAULT_BATCH,
    chunk_batch_size: int = DEFAULT_CHUNK_BATCH,
) -> GCResult:
    """Delete dead leases, unreachable content, layers and chunks, and
    unprotected ingests.

    With ``dry_run`` nothing changes and the result lists what would go.
    ``now`` (default: the clock) decides which leases have expired.
    """
    env = store.env
    now = time.time() if now is None else now
    marker = Marker(env, now)

    with env.txn(write=not dry_run) as txn:
        dead = [lease for lease in iter_leases(txn, env) if not is_live(lease, now)]
        if not dry_run:
            for lease in dead:
                delete_lease(txn, env, lease.id)

    with env.txn(buffers=True) as txn:
        marks = marker.mark(txn)
        content = [i for i in iter_infos(txn, env) if (CONTENT, i.digest) not in marks.nodes]
        doomed_layers = [
            i for i in layers.iter_infos(txn, env) if (LAYER, i.digest) not in marks.nodes
        ]
        doomed_chunks: list[bytes] = []
        would_free = 0
        if not marks.hold:
            cursor = txn.cursor(db=env.db(CHUNKS))
            doomed_chunks = gc.sweep(map(bytes, cursor.iternext(values=False)), marks.chunks)
            if dry_run:
                for key in doomed_chunks:
                    would_free += len(txn.get(key, b"", db=env.db(CHUNKS)))
    held = [marks.hold] if marks.hold else []

    if dry_run:
        result = GCResult(
            removed_content=tuple(content),
            removed_leases=tuple(dead),
            removed_ingests=tuple(_ingests(env, marker, dry_run=True)),
            removed_layers=tuple(doomed_layers),
            removed_chunks=ChunkStats(len(doomed_chunks), would_free),
            chunks_skipped=marks.hold,
            dry_run=True,
        )
        _log(result)
        return result

    def sweep_content(txn: Txn, marks: Marks, batch: list[ContentInfo]) -> list[ContentInfo]:
        out = []
        for info in batch:
            if (CONTENT, info.digest) in marks.nodes:
                continue  # a pull took it up since the first mark
            gone = delete_blob(txn, env, info.digest)
            if gone is not None:
                out.append(gone)
        return out

    def sweep_layers(txn: Txn, marks: Marks, batch: list[LayerInfo]) -> list[LayerInfo]:
        out = []
        for info in batch:
            if (LAYER, info.digest) in marks.nodes:
                continue
            gone = layers.delete_layer(txn, env, info.digest)
            if gone is not None:
                out.append(gone)
        return out

    def sweep_chunks(txn: Txn, marks: Marks, batch: list[bytes]) -> list[ChunkStats] | None:
        if marks.hold:
            held.append(marks.hold)
            return None
        return [chunks.delete_chunks(txn, env, gc.sweep(batch, marks.chunks))]

    removed = _in_batches(env, marker, content, batch_size, sweep_content)
    removed_layers = _in_batches(env, marker, doomed_layers, batch_size, sweep_layers)
    chunk_batches = _in_batches(env, marker, doomed_chunks, chunk_batch_size, sweep_chunks)
    result = GCResult(
        removed_content=tuple(removed),
        removed_leases=tuple(dead),
        removed_ingests=tuple(_ingests(env, marker, dry_run=False)),
        removed_layers=tuple(removed_layers),
        removed_chunks=ChunkStats(
            sum(s.count for s in chunk_batches), sum(s.stored_bytes for s in chunk_batches)
        ),
        chunks_skipped=held[0] if held else "",
    )
    _log(result)
    return result


def _ingests(env: Env, marker: Marker, *, dry_run: bool) -> list[IngestInfo]:
    """Remove (or list) the partial files nothing protects."""
    found = list_ingests(env)
    with env.txn() as txn:
        nodes = marker.mark(txn).nodes
        needed = {
            i.digest
            for i in found
            if (INGEST, i.digest) in nodes
            or (
                {(CONTENT, i.digest), (LAYER, i.digest)} & nodes
                and get_info(txn, env, i.digest) is None
                and not layers.has_layer(txn, env, i.digest)
            )
        }
    out: list[IngestInfo] = []
    for ingest in found:
        if ingest.locked or ingest.digest in needed:
            continue
        if not dry_run:
            try:
                remove_ingest(env, ingest.digest)
            except (AlreadyExistsError, NotFoundError):
                continue  # a writer took it, or it was committed, since we looked
        out.append(ingest)
    return out


def _log(result: GCResult) -> None:
    log.info(
        "gc: %s %d blobs, %d layers, %d chunks, %d leases, %d ingests (%d bytes)%s",
        "would remove" if result.dry_run else "removed",
        len(result.removed_content),
        len(result.removed_layers),
        result.removed_chunks.count,
        len(result.removed_leases),
        len(result.removed_ingests),
        result.bytes_freed,
        f"; chunks kept: {result.chunks_skipped}" if result.chunks_skipped else "",
    )
