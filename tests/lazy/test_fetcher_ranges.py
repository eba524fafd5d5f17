"""The fetcher's parts: range planning (`ranges`), frame decoding (`spandecode`), single flight,
and gzip chunks at the awkward places (checkpoint edges, blob ends)."""

from __future__ import annotations

import gzip
import hashlib
from collections.abc import Iterator
from dataclasses import replace

import pytest
import trio
import zstandard

from fusesnap.errors import DigestMismatchError, LayerError, RegistryUnavailableError
from fusesnap.index import ChunkRef, decompress_frame
from fusesnap.lazy import FetchLimits, open_chunk_fetcher
from fusesnap.lazy.ranges import Access, LayerLayout
from fusesnap.singleflight import SingleFlight
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
    text,
)

KiB = 1 << 10


@pytest.fixture(scope="module")
def gz() -> Layer:
    return gzip_layer(sample_files(2)[:70], spacing=512 * KiB)


@pytest.fixture(scope="module")
def raw() -> Layer:
    return raw_layer(sample_files(1)[:40])


@pytest.fixture
def store(tmp_path) -> Iterator[Store]:
    with open_store(tmp_path / "root") as s:
        yield s


def cut(layer: Layer, offset: int, length: int) -> ChunkRef:
    """A chunk at any place of the tar stream (the fetcher does not need it in an entry)."""
    return ChunkRef(offset, length, hashlib.sha256(layer.tar[offset : offset + length]).digest())


# -- planning --------------------------------------------------------------------------------


def test_raw_plan_merges_within_gap_and_request_size(raw) -> None:
    layout = LayerLayout(raw.index)
    assert layout.access is Access.RAW
    small = [e.chunks[0] for e in raw.index.entries if e.path.startswith("small/0/")][:6]
    one = layout.plan(small, max_request=MiB, max_gap=4 * KiB, max_inflate=MiB)
    assert [(s.start, s.end) for s in one] == [
        (small[0].offset, small[-1].offset + small[-1].length)
    ]
    apart = layout.plan(small, max_request=MiB, max_gap=0, max_inflate=MiB)
    assert len(apart) == 6
    capped = layout.plan(small, max_request=12 * KiB, max_gap=4 * KiB, max_inflate=MiB)
    assert 1 < len(capped) < 6
    assert all(s.size <= 12 * KiB or len(s.refs) == 1 for s in capped)
    assert sorted(r.digest for s in capped for r in s.refs) == sorted(r.digest for r in small)


def test_gzip_plan_stops_before_the_next_checkpoint(gz) -> None:
    layout = LayerLayout(gz.index)
    assert gz.index.checkpoints is not None
    points = gz.index.checkpoints.points
    p = points[3]
    # A chunk ending exactly at a checkpoint needs the span after it too.
    ref = cut(gz, p.uoffset - 1000, 1000)
    (span,) = layout.plan([ref], max_request=MiB, max_gap=0, max_inflate=8 * MiB)
    assert span.point == 2
    assert span.end == points[4].coffset + 1
    assert span.ustart == points[2].uoffset
    assert span.uend == points[4].uoffset - 1
    # One byte earlier, the span ends at that checkpoint.
    ref = cut(gz, p.uoffset - 1001, 1000)
    (span,) = layout.plan([ref], max_request=MiB, max_gap=0, max_inflate=8 * MiB)
    assert span.end == p.coffset + 1


def test_gzip_plan_bounds_what_one_request_inflates(gz) -> None:
    layout = LayerLayout(gz.index)
    refs = [r for e in gz.index.entries for r in e.chunks]
    wide = layout.plan(refs, max_request=64 * MiB, max_gap=MiB, max_inflate=64 * MiB)
    narrow = layout.plan(refs, max_request=64 * MiB, max_gap=MiB, max_inflate=2 * MiB)
    assert len(wide) == 1
    assert len(narrow) > 2
    assert all(s.uend - s.ustart <= 2 * MiB + 1 * MiB for s in narrow)  # one piece may exceed


def test_layers_without_random_access_are_refused(gz) -> None:
    with pytest.raises(LayerError, match="fetched whole"):
        LayerLayout(replace(gz.index, compression="zstd", checkpoints=None))
    with pytest.raises(LayerError, match="without checkpoints"):
        LayerLayout(replace(gz.index, checkpoints=None))
    with pytest.raises(LayerError, match="no random access"):
        LayerLayout(replace(gz.index, compression="lz4"))


# -- gzip chunks at the edges ----------------------------------------------------------------


