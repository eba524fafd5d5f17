"""The lazy chunk fetcher over an in-memory registry and a real LMDB store."""

from __future__ import annotations

import bisect
import random
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio

from fusesnap.errors import DigestMismatchError, LayerError, RegistryUnavailableError
from fusesnap.index import ChunkRef, LayerIndex
from fusesnap.lazy import ChunkFetcher, FetchLimits, open_chunk_fetcher, with_windows_blob
from fusesnap.store import Store, open_store
from tests.lazy.fetcherhelpers import (
    Blobs,
    Layer,
    MiB,
    frame_layer,
    frame_layout_files,
    gzip_layer,
    raw_layer,
    sample_files,
)

SPACING = MiB


@pytest.fixture(scope="module")
def gz() -> Layer:
    return gzip_layer(sample_files(), spacing=SPACING)


@pytest.fixture(scope="module")
def raw() -> Layer:
    return raw_layer(sample_files(1)[:40])


@pytest.fixture
def store(tmp_path) -> Iterator[Store]:
    with open_store(tmp_path / "root") as s:
        yield s


@asynccontextmanager
async def fetcher(blobs: Blobs, store: Store, **limits: Any) -> AsyncIterator[ChunkFetcher]:
    async with open_chunk_fetcher(blobs, store.chunks, limits=FetchLimits(**limits)) as f:
        yield f


def stored(store: Store, refs: list[ChunkRef]) -> set[bytes]:
    return {r.digest for r in refs} - store.chunks.missing(r.digest for r in refs)


def span_of(index: LayerIndex, ref: ChunkRef) -> tuple[int, int]:
    """The blob range a gzip chunk needs, from its checkpoints (an independent statement of
    the rule: the last point at or before its start, the first point after its end)."""
    assert index.checkpoints is not None
    points = index.checkpoints.points
    uoffs = [p.uoffset for p in points]
    i = bisect.bisect_right(uoffs, ref.offset) - 1
    j = bisect.bisect_right(uoffs, ref.offset + ref.length)
    start = 0 if i == 0 else points[i].coffset - (1 if points[i].bits else 0)
    end = points[j].coffset + 1 if j < len(points) else index.compressed_size
    return start, end


def big_chunk(layer: Layer, n: int = 1) -> ChunkRef:
    """The ``n``-th full 1 MiB chunk of a text file past the first checkpoint span."""
    refs = [
        r
        for e in layer.index.entries
        if "text" in e.path
        for r in e.chunks
        if r.length == MiB and r.offset > 2 * SPACING
    ]
    return refs[n]


# -- gzip layers -----------------------------------------------------------------------------


async def test_random_chunks_of_a_gzip_layer_are_verified(gz, store) -> None:
    blobs = Blobs(gz)
    refs = random.Random(7).sample(gz.refs, 40)
    async with fetcher(blobs, store) as f:
        for ref in refs:
            assert await f.get(gz.index, ref) == gz.truth(ref)
    assert all(store.chunks.get(r.digest) == gz.truth(r) for r in refs)
    assert f.stats.verify_failures == 0
    # Neighbours come with the spans: far fewer requests than chunks.
    assert len(blobs.calls) < len(refs) / 2


async def test_one_chunk_costs_one_checkpoint_span(gz, store) -> None:
    ref = big_chunk(gz)
    blobs = Blobs(gz)
    async with fetcher(blobs, store) as f:
        assert await f.get(gz.index, ref) == gz.truth(ref)
    start, end = span_of(gz.index, ref)
    assert blobs.calls == [(start, end - start)]
    ratio = len(gz.blob) / len(gz.tar)
    assert blobs.fetched <= (2 * SPACING + ref.length) * ratio * 1.25
    st = f.stats
    assert (st.requests, st.bytes_fetched, st.chunks_fetched) == (1, blobs.fetched, 1)


async def test_a_span_stores_every_chunk_it_inflates(gz, store) -> None:
    ref = gz.entry("small/2/030").chunks[0]
    blobs = Blobs(gz)
    async with fetcher(blobs, store) as f:
        await f.get(gz.index, ref)
        await f.flush()  # stored in the background
        have = stored(store, gz.refs)
        neighbours = [r for r in gz.refs if r is not ref and r.digest in have]
        assert len(neighbours) >= 10
        assert f.stats.chunks_extra == len(neighbours)
        for other in neighbours:
            assert await f.get(gz.index, other) == gz.truth(other)
    assert len(blobs.calls) == 1
    assert f.stats.chunks_from_store == len(neighbours)


