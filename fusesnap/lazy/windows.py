"""Gzip windows: the 32 KiB a span's inflation starts from, apart from the index.

An index names each checkpoint's window by sha256 (`fusesnap.index.model.Checkpoint`)
rather than carrying it. `with_windows_blob` makes the blob an index artifact pushes
beside the index: each window's zstd frame, in checkpoint order. `WindowSource.get`
returns a window from the chunk store, or else fetches its frame from that blob (one
range request), checks it against the digest and stores it. Concurrent gets of one
window share one fetch.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Awaitable, Callable, Collection, Mapping
from typing import TYPE_CHECKING, Protocol

import trio
import zstandard

from fusesnap.blocking import run_blocking
from fusesnap.digest import Digest
from fusesnap.errors import LayerError, RegistryError, StoreError
from fusesnap.index import LayerIndex
from fusesnap.lazy.ranges import Access, LayerLayout, Span
from fusesnap.lazy.spandecode import decode_window
from fusesnap.singleflight import SingleFlight

if TYPE_CHECKING:
    from fusesnap.lazy.fetcher import FetchRange
    from fusesnap.lazy.local import ChunkStorage

__all__ = ["LoadWindows", "WindowSource", "window_point", "with_windows_blob"]

log = logging.getLogger(__name__)

LoadWindows = Callable[[Collection[bytes]], Mapping[bytes, bytes]]
_WINDOW_ZSTD_LEVEL = 9


class _Counters(Protocol):
    requests: int
    bytes_fetched: int
    windows_fetched: int


def window_point(layout: LayerLayout, span: Span) -> int | None:
    """The checkpoint whose window ``span`` needs and the index does not carry, if any."""
    cp = layout.index.checkpoints
    if layout.access is not Access.GZIP or cp is None or span.point < 0:
        return None
    p = cp.points[span.point]
    return span.point if p.digest and not p.window else None


class WindowSource:
    """Windows by checkpoint, from the store or the registry (see the module docstring).

    ``from_store(digests)`` is the fetcher's store read (blocking; corrupt = missing);
    ``stats`` its counters, which window fetches add to.
    """

    def __init__(
        self,
        fetch_range: FetchRange,
        chunks: ChunkStorage,
        stats: _Counters,
        from_store: Callable[[list[bytes]], dict[bytes, bytes]],
    ) -> None:
        self._fetch_range = fetch_range
        self._chunks = chunks
        self._stats = stats
        self._from_store = from_store
        self._flights: SingleFlight[bytes, bytes] = SingleFlight()

    async def with_span(
        self, layout: LayerLayout, span: Span, fetch_span: Callable[[], Awaitable[bytes]]
    ) -> tuple[bytes | None, bytes]:
        """``fetch_span()``'s bytes and the window ``span`` needs (`None`: none or inline),
        fetched side by side; an error of either is raised as itself."""
        point = window_point(layout, span)
        if point is None:
            return None, await fetch_span()
        got: dict[str, bytes | Exception] = {}

        async def run(key: str, fn: Callable[[], Awaitable[bytes]]) -> None:
            try:
                got[key] = await fn()
            except Exception as exc:  # raised below, as itself (not in a group)
                got[key] = exc

        async with trio.open_nursery() as nursery:
            nursery.start_soon(run, "window", lambda: self.get(layout, point))
            nursery.start_soon(run, "data", fetch_span)
        window, data = got["window"], got["data"]
        for value in (data, window):
            if isinstance(value, Exception):
                raise value
        assert isinstance(window, bytes)
        assert isinstance(data, bytes)
        return window, data

    async def get(self, layout: LayerLayout, point: int) -> bytes:
        """The verified window of checkpoint ``point``; `LayerError`, `RegistryError` or
        `DigestMismatchError` if it cannot be had."""
        assert layout.index.checkpoints is not None
        digest = layout.index.checkpoints.points[point].digest
        new, joined = self._flights.claim((digest,))
        if joined:
            return await joined[digest].wait()
        flight = new[digest]
        try:
            window = await self._load(layout, point)
        except Exception as exc:
            flight.fail(exc)
            raise
        except BaseException:
            flight.fail(LayerError(f"{layout.what}: window fetch abandoned"))
            raise
        flight.resolve(window)
        return window

    async def _load(self, layout: LayerLayout, point: int) -> bytes:
        cp = layout.index.checkpoints
        assert cp is not None
        p = cp.points[point]
        found = await run_blocking(self._from_store, [p.digest])
        if p.digest in found:
            return found[p.digest]
        what = f"{layout.what}: gzip window sha256:{p.digest.hex()[:12]}"
        if cp.windows_blob is None or p.wclength <= 0:
            raise LayerError(f"{what} is not in the store, and the index names no windows blob")
        offset, length = cp.window_range(point)
        self._stats.requests += 1
        frame = await self._fetch_range(cp.windows_blob, offset, length)
        self._stats.bytes_fetched += len(frame)
        if len(frame) != length:
            raise RegistryError(f"{what}: got {len(frame)} of {length} bytes")
        window = await run_blocking(decode_window, frame, cp.window_size, p.digest, what)
        self._stats.windows_fetched += 1
        try:
            await run_blocking(self._chunks.put_many, [(p.digest, window)])
        except (StoreError, ValueError) as exc:
            log.warning("%s: cannot store: %s", what, exc)
        return window


def with_windows_blob(
    index: LayerIndex, load_windows: LoadWindows | None
) -> tuple[LayerIndex, bytes | None]:
    """(blocking) ``index`` pointing into a windows blob of its gzip windows, and that blob
    (`None`: the index has no windows)."""
    cp = index.checkpoints
    if cp is None or not any(p.digest for p in cp.points):
        return index, None
    want = [p.digest for p in cp.points if p.digest and not p.window]
    found = load_windows(want) if want and load_windows is not None else {}
    frames: list[bytes] = []
    points = []
    compressor = zstandard.ZstdCompressor(level=_WINDOW_ZSTD_LEVEL)
    for p in cp.points:
        if not p.digest:
            points.append(dataclasses.replace(p, window=b"", wclength=0))
            continue
        window = p.window or found.get(p.digest)
        if window is None:
            raise LayerError(
                f"layer {index.layer_digest.short}: gzip window sha256:{p.digest.hex()[:12]} "
                "is not in the store; fetch the layer (pull --all) before pushing its index"
            )
        frame = compressor.compress(window)
        frames.append(frame)
        points.append(dataclasses.replace(p, window=b"", wclength=len(frame)))
    blob = b"".join(frames)
    checkpoints = dataclasses.replace(cp, points=tuple(points), windows_blob=Digest.of(blob))
    return dataclasses.replace(index, checkpoints=checkpoints), blob