async def test_gzip_chunks_at_checkpoint_edges_and_blob_ends(gz, store) -> None:
    assert gz.index.checkpoints is not None
    points = gz.index.checkpoints.points
    total = len(gz.tar)
    refs = [cut(gz, 0, 100), cut(gz, total - 5000, 5000), cut(gz, total - 1, 1)]
    for p in points[1:5]:
        refs += [
            cut(gz, p.uoffset - 700, 700),
            cut(gz, p.uoffset, 700),
            cut(gz, p.uoffset - 1, 2),
            cut(gz, p.uoffset - 300_000, 600_000),
        ]
    async with open_chunk_fetcher(Blobs(gz), store.chunks) as f:
        for ref in refs:  # one by one: each its own plan
            assert await f.get(gz.index, ref) == gz.truth(ref), (ref.offset, ref.length)
    with open_store(store.root / "fresh") as fresh:
        async with open_chunk_fetcher(Blobs(gz), fresh.chunks, limits=FetchLimits(max_gap=0)) as f:
            got = await f.get_many(gz.index, refs)  # all at once: merged spans
    assert got == {r.digest: gz.truth(r) for r in refs}


# -- frames ----------------------------------------------------------------------------------


def test_decompress_frame_reads_members_and_frames_and_stops_early() -> None:
    data = text(300_000, 1)
    members = gzip.compress(data[:1000]) + gzip.compress(b"") + gzip.compress(data[1000:])
    assert decompress_frame(members, len(data)) == data
    assert decompress_frame(members, 5000) == data[:5000]
    zc = zstandard.ZstdCompressor()
    frames = zc.compress(data[:7]) + zc.compress(data[7:])
    assert decompress_frame(frames, len(data)) == data
    assert decompress_frame(frames, 100) == data[:100]


@pytest.mark.parametrize(
    ("blob", "message"),
    [
        (b"PK\x03\x04 not a frame", "neither"),
        (gzip.compress(b"x" * 5000)[:-30], "truncated|corrupt"),
        (gzip.compress(b"x" * 50), "decompresses to 50 bytes"),
        (zstandard.ZstdCompressor().compress(b"y" * 5000)[:-9], "corrupt|decompresses"),
        (b"\x1f\x8b" + b"\x00" * 40, "corrupt"),
    ],
)
def test_decompress_frame_refuses_bad_frames(blob, message) -> None:
    with pytest.raises(LayerError, match=message):
        decompress_frame(blob, 100)


async def test_a_bad_frame_fails_only_its_chunks(store) -> None:
    layer = frame_layer(frame_layout_files(), "gzip")
    good = [e.chunks[0] for e in layer.index.entries][:4]
    bad = replace(good[1], coffset=len(layer.blob) + 10)
    async with open_chunk_fetcher(Blobs(layer), store.chunks) as f:
        with pytest.raises(LayerError, match="no valid frame"):
            await f.get_many(layer.index, [good[0], bad, good[2]])
        await f.flush()  # stored in the background
        assert store.chunks.missing([good[0].digest, good[2].digest]) == set()


async def test_frame_refs_whose_inner_slice_is_wrong_do_not_verify(store) -> None:
    layer = frame_layer(frame_layout_files(), "zstd", chunk=64 * KiB)
    ref = next(e for e in layer.index.entries if len(e.chunks) > 2).chunks[1]
    assert ref.framed
    wrong = replace(ref, inner=ref.inner + 1)
    async with open_chunk_fetcher(Blobs(layer), store.chunks) as f:
        with pytest.raises(DigestMismatchError, match="digest mismatch"):
            await f.get(layer.index, wrong)
        assert f.stats.verify_failures == 1


# -- single flight ---------------------------------------------------------------------------


async def test_single_flight_hands_each_waiter_its_own_error() -> None:
    flights: SingleFlight[str, int] = SingleFlight()
    new, joined = flights.claim(["a", "b"])
    assert set(new) == {"a", "b"}
    assert not joined
    again, joined = flights.claim(["a", "c"])
    assert set(again) == {"c"}
    assert joined["a"] is new["a"]
    seen: list[BaseException] = []

    async def wait() -> None:
        try:
            await joined["a"].wait()
        except RegistryUnavailableError as exc:
            seen.append(exc)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(wait)
        nursery.start_soon(wait)
        await trio.sleep(0.01)
        original = RegistryUnavailableError("down")
        new["a"].fail(original)
        new["b"].resolve(2)
        again["c"].resolve(3)
    assert len(seen) == 2
    assert seen[0] is not seen[1]
    assert all(str(e) == "down" and e.__cause__ is original for e in seen)
    assert len(flights) == 0  # nothing remembered
    assert await new["b"].wait() == 2
