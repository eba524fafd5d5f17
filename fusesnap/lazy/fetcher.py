"""The lazy fetcher: chunks on demand from a registry, verified and kept in the chunk store.

    async with open_chunk_fetcher(
        lambda digest, offset, length: client.read_range(ref, digest, offset, length),
        store.chunks,
    ) as fetcher:
        data = await fetcher.get(index, chunk)          # one chunk, verified
        found = await fetcher.get_many(index, chunks)   # {sha256: bytes}
        await fetcher.prefetch(index, entries)           # warm the store, in blob order

        lo, data = await fetcher.read(index, chunk, start, end)  # a range, as the cache wants

A chunk missing from the store is produced from the smallest blob range that
holds it (`fusesnap.lazy.ranges`: an exact slice, a frame, or a gzip span
between two checkpoints), decompressed off the trio loop and checked against its
sha256 (`fusesnap.lazy.spandecode`): that check is where its bytes enter, the
one sha256 they get. Its waiters have it then; the store gets it afterwards,
in the background and in batches (`fusesnap.lazy.writer`), and until then it
is served from memory. Chunks that the caller did not ask for but that the same
bytes produce (the rest of the inflated gzip span, other frames in the range)
are verified and stored too: they are what the next read wants, and cost no
more network. A gzip span's window comes from the store or the index's windows
blob, beside the span's request (`fusesnap.lazy.windows`).

The store is asked once per chunk before a fetch (flights and the writer's
queue are asked first, in memory); a stored chunk that is corrupt counts as
missing and is fetched again.

A span-verified layer's chunks (a SOCI zTOC's) are asked for by locator: their
zTOC spans are checked against the span digests before anything is inflated, and
each chunk is queued under the sha256 of its bytes, which `LocalChunks` remembers
for its locator (so the queue and the store answer for it from then on). The
verified spans are queued too, under their digests: a later read inflates a span
from the store rather than the registry (`fusesnap.lazy.spanstore`).

Single flight and batching. Every chunk being fetched has a `Flight` keyed by
its digest; a `get` of a chunk already on its way waits for that flight. A
batch of needs (`get_many`) is planned into as few requests as the limits
allow (`FetchLimits`: needs within ``max_gap`` of each other are merged, up to
``max_request`` bytes), run in parallel, ``max_parallel`` at most per fetcher.

Failures. The registry client retries; what it gives up on (`RegistryError`),
a range that does not decode (`LayerError`) or a chunk that does not verify
(`DigestMismatchError`, nothing stored) fails that request's chunks only.
Each request has ``timeout`` seconds (then `RegistryUnavailableError`); failures
are not remembered: the next call tries again.

Cancellation. Fetches run in the fetcher's own nursery, not in the caller's task:
a cancelled `get` stops waiting; the fetch goes on for the other waiters (and the
store). Leaving `open_chunk_fetcher` stores what is queued (up to
`FLUSH_TIMEOUT` seconds, shielded) and cancels what is left.

The store must keep what is stored here: hold the layer (its record, or a lease
on ``("layer", digest)``) while fetching, as `fusesnap.pull.image` does.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from functools import partial

import trio

from fusesnap.blocking import run_blocking, run_read
from fusesnap.digest import Digest
from fusesnap.errors import (
    FusesnapError,
    LayerError,
    RegistryError,
    RegistryUnavailableError,
)
from fusesnap.groups import first_error
from fusesnap.index import ChunkRef, Entry, LayerIndex
from fusesnap.lazy.limits import FetchLimits, FetchStats, Pace, PrefetchResult, Tally
from fusesnap.lazy.local import ChunkStorage, LocalChunks
from fusesnap.lazy.ranges import LayerLayout, Span, layout_of
from fusesnap.lazy.spandecode import Cut, cut_span
from fusesnap.lazy.spanstore import RangeLocks, stored_or_fetched
from fusesnap.lazy.windows import WindowSource
from fusesnap.lazy.writer import ChunkWriter
from fusesnap.singleflight import Flight, SingleFlight

__all__ = [
    "ChunkFetcher",
    "ChunkStorage",
    "FetchRange",
    "open_chunk_fetcher",
]

log = logging.getLogger(__name__)

FetchRange = Callable[[Digest, int, int], Awaitable[bytes]]
"""``(layer digest, offset, length) -> exactly those bytes of the blob``."""

# How long leaving `open_chunk_fetcher` may spend storing what is still queued.
FLUSH_TIMEOUT = 30.0


@asynccontextmanager
async def open_chunk_fetcher(
    fetch_range: FetchRange, chunks: ChunkStorage, *, limits: FetchLimits | None = None
) -> AsyncIterator[ChunkFetcher]:
    """A `ChunkFetcher` whose fetches run in a nursery that lives as long as the block.

    An exception from the block propagates as itself, not inside an exception group.
    """
    try:
        async with trio.open_nursery() as nursery:
            fetcher = ChunkFetcher(fetch_range, chunks, nursery=nursery, limits=limits)
            try:
                yield fetcher
            finally:
                # Verified chunks still queued: store them rather than fetch them again.
                with trio.CancelScope(shield=True), trio.move_on_after(FLUSH_TIMEOUT):
                    await fetcher.flush()
                nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        # Fetch tasks hand their errors to their waiters and never raise, so a group
        # holds the block's own exception.
        exc = first_error(group)
        context = exc.__context__
        try:
            raise exc
        finally:
            exc.__context__ = context


class ChunkFetcher:
    """Fetch, verify and store the chunks of lazily mounted layers (see the module docstring).

    ``nursery`` runs the fetches (`open_chunk_fetcher` provides one).

    Concurrency: every method may be called from many trio tasks at once.
    """

    def __init__(
        self,
        fetch_range: FetchRange,
        chunks: ChunkStorage,
        *,
        nursery: trio.Nursery,
        limits: FetchLimits | None = None,
    ) -> None:
        self._fetch_range = fetch_range
        self._chunks, self._nursery = chunks, nursery
        self.limits = limits or FetchLimits()
        self._slots = trio.CapacityLimiter(self.limits.max_parallel)
        self._flights: SingleFlight[bytes, bytes] = SingleFlight()
        self._stats = FetchStats()
        self._writer = ChunkWriter(chunks, self._stats)
        nursery.start_soon(self._writer.run)
        self._local = LocalChunks(chunks, self._writer)
        self._windows = WindowSource(fetch_range, chunks, self._stats, self._local.get_many)
        self._layouts: dict[Digest, LayerLayout] = {}  # by layer digest
        self._ranges = RangeLocks()

    def _layout(self, index: LayerIndex) -> LayerLayout:
        """``index``'s layout, built once per layer; `LayerError` if it has no random access."""
        layout = self._layouts.get(index.layer_digest)
        if layout is None:
            layout = self._layouts[index.layer_digest] = layout_of(index)
        return layout

    @property
    def stats(self) -> FetchStats:
        """A copy of the counters."""
        return dataclasses.replace(self._stats)

    async def flush(self) -> None:
        """Wait until every chunk fetched so far is stored (or its store failed)."""
        await self._writer.flush()

    # -- reads ------------------------------------------------------------------------------

    async def get(self, index: LayerIndex, ref: ChunkRef) -> bytes:
        """The verified bytes of chunk ``ref`` of layer ``index`` (store first, else fetched).

        Raise `RegistryError` (the registry failed past its retries or the
        timeout), `LayerError` (the layer has no random access, or the range
        does not decode) or `DigestMismatchError` (the bytes do not verify).
        """
        return (await self.get_many(index, (ref,)))[ref.digest]

    async def read(
        self, index: LayerIndex, ref: ChunkRef, start: int, end: int
    ) -> tuple[int, bytes]:
        """``(lo, data)``: bytes of chunk ``ref`` from ``lo <= start`` that cover
        ``[start, end)``: only the frames that hold them if it is stored (read in the
        read pool, `fusesnap.blocking.run_read`), else the whole chunk, fetched. Errors
        as `get`."""
        digest = ref.digest
        in_flight = digest in self._flights
        if not in_flight:
            found = await run_read(self._local.read, digest, start, end)
            if found is not None:
                self._stats.chunks_from_store += 1
                return found
        return 0, (await self._fetch_missing(index, {digest: ref}, int(in_flight)))[digest]

    async def get_many(self, index: LayerIndex, refs: Iterable[ChunkRef]) -> dict[bytes, bytes]:
        """``{sha256: bytes}`` for every chunk in ``refs``; missing ones fetched in few requests.

        Every chunk is fetched (or fails) on its own: if some fail, the others
        are still stored, and the first error is raised after all are done.
        """
        want = {r.digest: r for r in refs}
        asked = [d for d in want if d not in self._flights]
        if asked:
            found = await run_blocking(self._local.get_many, asked)
            self._stats.chunks_from_store += len(found)
            want = {d: r for d, r in want.items() if d not in found}
        else:
            found = {}
        return {**found, **await self._fetch_missing(index, want, len(want) - len(asked))}

    async def _fetch_missing(
        self, index: LayerIndex, want: dict[bytes, ChunkRef], joined_count: int
    ) -> dict[bytes, bytes]:
        """Fetch ``want``, which the store was asked for and lacks (or which are in flight:
        ``joined_count`` of them when they were asked); join the flights already out."""
        out: dict[bytes, bytes] = {}
        for digest in list(want):
            queued = self._local.queued(digest)  # fetched while the store was asked
            if queued is not None:
                out[digest] = queued
                del want[digest]
        waits: dict[bytes, Flight[bytes, bytes]] = {}
        if want:
            # A layer without random access can still be read from the store (a full pull).
            layout = self._layout(index)
            new, joined = self._flights.claim(want)
            joined_count = max(joined_count, len(joined))
            waits.update(joined)
            waits.update(new)
            if new:
                self._nursery.start_soon(self._run_batch, layout, [want[d] for d in new], new)
        self._stats.single_flight_waits += joined_count
        errors: list[BaseException] = []
        for digest, flight in waits.items():
            try:
                out[digest] = await flight.wait()
            except FusesnapError as exc:
                errors.append(exc)
        if errors:
            raise errors[0]
        return out

    # -- prefetch ---------------------------------------------------------------------------

    async def prefetch(
        self,
        index: LayerIndex,
        entries_or_refs: Iterable[Entry | ChunkRef],
        *,
        rate_limit_bytes_per_s: float | None = None,
    ) -> PrefetchResult:
        """Fetch every chunk of ``entries_or_refs`` that the store lacks, in blob order.

        Requests are merged as in `get_many`, at most ``limits.prefetch_parallel``
        at once and, with ``rate_limit_bytes_per_s``, paced to that many blob
        bytes a second. Best effort: failures are counted, not raised (but a
        layer without random access that lacks chunks raises `LayerError` at once).
        """
        want: dict[bytes, ChunkRef] = {}
        for item in entries_or_refs:
            for ref in item.chunks if isinstance(item, Entry) else (item,):
                want.setdefault(ref.digest, ref)
        absent = await run_blocking(self._local.missing, list(want))
        todo = [r for d, r in want.items() if d in absent]
        if not todo:
            return PrefetchResult(chunks=len(want), already_stored=len(want), fetched=0, failed=0)
        layout = self._layout(index)
        spans, bad = self._plan(layout, todo)
        tally = Tally(failed=len(bad), first_error=next(iter(bad.values()), None))
        pace = Pace(rate_limit_bytes_per_s)
        slots = trio.Semaphore(self.limits.prefetch_parallel)

        async def one(span: Span) -> None:
            try:
                await self._prefetch_span(layout, span, tally)
            finally:
                slots.release()

        async with trio.open_nursery() as nursery:
            for span in spans:
                await pace.wait(span.size)
                await slots.acquire()
                nursery.start_soon(one, span)
        # "Stored now", as the result says (a pull checks the layer complete next).
        await self._writer.flush(self._local.digest(r.digest) for r in todo)
        return PrefetchResult(
            chunks=len(want),
            already_stored=len(want) - len(todo),
            fetched=tally.fetched,
            failed=tally.failed,
            first_error=tally.first_error,
        )

    async def _prefetch_span(self, layout: LayerLayout, span: Span, tally: Tally) -> None:
        new, joined = self._flights.claim(r.digest for r in span.refs)
        if new:
            refs = [r for r in span.refs if r.digest in new]
            self._nursery.start_soon(self._run_batch, layout, refs, new)
        for flight in (*new.values(), *joined.values()):
            try:
                await flight.wait()
                tally.fetched += 1
            except Exception as exc:  # best effort: counted, not raised
                tally.failed += 1
                tally.first_error = tally.first_error or exc

    # -- the work ---------------------------------------------------------------------------

    def _plan(
        self, layout: LayerLayout, refs: Sequence[ChunkRef]
    ) -> tuple[list[Span], dict[bytes, LayerError]]:
        """Spans for the chunks the layout can place, and an error for each one it cannot."""
        good: list[ChunkRef] = []
        bad: dict[bytes, LayerError] = {}
        for ref in refs:
            try:
                layout.piece(ref)
                good.append(ref)
            except LayerError as exc:
                bad[ref.digest] = exc
        spans = layout.plan(
            good,
            max_request=self.limits.max_request,
            max_gap=self.limits.max_gap,
            max_inflate=self.limits.max_inflate,
        )
        return spans, bad

    async def _run_batch(
        self, layout: LayerLayout, refs: list[ChunkRef], flights: dict[bytes, Flight[bytes, bytes]]
    ) -> None:
        """Resolve ``flights`` (one per ref), which the store was asked for: fetched."""
        try:
            spans, bad = self._plan(layout, refs)
            for digest, exc in bad.items():
                flights[digest].fail(exc)
            async with trio.open_nursery() as nursery:
                for span in spans:
                    nursery.start_soon(self._run_span, layout, span, flights)
        except Exception as exc:  # a bug, or the store failing: fail the waiters, not the mount
            log.exception("%s: fetching %d chunks failed", layout.what, len(refs))
            for flight in flights.values():
                flight.fail(exc)
        finally:
            gone = LayerError(f"{layout.what}: fetch abandoned (the fetcher is closing)")
            for flight in flights.values():
                flight.fail(gone)  # no-op for the resolved ones

    async def _run_span(
        self, layout: LayerLayout, span: Span, flights: dict[bytes, Flight[bytes, bytes]]
    ) -> None:
        what = f"{layout.what}: range [{span.start}, {span.end})"
        t0 = trio.current_time()
        try:
            async with self._slots, self._ranges.hold(layout, span):
                t1 = trio.current_time()
                with trio.fail_after(self.limits.timeout):
                    window, data = await self._fetch_span(layout, span)
                    t2 = trio.current_time()
                    cut = await run_blocking(self._decode, layout, span, data, window)
        except trio.TooSlowError:
            self._stats.failures += 1
            slow = RegistryUnavailableError(f"{what}: no answer within {self.limits.timeout:g} s")
            for ref in span.refs:
                flights[ref.digest].fail(slow)
            return
        except Exception as exc:
            self._stats.failures += 1
            if not isinstance(exc, FusesnapError):
                log.exception("%s: unexpected error", what)
            for ref in span.refs:
                flights[ref.digest].fail(exc)
            return
        self._stats.verify_failures += cut.verify_failures
        self._local.name(cut.names)
        self._writer.add(dict(cut.stored()))
        asked = 0
        for ref in span.refs:
            chunk = cut.chunks.get(ref.digest)
            if chunk is not None:
                asked += 1
                flights[ref.digest].resolve(chunk)
            else:
                err = cut.errors.get(ref.digest) or LayerError(f"{what}: chunk not produced")
                flights[ref.digest].fail(err)
        self._stats.chunks_fetched += asked
        self._stats.chunks_extra += len(cut.chunks) - asked
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "%s (%d bytes): waited %.0f ms, fetched in %.0f ms, decoded in %.0f ms; "
                "%d chunks asked, %d more",
                what,
                span.size,
                (t1 - t0) * 1e3,
                (t2 - t1) * 1e3,
                (trio.current_time() - t2) * 1e3,
                asked,
                len(cut.chunks) - asked,
            )
        await self._writer.room()

    async def _fetch_span(self, layout: LayerLayout, span: Span) -> tuple[bytes | None, bytes]:
        fetch = partial(self._fetch, layout, span.start, span.size)
        if layout.span_verified:
            fetch = partial(
                stored_or_fetched, layout, span, self._local.get_many, fetch, self._stats
            )
        return await self._windows.with_span(layout, span, fetch)

    async def _fetch(self, layout: LayerLayout, offset: int, length: int) -> bytes:
        self._stats.requests += 1
        data = await self._fetch_range(layout.index.layer_digest, offset, length)
        self._stats.bytes_fetched += len(data)
        if len(data) != length:
            raise RegistryError(
                f"{layout.what}: range [{offset}, {offset + length}): got {len(data)} bytes"
            )
        return data

    def _decode(self, layout: LayerLayout, span: Span, data: bytes, window: bytes | None) -> Cut:
        """(worker thread) Decode the span and verify; the neighbours too if missing."""
        asked = {r.digest for r in span.refs}
        extra = [r for r in layout.within(span) if r.digest not in asked]
        if extra:
            absent = self._local.missing(r.digest for r in extra)
            extra = [r for r in extra if r.digest in absent]

        def read_before(offset: int, length: int) -> bytes:
            return trio.from_thread.run(self._fetch, layout, offset, length)

        cut = cut_span(
            layout, span, data, [*span.refs, *extra], read_before=read_before, window=window
        )
        for ref in extra:
            cut.errors.pop(ref.digest, None)
        return cut
