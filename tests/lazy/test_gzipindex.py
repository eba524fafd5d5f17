"""gzip random access: checkpoints built once, any range inflated from a bounded compressed span."""

from __future__ import annotations

import gzip
import io
import random
import zlib

import pytest

from fusesnap.errors import LayerError
from fusesnap.index import gzipindex
from fusesnap.index.gzipindex import build_checkpoints, parse_gzidx, read_range, to_gzidx

MiB = 1 << 20


def compressible(size: int, seed: int) -> bytes:
    """Text-like data (about 2.5:1 under gzip), varied enough that gzip cannot cheat."""
    rng = random.Random(seed)
    words = [rng.randbytes(rng.randrange(2, 12)).hex().encode() for _ in range(5000)]
    out = bytearray()
    while len(out) < size:
        out += b" ".join(rng.choices(words, k=512)) + b"\n"
    return bytes(out[:size])


class CountingBlob:
    """``read_compressed`` over an in-memory blob, recording every range asked for."""

    def __init__(self, blob: bytes) -> None:
        self.blob = blob
        self.calls: list[tuple[int, int]] = []

    def __call__(self, offset: int, length: int) -> bytes:
        assert offset >= 0
        assert length > 0
        self.calls.append((offset, length))
        return self.blob[offset : offset + length]

    @property
    def fetched(self) -> int:
        return sum(n for _, n in self.calls)


@pytest.fixture(scope="module")
def big():
    """A ~50 MB gzip blob (two members) and its plain bytes, with 4 MiB checkpoints."""
    plain = compressible(60 * MiB, 1) + random.Random(2).randbytes(20 * MiB)
    c = zlib.compressobj(1, zlib.DEFLATED, 31)
    blob = c.compress(plain[: 70 * MiB]) + c.flush()
    blob += gzip.compress(plain[70 * MiB :], 1)
    cp = build_checkpoints(io.BytesIO(blob))
    return plain, blob, cp


def test_checkpoints_every_spacing_bytes(big):
    plain, blob, cp = big
    assert len(blob) > 40 * MiB
    assert cp.compressed_size == len(blob)
    assert cp.uncompressed_size == len(plain)
    assert cp.spacing == gzipindex.DEFAULT_SPACING
    gaps = [b.uoffset - a.uoffset for a, b in zip(cp.points, cp.points[1:], strict=False)]
    assert max(gaps) <= cp.spacing + 256 * 1024  # a point lands on the next deflate block
    assert len(cp.points) >= len(plain) // (cp.spacing + 256 * 1024)
    assert sum(1 for p in cp.points if not p.window) >= 2  # a member start needs no window


def test_random_ranges_match_the_plain_bytes(big):
    plain, blob, cp = big
    rng = random.Random(3)
    cases = [(0, 100), (len(plain) - MiB, MiB), (len(plain) - 1, 1), (70 * MiB - 10, 20)]
    cases += [(p.uoffset, 4096) for p in cp.points[1:4]]
    cases += [(p.uoffset - 1, 2) for p in cp.points[1:4]]
    cases += [(rng.randrange(len(plain) - MiB), rng.randrange(1, MiB)) for _ in range(25)]
    for off, n in cases:
        assert read_range(cp, CountingBlob(blob), off, n) == plain[off : off + n], (off, n)


def test_a_chunk_in_the_middle_reads_a_bounded_compressed_span(big):
    plain, blob, cp = big
    for off in (len(plain) // 2, len(plain) // 3 + 12345, 40 * MiB + 1):
        src = CountingBlob(blob)
        assert read_range(cp, src, off, MiB) == plain[off : off + MiB]
        # At most one checkpoint span plus the chunk (in compressed bytes) and some slack,
        # asked for in a handful of contiguous range requests.
        span = cp.spacing + MiB
        assert src.fetched <= span + 512 * 1024, src.calls
        assert src.fetched < len(blob) // 10
        assert len(src.calls) <= 4, src.calls
        starts = [o for o, _ in src.calls]
        assert starts == sorted(starts)


def test_zero_length_and_out_of_range(big):
    plain, blob, cp = big
    src = CountingBlob(blob)
    assert read_range(cp, src, 5, 0) == b""
    assert src.calls == []
    with pytest.raises(ValueError, match="outside"):
        read_range(cp, src, len(plain) - 10, 11)
    with pytest.raises(ValueError, match="outside"):
        read_range(cp, src, -1, 1)


def test_errors_from_read_compressed_propagate_unchanged(big):
    _, _, cp = big

    class Boom(Exception):
        pass

    def failing(offset: int, length: int) -> bytes:
        raise Boom(f"range {offset}+{length}")

    with pytest.raises(Boom):
        read_range(cp, failing, 10 * MiB, 1000)


def test_a_blob_that_does_not_match_the_checkpoints_is_an_error(big):
    _, blob, cp = big
    corrupt = bytearray(blob)
    start = cp.points[5].coffset
    corrupt[start : start + 4096] = bytes(4096)
    with pytest.raises(LayerError, match=r"cannot inflate|short inflate"):
        read_range(cp, CountingBlob(bytes(corrupt)), cp.points[5].uoffset + 10, MiB)


def test_short_remote_blob_is_an_error(big):
    plain, blob, cp = big
    with pytest.raises(LayerError):
        read_range(cp, CountingBlob(blob[: len(blob) // 2]), len(plain) - MiB, MiB)


def test_gzidx_export_round_trips(big):
    _, _, cp = big
    assert parse_gzidx(to_gzidx(cp)) == cp


def test_build_from_a_file_position_and_custom_spacing(tmp_path):
    plain = compressible(3 * MiB, 4)
    blob = gzip.compress(plain, 6)
    path = tmp_path / "blob"
    path.write_bytes(b"PREFIX" + blob)
    with path.open("rb") as f:
        f.seek(6)
        cp = build_checkpoints(f, spacing=256 * 1024)
    assert cp.compressed_size == len(blob)
    assert len(cp.points) >= 10
    for off in (0, 300_000, 2 * MiB + 7, len(plain) - 10):
        assert read_range(cp, CountingBlob(blob), off, 10) == plain[off : off + 10]


def test_build_refuses_non_gzip():
    with pytest.raises(LayerError, match="cannot index gzip stream"):
        build_checkpoints(io.BytesIO(b"definitely not gzip" * 100))


def test_corrupt_gzidx_is_refused():
    with pytest.raises(LayerError, match="corrupt gzip index"):
        parse_gzidx(b"GZIDX\x01\x00" + b"\x00" * 10)
    with pytest.raises(LayerError, match="corrupt gzip index"):
        parse_gzidx(b"NOTIDX" + b"\x00" * 40)
