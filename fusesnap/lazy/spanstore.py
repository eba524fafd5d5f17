"""A span-verified layer's range from the zTOC spans the chunk store holds, else the registry.

Every zTOC span that `fusesnap.lazy.spandecode` verified goes to the fetcher's writer
and then the chunk store, under its span digest (the sha256 of its compressed bytes, so
the store keeps it as it keeps a chunk, behind frame checksums). A range whose spans
are all there (queued or stored: `fusesnap.lazy.local.LocalChunks`) is put together
from them and costs no request; if one is missing, the whole range is fetched. Either way
the bytes are verified span by span again before they are inflated.

A SOCI span is large (4 MiB of output by default) and the kernel reads a file in
several requests at once: `RangeLocks` lets one request at a time fetch and decode a
given range, so the others find its spans queued or stored.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import trio

from fusesnap.blocking import run_read
from fusesnap.lazy.limits import FetchStats
from fusesnap.lazy.ranges import LayerLayout, Span

__all__ = ["RangeLocks", "stored_or_fetched"]


class RangeLocks:
    """One task at a time per blob range of a span-verified layer (module docstring)."""

    def __init__(self) -> None:
        self._held: dict[tuple[object, int, int], tuple[trio.Lock, list[int]]] = {}

    @asynccontextmanager
    async def hold(self, layout: LayerLayout, span: Span) -> AsyncIterator[None]:
        """Hold ``span``'s range for the block (at once for a layer that is not span-verified)."""
        if not layout.span_verified:
            yield
            return
        key = (layout.index.layer_digest, span.start, span.end)
        lock, users = self._held.setdefault(key, (trio.Lock(), [0]))
        users[0] += 1
        try:
            async with lock:
                yield
        finally:
            users[0] -= 1
            if not users[0]:
                del self._held[key]


async def stored_or_fetched(
    layout: LayerLayout,
    span: Span,
    from_store: Callable[[list[bytes]], dict[bytes, bytes]],
    fetch: Callable[[], Awaitable[bytes]],
    stats: FetchStats,
) -> bytes:
    """The blob bytes ``[span.start, span.end)``: from the stored zTOC spans, else
    ``fetch()``. ``from_store(digests)`` is the fetcher's (blocking) local read."""
    zspans = layout.zspans(span)
    inside = all(span.start <= z.start <= z.end <= span.end for z in zspans)
    covered = zspans and zspans[0].start == span.start and zspans[-1].end == span.end
    if not inside or not covered:
        return await fetch()
    found = await run_read(from_store, [z.digest for z in zspans])
    if len(found) < len({z.digest for z in zspans}):
        return await fetch()
    out = bytearray(span.size)
    for z in zspans:  # neighbours share a byte where a span starts mid-byte
        out[z.start - span.start : z.end - span.start] = found[z.digest]
    stats.spans_from_store += len(zspans)
    return bytes(out)
