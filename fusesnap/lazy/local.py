"""The chunks a fetcher has without the network: the store, and the writer's queue.

`LocalChunks` answers "do we have it?" before a fetch, once per chunk: first the
chunks verified but not yet stored (`fusesnap.lazy.writer.ChunkWriter`), then the
store. A stored chunk that is corrupt (`StoreError`) counts as missing: it is logged,
deleted (the store never overwrites a chunk it has, so the fetch that replaces it
could not be stored otherwise) and fetched again.

Keys are chunk digests, or the locators of a span-verified layer's chunks (a SOCI
zTOC's, `LayerIndex.span_verified`): those are named by place, and their sha256 is
learned when their span verifies (`name`). A locator not named yet is missing.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
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
    """Reads of the local chunks; every method but `name` and `queued` is blocking (run it
    in a worker thread)."""

    def __init__(self, chunks: ChunkStorage, writer: ChunkWriter) -> None:
        self.chunks, self._writer = chunks, writer
        self._names: dict[bytes, bytes] = {}  # span-verified chunks: locator -> sha256

    def name(self, names: Mapping[bytes, bytes]) -> None:
        """Learn ``{locator: sha256}`` of verified chunks (before they are queued)."""
        self._names.update(names)

    def digest(self, key: bytes) -> bytes:
        """The sha256 that ``key`` is stored under (itself unless it is a named locator)."""
        return self._names.get(key, key)

    def queued(self, key: bytes) -> bytes | None:
        """A chunk verified but not stored yet."""
        return self._writer.get(self.digest(key))

    def missing(self, keys: Iterable[bytes]) -> set[bytes]:
        """The keys whose chunk is neither queued nor stored."""
        digests = {k: self.digest(k) for k in keys}
        absent = self.chunks.missing({d for d in digests.values() if d not in self._writer})
        return {k for k, d in digests.items() if d in absent}

    def get_many(self, keys: list[bytes]) -> dict[bytes, bytes]:
        """The whole chunks among ``keys`` that are queued or stored."""
        out = {k: data for k in keys if (data := self.queued(k)) is not None}
        rest = {k: self.digest(k) for k in keys if k not in out}
        if not rest:
            return out
        wanted = set(rest.values())
        try:
            found = self.chunks.get_many(wanted)
        except StoreError:
            found = {}
            for digest in wanted:
                try:
                    found.update(self.chunks.get_many([digest]))
                except StoreError as exc:
                    self._drop_corrupt(digest, exc)
        out.update((k, found[d]) for k, d in rest.items() if d in found)
        return out

    def read(self, key: bytes, start: int, end: int) -> tuple[int, bytes] | None:
        """As `ChunkStorage.read` (a queued chunk comes whole); None if not here."""
        queued = self.queued(key)
        if queued is not None:
            return 0, queued
        digest = self.digest(key)
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
