"""Chunks for a mount whose layers are not all local: the store first, else the registry.

A lazily pulled image has every layer's index in the store but only some (or
none) of the chunks. `LazyChunks` knows where each chunk of the image lives
(its layer index and `ChunkRef`) and asks a `ChunkFetcher`, which takes it
from the store if it is there, else fetches the smallest verified range from
the registry and stores it. The mount's lease holds the layers, and a layer's
record lists its chunks, so gc keeps what was fetched.
"""

from __future__ import annotations

from collections.abc import Sequence

from fusesnap.blocking import run_read
from fusesnap.index import ChunkRef, Entry, LayerIndex
from fusesnap.lazy.fetcher import ChunkFetcher
from fusesnap.store import ChunkStore

__all__ = ["LazyChunks"]


class LazyChunks:
    """``await read(digest, start, end)``: bytes of a chunk of the image (the chunk
    cache's `LoadRange`), from the store or fetched on demand.

    `fetcher` is set once the daemon's trio loop has opened the registry
    client (it lives as long as that loop); until then only local chunks load.
    """

    def __init__(self, chunks: ChunkStore, indexes: Sequence[LayerIndex]) -> None:
        self._chunks = chunks
        self.indexes: tuple[LayerIndex, ...] = tuple(indexes)
        self._where: dict[bytes, tuple[LayerIndex, ChunkRef]] = {}
        for index in indexes:
            for entry in index.entries:
                for ref in entry.chunks:
                    self._where.setdefault(ref.digest, (index, ref))
        self.fetcher: ChunkFetcher | None = None

    @property
    def chunks(self) -> ChunkStore:
        return self._chunks

    async def read(self, digest: bytes, start: int, end: int) -> tuple[int, bytes]:
        """``(lo, data)``: checked bytes from ``lo <= start`` covering ``[start, end)``."""
        located = self._where.get(digest)
        if located is None or self.fetcher is None:
            return await run_read(self._chunks.read, digest, start, end)
        return await self.fetcher.read(*located, start, end)

    def by_layer(self) -> list[tuple[LayerIndex, list[ChunkRef]]]:
        """Every chunk of the image grouped by layer (for ``--prefetch all``)."""
        out: dict[int, tuple[LayerIndex, list[ChunkRef]]] = {}
        for index, ref in self._where.values():
            out.setdefault(id(index), (index, []))[1].append(ref)
        return list(out.values())

    @property
    def has_landmarks(self) -> bool:
        """Whether some layer names eStargz landmark files (`landmarks`)."""
        return any(index.prefetch for index in self.indexes)

    def landmarks(self) -> list[tuple[LayerIndex, list[Entry]]]:
        """Per layer with eStargz landmarks (`LayerIndex.prefetch`), those files' entries."""
        out: list[tuple[LayerIndex, list[Entry]]] = []
        for index in self.indexes:
            entries = [index.by_path[p] for p in index.prefetch if p in index.by_path]
            entries = [e for e in entries if e.chunks]
            if entries:
                out.append((index, entries))
        return out

    def locate(self, position: int, digest: bytes) -> tuple[LayerIndex, ChunkRef] | None:
        """Chunk ``digest`` of layer ``position`` (an access profile's entry); None if the
        image has no such chunk there (then anywhere else it has it)."""
        located = self._where.get(digest)
        if located is None or not 0 <= position < len(self.indexes):
            return located
        index = self.indexes[position]
        if located[0] is index:
            return located
        for entry in index.entries:  # a chunk several layers share: rare
            for ref in entry.chunks:
                if ref.digest == digest:
                    return index, ref
        return located
