"""Format version 2 of the encoded LayerIndex: frame-located chunks (eStargz, zstd:chunked),
``source`` and ``prefetch``; version 1 indexes still decode."""

from __future__ import annotations

import dataclasses
import hashlib

import msgpack
import pytest
import zstandard

from fusesnap.digest import Digest
from fusesnap.index.model import (
    FORMAT_VERSION,
    MAGIC,
    ChunkRef,
    Entry,
    EntryType,
    LayerError,
    LayerIndex,
    decode,
    encode,
)
from fusesnap.oci import OCI_LAYER_GZIP
from tests.lazy.test_layerindex import sample_index

D1 = Digest("sha256:" + "ab" * 32)
D2 = Digest("sha256:" + "cd" * 32)


def digest(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def frame_index(**kw: object) -> LayerIndex:
    entries = (
        Entry("bin", EntryType.DIR, mode=0o755),
        # the fixed split (chunk_size 4): lengths are not stored
        Entry("bin/big", EntryType.FILE, size=10, chunks=(
            ChunkRef(0, 4, digest(b"0"), 100, 40), ChunkRef(4, 4, digest(b"1"), 140, 35),
            ChunkRef(8, 2, digest(b"2"), 175, 20))),
        # two files in one frame (eStargz innerOffset): the same coffset, inner > 0
        Entry("a", EntryType.FILE, size=3, chunks=(ChunkRef(0, 3, digest(b"a"), 300, 50),)),
        Entry("b", EntryType.FILE, size=5, chunks=(ChunkRef(0, 5, digest(b"b"), 300, 50, 3),)),
        # rolling-checksum chunks of any length
        Entry("odd", EntryType.FILE, size=9, chunks=(
            ChunkRef(0, 7, digest(b"o1"), 400, 9), ChunkRef(7, 2, digest(b"o2"), 420, 5))),
        Entry("empty", EntryType.FILE),
        Entry(".wh.gone", EntryType.FILE),
    )  # fmt: skip
    idx = LayerIndex(
        layer_digest=D1, diff_id=D2, media_type=OCI_LAYER_GZIP, compression="estargz",
        compressed_size=1000, uncompressed_size=0, chunk_size=4, entries=entries,
        source="estargz", prefetch=("bin/big", "a"),
    )  # fmt: skip
    return dataclasses.replace(idx, **kw)  # type: ignore[arg-type]


def body_of(data: bytes) -> list:
    return msgpack.unpackb(zstandard.ZstdDecompressor().decompress(data[5:]), raw=False)


def rebuild(body: list, version: int = FORMAT_VERSION) -> bytes:
    packed = msgpack.packb(body, use_bin_type=True)
    return MAGIC + bytes([version]) + zstandard.ZstdCompressor().compress(packed)


def test_version_2_round_trip_of_frame_chunks() -> None:
    idx = frame_index()
    data = encode(idx)
    assert data[len(MAGIC)] == FORMAT_VERSION == 3
    assert decode(data) == idx
    assert decode(data).by_path["b"].chunks[0] == ChunkRef(0, 5, digest(b"b"), 300, 50, 3)


def test_frame_fields_are_stored_compactly() -> None:
    rows = body_of(encode(frame_index()))[7]
    big, a, b, odd = (rows[i][15] for i in (1, 2, 3, 4))
    assert big == [None, b"".join(digest(x) for x in (b"0", b"1", b"2")), None, [100, 0, 0],
                   [40, 35, 20], None]  # fmt: skip
    assert a[3:] == [[105], [50], None]  # coffset relative to the end of the previous frame
    assert b[3:] == [[-50], [50], [3]]  # the same frame again; inner stored only when needed
    assert odd[2] == [7, 2]
    assert body_of(encode(frame_index()))[10:] == ["estargz", [b"bin/big", b"a"]]


def test_tar_stream_indexes_round_trip_in_version_2() -> None:
    idx = dataclasses.replace(sample_index(), source="built", prefetch=())
    assert decode(encode(idx)) == idx
    body = body_of(encode(idx))
    assert len(body) == 12
    assert body[10:] == ["built", []]


def test_version_1_still_decodes() -> None:
    """An index written before format 2 (10 body fields, no frame chunks)."""
    idx = sample_index()
    body = body_of(encode(idx))[:10]
    old = decode(rebuild(body, version=1))
    assert old == idx
    assert (old.source, old.prefetch) == ("built", ())
    assert all(not c.framed for e in old.entries for c in e.chunks)


def test_version_1_has_no_frame_chunks() -> None:
    body = body_of(encode(frame_index()))[:10]
    with pytest.raises(LayerError, match="corrupt"):
        decode(rebuild(body, version=1))


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda b: b[7][1][15][3].__setitem__(0, -200), "outside the layer blob"),
        (lambda b: b[7][1][15][4].__setitem__(2, 10_000), "outside the layer blob"),
        (lambda b: b[7][1][15][4].__setitem__(0, 0), "outside the layer blob"),
        (lambda b: b[7][3][15].__setitem__(5, [-1]), "outside the layer blob"),
        (lambda b: b[7][1][15][4].pop(), "columns differ"),
        (lambda b: b[7][1][15][3].__setitem__(1, "0"), "non-integer"),
        (lambda b: b[7][1][15].__setitem__(2, [4, 4, 3]), "do not add up"),
        (lambda b: b[7][1][15].pop(), "want an array of 6"),
        # "a": one chunk of the fixed split, the rows' usual shape
        (lambda b: b[7][2][15].__setitem__(3, [-400]), "outside the layer blob"),
        (lambda b: b[7][2][15].__setitem__(4, [2000]), "outside the layer blob"),
        (lambda b: b[7][2][15].__setitem__(5, [-1]), "outside the layer blob"),
        (lambda b: b[7][2][15].__setitem__(4, [True]), "non-integer"),
        (lambda b: b[7][2][15].__setitem__(3, [0, 1]), "columns differ"),
        (lambda b: b[7][2][15].__setitem__(1, b"short"), "chunk count does not match"),
        (lambda b: b[7][2][15].__setitem__(1, "x" * 32), "want bytes"),
        (lambda b: b[7][2][15].__setitem__(5, 0), "columns differ"),
        (lambda b: b.__setitem__(11, [b"../x"]), "unsafe path"),
        (lambda b: b.__setitem__(10, 7), "printable string"),
        (lambda b: b.pop(), "want an array of 12"),
    ],
)
def test_hostile_frame_fields_are_refused(mutate, match: str) -> None:
    body = body_of(encode(frame_index()))
    mutate(body)
    with pytest.raises(LayerError, match=match):
        decode(rebuild(body))


