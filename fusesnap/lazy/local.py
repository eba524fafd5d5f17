"""The chunks a fetcher has without the network: the store, and the writer's queue.

`LocalChunks` answers "do we have it?" before a fetch, once per chunk: first the
chunks verified but not yet stored (`fusesnap.lazy.writer.ChunkWriter`), then the
store. A stored chunk that is corrupt (`StoreError`) counts as missing: it is logged,
deleted (the store never overwrites a chunk it has, so the fetch that replaces it
could not be stored otherwise) and fetched again.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Protocol

from fusesnap.errors import NotFoundError, StoreError
from fusesnap.lazy.writer import ChunkWriter

__all__ = ["ChunkStorage", "LocalChunks"]

log = logging.getLogger(__name__)


class ChunkStorage(Protocol):
    """What the fetcher needs of the chunk store (`fusesnap.store.ChunkStore`); blocking."""

    def get_many(self, digests: Iterable[bytes]) -> dict[bytes, bytes]: ...

    def read(self, digest: bytes, start: int, end: int) -> tuple[int, bytes]: ...

    def missing(self, digests: Iterable[bytes]) -> set[bytes]: ...

    def delete_many(self, digests: Iterable[bytes]) -> object: ...

    def put_many(self, items: Iterable[tuple[bytes, bytes]], *, verified: bool = ...) -> object: ...

    def touch(self, digests: Iterable[bytes]) -> None: ...

    def evict(self, need: int) -> object: ...


class LocalChunks:
    """Reads of the local chunks; every method is blocking (run it in a worker thread)."""

    def __init__(self, chunks: ChunkStorage, writer: ChunkWriter) -> None:
        self.chunks, self._writer = chunks, writer

    def get_many(self, digests: list[bytes]) -> dict[bytes, bytes]:
        """The whole chunks among ``digests`` that are queued or stored."""
        out = {d: data for d in digests if (data := self._writer.get(d)) is not None}
        rest = [d for d in digests if d not in out]
        if not rest:
            return out
        try:
            out.update(self.chunks.get_many(rest))
        except StoreError:
            for digest in rest:
                try:
                    out.update(self.chunks.get_many([digest]))
                except StoreError as exc:
                    self._drop_corrupt(digest, exc)
        return out

    def read(self, digest: bytes, start: int, end: int) -> tuple[int, bytes] | None:
        """As `ChunkStorage.read` (a queued chunk comes whole); None if not here."""
        queued = self._writer.get(digest)
        if queued is not None:
            return 0, queued
        try:
            got = self.chunks.read(digest, start, end)
        except NotFoundError:
            return None
        except StoreError as exc:
            self._drop_corrupt(digest, exc)
            return None
        self._writer.note_read(digest)
        return got

    def _drop_corrupt(self, digest: bytes, error: StoreError) -> None:
        log.warning("%s; fetching it again", error)
        try:
            self.chunks.delete_many([digest])
        except StoreError as exc:
            log.warning("%s", exc)