async def test_concurrent_gets_of_one_chunk_share_one_request(gz, store) -> None:
    ref = big_chunk(gz)
    blobs = Blobs(gz)
    blobs.delay = 0.05
    results: list[bytes] = []
    async with fetcher(blobs, store) as f:

        async def get() -> None:
            results.append(await f.get(gz.index, ref))

        async with trio.open_nursery() as nursery:
            for _ in range(20):
                nursery.start_soon(get)
    assert len(blobs.calls) == 1
    assert results == [gz.truth(ref)] * 20
    assert f.stats.single_flight_waits == 19


async def test_get_many_of_adjacent_chunks_is_one_request(gz, store) -> None:
    entry = next(e for e in gz.index.entries if e.path == "big/text2.txt")
    assert len(entry.chunks) >= 3
    blobs = Blobs(gz)
    async with fetcher(blobs, store) as f:
        got = await f.get_many(gz.index, entry.chunks)
    assert len(blobs.calls) == 1
    assert (
        b"".join(got[r.digest] for r in entry.chunks)
        == gz.tar[entry.chunks[0].offset : entry.chunks[0].offset + entry.size]
    )


async def test_independent_needs_run_in_parallel_within_the_limit(raw, store) -> None:
    refs = raw.refs[::6]  # far apart, in a layer whose blob is the tar
    blobs = Blobs(raw)
    blobs.delay = 0.05
    async with fetcher(blobs, store, max_gap=0, max_parallel=3) as f:
        got = await f.get_many(raw.index, refs)
    assert got == {r.digest: raw.truth(r) for r in refs}
    assert len(blobs.calls) == len({r.digest for r in refs}) > 3
    assert blobs.max_active == 3


# -- uncompressed layers ---------------------------------------------------------------------


async def test_uncompressed_layer_fetches_exact_ranges(raw, store) -> None:
    ref = raw.refs[5]
    blobs = Blobs(raw)
    async with fetcher(blobs, store, max_gap=4096) as f:
        assert await f.get(raw.index, ref) == raw.truth(ref)
        assert blobs.calls == [(ref.offset, ref.length)]
        # Two small files a tar header apart: one request covering both, nothing more.
        small = [e.chunks[0] for e in raw.index.entries if e.path.startswith("small/0/")]
        a, b = small[10], small[11]
        await f.get_many(raw.index, [a, b])
        assert blobs.calls[1] == (a.offset, b.offset + b.length - a.offset)


# -- frame layouts (eStargz, zstd:chunked) ---------------------------------------------------


@pytest.mark.parametrize("codec", ["gzip", "zstd"])
async def test_frames_are_fetched_alone_and_sliced_by_inner(codec, store) -> None:
    layer = frame_layer(frame_layout_files(), codec, chunk=64 << 10)
    blobs = Blobs(layer)
    multi = next(e for e in layer.index.entries if len(e.chunks) >= 3)
    third = multi.chunks[2]
    assert third.inner == 2 * (64 << 10)
    async with fetcher(blobs, store, max_gap=0) as f:
        assert await f.get(layer.index, third) == layer.truth(third)
        assert blobs.calls == [(third.coffset, third.clength)]
        # The frame gave all of its chunks.
        await f.flush()
        assert stored(store, list(multi.chunks)) == {r.digest for r in multi.chunks}
        small = [e.chunks[0] for e in layer.index.entries if len(e.chunks) == 1][:5]
        got = await f.get_many(layer.index, small)
    assert got == {r.digest: layer.truth(r) for r in small}
    assert len(blobs.calls) == 2  # adjacent frames: one request
    have = stored(store, layer.refs)
    assert all(store.chunks.get(r.digest) == layer.truth(r) for r in layer.refs if r.digest in have)


async def test_frames_within_the_gap_are_coalesced(store) -> None:
    layer = frame_layer(frame_layout_files(), "zstd", chunk=64 << 10)
    refs = [e.chunks[0] for e in layer.index.entries][::2]  # every other frame
    blobs = Blobs(layer)
    async with fetcher(blobs, store, max_gap=256 << 10) as f:
        got = await f.get_many(layer.index, refs)
    assert got == {r.digest: layer.truth(r) for r in refs}
    assert len(blobs.calls) == 1


