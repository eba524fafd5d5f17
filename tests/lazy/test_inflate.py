"""The one-pass gzip inflater: its output and checkpoints against zlib and indexed_gzip."""

from __future__ import annotations

import gzip
import io
import random
import zlib

import pytest

from fusesnap.index.gzipindex import build_checkpoints
from fusesnap.index.inflate import GzipCheckpointer, StreamCorrupt, gzip_blocks
from tests.lazy.fetcherhelpers import text

SPACING = 64 << 10


def blobs() -> dict[str, bytes]:
    rng = random.Random(7)
    plain = text(3 << 20, 1)
    noise = rng.randbytes(600 << 10)
    level1 = zlib.compressobj(1, zlib.DEFLATED, 31)
    return {
        "empty": gzip.compress(b""),
        "tiny": gzip.compress(b"hello"),
        "text": gzip.compress(plain),
        "text, level 1": level1.compress(plain) + level1.flush(),
        "stored blocks": gzip.compress(noise),
        "three members": gzip.compress(plain[:900_000])
        + gzip.compress(noise)
        + gzip.compress(plain[900_000:]),
    }


@pytest.mark.parametrize("name", list(blobs()))
def test_output_and_checkpoints_match_zlib_and_indexed_gzip(name):
    blob = blobs()[name]
    checkpointer = GzipCheckpointer(SPACING)
    source = io.BytesIO(blob)
    out = b"".join(gzip_blocks(source.read, checkpointer))
    assert out == gzip.decompress(blob)
    assert source.tell() == len(blob)
    expected = build_checkpoints(io.BytesIO(blob), spacing=SPACING)
    assert tuple(checkpointer.points) == expected.points
    assert len(checkpointer.points) >= 2  # the start and the end, at least


def test_pieces_are_bounded():
    blob = gzip.compress(bytes(64 << 20))  # one huge run of zeros: ~1000:1
    sizes = [len(piece) for piece in gzip_blocks(io.BytesIO(blob).read)]
    assert sum(sizes) == 64 << 20
    assert max(sizes) <= 1 << 20


@pytest.mark.parametrize(
    ("blob", "message"),
    [
        (b"", "empty gzip stream"),
        (gzip.compress(text(300_000, 2))[:-5000], "truncated gzip stream"),
        (gzip.compress(b"abc") + b"junk", "garbage after the end of the gzip stream"),
        (b"not gzip at all" * 10, "corrupt gzip stream"),
    ],
)
def test_bad_streams(blob, message):
    with pytest.raises(StreamCorrupt, match=message):
        b"".join(gzip_blocks(io.BytesIO(blob).read, GzipCheckpointer(SPACING)))


def test_spacing_below_the_window_is_refused():
    with pytest.raises(ValueError, match="spacing"):
        GzipCheckpointer(1024)