@pytest.mark.parametrize(
    "chunks",
    [
        (ChunkRef(0, 5, digest(b"x"), 10, 5), ChunkRef(5, 5, digest(b"y"))),  # mixed kinds
        (ChunkRef(0, 10, digest(b"x"), 10, 0),),  # no compressed length
        (ChunkRef(0, 10, digest(b"x"), 10, 5, -1),),  # negative inner offset
        (ChunkRef(2, 10, digest(b"x"), 10, 5),),  # not from the file's start
        (ChunkRef(0, 9, digest(b"x"), 10, 5),),  # does not cover the size
    ],
)
def test_encode_refuses_frame_chunks_it_cannot_represent(chunks) -> None:
    idx = frame_index()
    bad = Entry("zz", EntryType.FILE, size=10, chunks=chunks)
    with pytest.raises(ValueError, match="entry 'zz'"):
        encode(dataclasses.replace(idx, entries=(*idx.entries, bad)))


def test_frame_index_of_many_files_is_small() -> None:
    """~30 bytes a file beyond its 32-byte digest: names, modes and frame offsets."""
    entries = []
    off = 500
    for i in range(5000):
        data = f"file {i}".encode()
        entries.append(
            Entry(
                f"usr/share/doc/pkg{i // 10}/f{i}",
                EntryType.FILE,
                size=len(data),
                mtime=1_700_000_000,
                chunks=(ChunkRef(0, len(data), digest(data), off + 60, 30),),
            )
        )
        off += 90 + i % 7
    idx = frame_index(entries=tuple(entries), prefetch=(), compressed_size=off + 100)
    data = encode(idx)
    assert decode(data) == idx
    assert len(data) < 5000 * (32 + 30)