async def test_plain_zstd_layer_must_be_fetched_whole_but_is_served_from_store(gz, store) -> None:
    from dataclasses import replace

    index = replace(gz.index, compression="zstd", checkpoints=None)
    ref = gz.refs[0]
    async with fetcher(Blobs(gz), store) as f:
        with pytest.raises(LayerError, match="fetched whole"):
            await f.get(index, ref)
        with pytest.raises(LayerError, match="fetched whole"):
            await f.prefetch(index, [ref])
        # What a full pull stored is served.
        store.chunks.put_many([(ref.digest, gz.truth(ref))])
        assert await f.get(index, ref) == gz.truth(ref)
        assert (await f.prefetch(index, [ref])).already_stored == 1


# -- failures --------------------------------------------------------------------------------


async def test_corrupt_bytes_raise_and_store_nothing(raw, store) -> None:
    bad, good = raw.refs[3], raw.refs[20]
    blobs = Blobs(raw)
    blobs.corrupt(raw, bad.offset + bad.length // 2)
    async with fetcher(blobs, store, max_gap=0) as f:
        with pytest.raises(DigestMismatchError, match=bad.digest.hex()[:12]):
            await f.get_many(raw.index, [bad, good])
    assert store.chunks.missing([bad.digest]) == {bad.digest}
    assert store.chunks.get(good.digest) == raw.truth(good)  # not poisoned by its neighbour
    assert f.stats.verify_failures == 1


async def test_corrupt_gzip_span_raises_and_stores_nothing(gz, store) -> None:
    ref = big_chunk(gz, 2)
    start, end = span_of(gz.index, ref)
    blobs = Blobs(gz)
    blobs.corrupt(gz, (start + end) // 2)
    async with fetcher(blobs, store) as f:
        with pytest.raises((DigestMismatchError, LayerError)):
            await f.get(gz.index, ref)
    assert store.chunks.missing([ref.digest]) == {ref.digest}


async def test_a_failed_fetch_raises_and_the_next_call_succeeds(gz, store) -> None:
    ref = big_chunk(gz)
    blobs = Blobs(gz)
    blobs.errors.append(RegistryUnavailableError("registry x: giving up after 5 attempts (503)"))
    async with fetcher(blobs, store) as f:
        with pytest.raises(RegistryUnavailableError, match="giving up"):
            await f.get(gz.index, ref)
        assert await f.get(gz.index, ref) == gz.truth(ref)
    assert len(blobs.calls) == 2
    assert f.stats.failures == 1


async def test_a_stalled_registry_fails_within_the_timeout(gz, store) -> None:
    blobs = Blobs(gz)
    blobs.hang = True
    async with fetcher(blobs, store, timeout=0.3) as f:
        t0 = time.monotonic()
        with pytest.raises(RegistryUnavailableError, match=r"no answer within 0\.3 s"):
            await f.get(gz.index, big_chunk(gz))
        assert time.monotonic() - t0 < 5
        blobs.hang = False
        assert await f.get(gz.index, big_chunk(gz)) == gz.truth(big_chunk(gz))


async def test_a_cancelled_reader_does_not_cancel_the_fetch(gz, store) -> None:
    ref = big_chunk(gz)
    blobs = Blobs(gz)
    blobs.delay = 0.2
    async with fetcher(blobs, store) as f:
        with trio.move_on_after(0.05):
            await f.get(gz.index, ref)
        assert await f.get(gz.index, ref) == gz.truth(ref)  # joins the fetch still under way
    assert len(blobs.calls) == 1


async def test_every_error_in_a_batch_stays_with_its_chunk(raw, store) -> None:
    refs = raw.refs[:12:3]
    blobs = Blobs(raw)
    blobs.delay = 0.01
    blobs.errors.append(RegistryUnavailableError("one request failed"))
    async with fetcher(blobs, store, max_gap=0, max_parallel=1) as f:
        with pytest.raises(RegistryUnavailableError):
            await f.get_many(raw.index, refs)
        await f.flush()
        assert len(stored(store, refs)) == len(refs) - 1
        assert await f.get_many(raw.index, refs) == {r.digest: raw.truth(r) for r in refs}


# -- prefetch --------------------------------------------------------------------------------


async def test_prefetch_everything_in_blob_order(gz, store) -> None:
    blobs = Blobs(gz)
    async with fetcher(blobs, store, max_request=2 * MiB, prefetch_parallel=1) as f:
        result = await f.prefetch(gz.index, gz.index.entries)
    assert result.failed == 0
    assert result.chunks == len({r.digest for r in gz.refs}) == result.fetched
    assert stored(store, gz.refs) == {r.digest for r in gz.refs}
    starts = [o for o, _ in blobs.calls]
    assert starts == sorted(starts)
    assert len(blobs.calls) > 2  # max_request splits it
    assert blobs.fetched < 1.3 * len(gz.blob)
    async with fetcher(blobs, store) as f:
        again = await f.prefetch(gz.index, gz.refs)
    assert (again.already_stored, again.fetched) == (result.chunks, 0)


async def test_prefetch_is_rate_limited(raw, store) -> None:
    blobs = Blobs(raw)
    async with fetcher(blobs, store, max_request=256 << 10, max_gap=1 << 20) as f:
        t0 = time.monotonic()
        result = await f.prefetch(raw.index, raw.index.entries, rate_limit_bytes_per_s=4 * MiB)
        took = time.monotonic() - t0
    assert result.failed == 0
    # Each request starts only once the ones before it fit the rate.
    assert took >= (blobs.fetched - blobs.calls[-1][1]) / (4 * MiB) * 0.9


async def test_stats_count_what_happened(gz, store) -> None:
    ref = gz.entry("small/1/010").chunks[0]
    async with fetcher(Blobs(gz), store) as f:
        await f.get(gz.index, ref)
        await f.get(gz.index, ref)
        st = f.stats
    assert st.requests == 1
    assert st.chunks_fetched == 1
    assert st.chunks_from_store == 1
    assert st.chunks_extra > 0
    assert st.bytes_fetched > ref.length // 4
    st.requests = 99  # a copy
    assert f.stats.requests == 1


# -- gzip windows by range -------------------------------------------------------------------


def pushed_form(layer: Layer, blobs: Blobs) -> LayerIndex:
    """``layer``'s index as an index artifact carries it, its windows blob served by ``blobs``."""
    index, windows = with_windows_blob(layer.index, None)
    assert index.checkpoints is not None
    assert windows is not None
    assert index.checkpoints.windows_blob is not None
    blobs.blobs[index.checkpoints.windows_blob] = windows
    return index


async def test_a_window_not_stored_is_fetched_by_range_verified_and_kept(gz, store) -> None:
    blobs = Blobs(gz)
    index = pushed_form(gz, blobs)
    ref, other = big_chunk(gz, 1), big_chunk(gz, 2)
    cp = index.checkpoints
    assert cp is not None
    point = cp.points[bisect.bisect_right([p.uoffset for p in cp.points], ref.offset) - 1]
    assert point.digest
    assert not point.window
    async with fetcher(blobs, store) as f:
        assert await f.get(index, ref) == gz.truth(ref)
        # The span and the window (one small zstd frame), fetched side by side.
        start, end = span_of(index, ref)
        assert sorted(blobs.calls) == sorted(
            [(start, end - start), cp.window_range(cp.points.index(point))]
        )
        assert f.stats.windows_fetched == 1
        assert store.chunks.get(point.digest) == gz.index.checkpoints.inline_windows()[point.digest]
        for p in cp.points:  # kept in the store: no second window fetch from those points
            if p.digest and p.digest != point.digest:
                store.chunks.put_many([(p.digest, gz.index.checkpoints.inline_windows()[p.digest])])
        blobs.calls.clear()
        assert await f.get(index, other) == gz.truth(other)
        assert f.stats.windows_fetched == 1
        assert len(blobs.calls) == 1


async def test_a_tampered_window_fails_the_read_and_is_not_stored(gz, store) -> None:
    blobs = Blobs(gz)
    index = pushed_form(gz, blobs)
    assert index.checkpoints is not None
    wblob = index.checkpoints.windows_blob
    assert wblob is not None
    # Another window's frame in its place: a valid zstd frame, the wrong bytes.
    frames = bytearray(blobs.blobs[wblob])
    blobs.blobs[wblob] = bytes(frames[::-1])
    ref = big_chunk(gz)
    async with fetcher(blobs, store) as f:
        with pytest.raises((DigestMismatchError, LayerError)):
            await f.get(index, ref)
    assert not stored(store, gz.refs)
    assert store.chunks.missing(index.window_digests()) == index.window_digests()


async def test_a_window_nowhere_to_be_had_is_a_clear_error(gz, store) -> None:
    index = gz.index.without_windows()  # named, not stored, no windows blob
    async with fetcher(Blobs(gz), store) as f:
        with pytest.raises(
            LayerError, match="is not in the store, and the index names no windows blob"
        ):
            await f.get(index, big_chunk(gz))
