"""Fetched chunks stored in the background, in batches (the fetcher's `ChunkWriter`).

A fetched chunk is verified (`cut_span`) and handed to its readers at once; storing it
(zstd at level 3 and an LMDB commit, ~5-10 ms a MiB on a small machine) is this
writer's job. It gathers what arrives while it writes and stores it in one write
transaction of up to `BATCH_BYTES`, so a burst of spans costs one commit (and one
disk sync) per batch instead of one per chunk. Commits stay durable (the store is
never opened without sync): an LMDB environment flag is not per transaction, and
``sync=False`` would cover the metadata written through the same environment too.

Until its batch is committed a chunk is *pending*: `get` answers from memory, so
nobody fetches it again meanwhile. Beyond ``max_pending`` bytes queued, `room` makes
the fetch that produced them wait (the fetches slow down, not the readers).

Failures: a batch that cannot be stored (disk full, a store error) is dropped: its
chunks are fetched again when next needed. The first failure is logged as a warning,
later ones at debug level; all are counted (`FetchStats.store_failures`). The writer
never raises into the fetcher or the mount.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Protocol

import trio

from fusesnap.blocking import run_blocking
from fusesnap.lazy.limits import FetchStats

__all__ = ["BATCH_BYTES", "ChunkWriter", "VerifiedChunks"]

log = logging.getLogger(__name__)

BATCH_BYTES = 32 << 20
MAX_PENDING = 256 << 20


class VerifiedChunks(Protocol):
    """Where the writer stores (`fusesnap.store.ChunkStore.put_many`); blocking."""

    def put_many(self, items: Iterable[tuple[bytes, bytes]], *, verified: bool = ...) -> object: ...


class ChunkWriter:
    """Store verified chunks in batches from a task of its own (`run`).

    Concurrency: `add`, `room` and `flush` are called from tasks of the writer's trio loop; `get`
    and ``in`` from worker threads too (a chunk is always in one of its two tables).
    """

    def __init__(
        self,
        chunks: VerifiedChunks,
        stats: FetchStats,
        *,
        batch_bytes: int = BATCH_BYTES,
        max_pending: int = MAX_PENDING,
    ) -> None:
        self._chunks, self._stats = chunks, stats
        self._batch_bytes, self._max_pending = batch_bytes, max_pending
        self._pending: dict[bytes, bytes] = {}  # arrived, not yet in a batch
        self._writing: dict[bytes, bytes] = {}  # in the batch being written
        self._pending_bytes = 0
        self._changed = trio.Event()  # something arrived, a batch ended, or `run` did
        self._warned = False
        self._running = False

    def get(self, digest: bytes) -> bytes | None:
        """A chunk that is verified but not stored yet."""
        data = self._pending.get(digest)
        return self._writing.get(digest) if data is None else data

    def __contains__(self, digest: object) -> bool:
        return digest in self._pending or digest in self._writing

    @property
    def busy(self) -> bool:
        return bool(self._pending or self._writing)

    def _signal(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    def add(self, chunks: dict[bytes, bytes]) -> None:
        """Queue verified ``{digest: bytes}`` for storing (before their flights resolve:
        a chunk is always in a flight, the queue or the store)."""
        for digest, data in chunks.items():
            if digest not in self:
                self._pending[digest] = data
                self._pending_bytes += len(data)
        self._signal()

    async def room(self) -> None:
        """Wait while the queue holds ``max_pending`` bytes or more."""
        while self._pending_bytes >= self._max_pending:
            await self._changed.wait()

    async def flush(self, digests: Iterable[bytes] | None = None) -> None:
        """Wait until ``digests`` (default: everything queued so far) are stored or
        dropped; at once if `run` is not running (then nothing will be)."""
        wanted = None if digests is None else set(digests)
        while self._running and (
            (wanted is None and self.busy) or (wanted and any(d in self for d in wanted))
        ):
            await self._changed.wait()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Store what arrives, batch after batch, until cancelled."""
        self._running = True
        task_status.started()
        try:
            await self._run()
        finally:
            self._running = False
            self._signal()

    async def _run(self) -> None:
        while True:
            while not self._pending:
                await self._changed.wait()
            batch, size = {}, 0
            for digest, data in self._pending.items():
                if size >= self._batch_bytes:
                    break
                batch[digest] = data
                size += len(data)
            # Into `_writing` before out of `_pending`: a worker thread asking `get`
            # meanwhile must find it in one or the other.
            self._writing = batch
            for digest in batch:
                del self._pending[digest]
            self._pending_bytes -= size
            try:
                await run_blocking(self._store, batch)
            finally:
                self._writing = {}
                self._signal()

    def _store(self, batch: dict[bytes, bytes]) -> None:
        """(worker thread) One batch, one transaction; a failure is counted, not raised."""
        try:
            self._chunks.put_many(batch.items(), verified=True)
        except Exception as exc:  # a store error, disk full, or a bug: never the mount's end
            self._stats.store_failures += len(batch)
            if not self._warned:
                self._warned = True
                log.warning(
                    "cannot store %d fetched chunks (they will be fetched again when needed; "
                    "further failures are only counted): %s",
                    len(batch),
                    exc,
                )
            else:
                log.debug("cannot store %d fetched chunks: %s", len(batch), exc)
            return
        self._stats.store_batches += 1
        self._stats.chunks_stored += len(batch)
