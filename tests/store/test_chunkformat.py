"""The stored chunk format: frames with checksums, their table, and rot that must never
come back as bytes."""

from __future__ import annotations

import hashlib
import random
import struct
import zlib

import pytest
import zstandard

from fusesnap.errors import StoreError
from fusesnap.store.chunkformat import FRAME_SIZE, decode, decode_range, encode, raw_size
from fusesnap.store.schema import CHUNK_FRAMES

from .helpers import blob

# Compressible and not: half text, half random, over three frames and a bit.
DATA = (b"some text that compresses well\n" * 4000)[: FRAME_SIZE + 1000] + blob(
    2 * FRAME_SIZE + 333, 7
)
DIGEST = hashlib.sha256(DATA).digest()


def assemble(frames: list[bytes], size: int, checksums: list[bytes] | None = None) -> bytes:
    """A format-2 value around ``frames`` (a valid table and crc32 for `DIGEST`)."""
    sums = checksums or [f[-4:] for f in frames]
    table = struct.pack("<BBI", CHUNK_FRAMES, 16, size) + b"".join(
        struct.pack("<I", len(f)) + c for f, c in zip(frames, sums, strict=True)
    )
    return table + struct.pack("<I", zlib.crc32(DIGEST, zlib.crc32(table))) + b"".join(frames)


def frames_of(data: bytes, **options: bool) -> list[bytes]:
    c = zstandard.ZstdCompressor(**options)  # type: ignore[arg-type]
    return [c.compress(data[i : i + FRAME_SIZE]) for i in range(0, len(data), FRAME_SIZE)]


def test_the_layout_is_what_the_docstring_says() -> None:
    value = encode(DATA)
    assert value == assemble(frames_of(DATA, write_checksum=True), len(DATA))
    assert raw_size(value) == len(DATA)
    assert decode(DIGEST, value) == DATA
    assert decode_range(DIGEST, value, 2 * FRAME_SIZE + 1, 2 * FRAME_SIZE + 2) == (
        2 * FRAME_SIZE,
        DATA[2 * FRAME_SIZE : 3 * FRAME_SIZE],
    )


def test_no_single_bit_flip_comes_back_as_wrong_bytes() -> None:
    value = encode(DATA)
    rng = random.Random(3)
    head = 6 + 4 * 8 + 4  # format, shift, size, the table, its crc32
    positions = [*range(head + 24), *rng.sample(range(len(value)), 300)]
    caught = 0
    messages: set[str] = set()
    for pos in positions:
        for bit in (0, 3, 7):
            bad = bytearray(value)
            bad[pos] ^= 1 << bit
            try:
                got = decode(DIGEST, bytes(bad))
            except StoreError as exc:
                messages.add(str(exc).split("(")[0])
                caught += 1
                continue
            # A bit zstd does not need (say, a larger window size) may pass: the checksum
            # then proves the bytes right.
            assert got == DATA
    assert caught > len(positions) * 3 * 0.9
    assert messages == {f"chunk {DIGEST.hex()[:12]}: corrupt in store "}


def test_a_frame_without_its_checksum_is_refused() -> None:
    frames = frames_of(DATA, write_checksum=True)
    frames[1] = frames_of(DATA, write_checksum=False)[1]
    with pytest.raises(StoreError, match=r"corrupt in store \(frame 1: header\)"):
        decode_range(DIGEST, assemble(frames, len(DATA)), FRAME_SIZE, FRAME_SIZE + 1)
    # The frames it does not read are not its business.
    assert decode_range(DIGEST, assemble(frames, len(DATA)), 0, 10)[1] == DATA[:FRAME_SIZE]


def test_frames_are_bound_to_their_place_and_the_value_to_its_key() -> None:
    frames = frames_of(DATA, write_checksum=True)
    swapped = [frames[1], frames[0], *frames[2:]]
    sums = [f[-4:] for f in frames]  # the table as it was written
    with pytest.raises(StoreError, match=r"frame 0: not the one the table names"):
        decode(DIGEST, assemble(swapped, len(DATA), sums))
    other = hashlib.sha256(b"another chunk").digest()
    with pytest.raises(StoreError, match="frame table checksum"):
        decode(other, encode(DATA))  # a value stored under the wrong key


@pytest.mark.parametrize(
    ("change", "why"),
    [
        (lambda fs: [fs[0] + b"\0\0\0\0", *fs[1:]], "frame 0: length"),  # trailing bytes
        (lambda fs: [fs[0][:-1], *fs[1:]], "frame 0: length"),  # a byte short
    ],
    ids=["trailing", "short"],
)
def test_a_table_that_lies_is_caught(change: object, why: str) -> None:
    frames = change(frames_of(DATA, write_checksum=True))  # type: ignore[operator]
    with pytest.raises(StoreError, match=f"corrupt in store \\({why}"):
        decode(DIGEST, assemble(frames, len(DATA)))


def test_a_header_that_does_not_fit_is_caught() -> None:
    value = encode(DATA)
    for bad, why in [
        (value[:5], "short header"),
        (value[:20], "short frame table"),
        (value + b"x", "frame table does not fit"),
        (value[:1] + b"\x40" + value[2:], "bad header"),
        (value[:2] + struct.pack("<I", len(DATA) - 1) + value[6:], "frame table checksum"),
    ]:
        with pytest.raises(StoreError, match=why):
            decode(DIGEST, bad)


def test_an_empty_chunk() -> None:
    value = encode(b"")
    empty = hashlib.sha256(b"").digest()
    assert decode(empty, value) == b""
    assert decode_range(empty, value, 0, 4096) == (0, b"")
    assert raw_size(value) == 0
