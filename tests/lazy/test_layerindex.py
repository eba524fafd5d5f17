"""LayerIndex records and their encoding: round trips, versioning, hostile input, size."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
import tarfile
from pathlib import Path

import msgpack
import pytest
import zstandard

from fusesnap.digest import Digest
from fusesnap.index import build_index
from fusesnap.index.model import (
    FORMAT_VERSION,
    MAGIC,
    Checkpoint,
    ChunkRef,
    Entry,
    EntryType,
    GzipCheckpoints,
    LayerError,
    LayerIndex,
    decode,
    encode,
    normalize_path,
)
from fusesnap.oci import OCI_LAYER_GZIP, OCI_LAYER_ZSTD

D1 = Digest("sha256:" + "ab" * 32)
D2 = Digest("sha256:" + "cd" * 32)


def digest(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def sample_index(**kw) -> LayerIndex:
    entries = (
        Entry("etc", EntryType.DIR, mode=0o755, mtime=-5),
        Entry(
            "etc/passwd",
            EntryType.FILE,
            size=10,
            mtime=1,
            mtime_nsec=999_999_999,
            chunks=(ChunkRef(512, 10, digest(b"a")),),
            uname="root",
            gname="root",
        ),
        Entry(
            "usr/bin/big",
            EntryType.FILE,
            mode=0o4755,
            size=2500,
            chunks=(
                ChunkRef(2048, 1024, digest(b"1")),
                ChunkRef(3072, 1024, digest(b"2")),
                ChunkRef(4096, 452, digest(b"3")),
            ),
            xattrs={"security.capability": b"\x01\x00\xff", "user.\udcff": b""},
        ),
        # chunks cut by another producer (e.g. an eStargz TOC): lengths are stored explicitly
        Entry(
            "usr/bin/odd",
            EntryType.FILE,
            size=300,
            chunks=(ChunkRef(5120, 100, digest(b"4")), ChunkRef(5220, 200, digest(b"5"))),
        ),
        Entry("usr/bin/sh", EntryType.SYMLINK, linkname="/bin/../x"),
        Entry("usr/bin/h", EntryType.HARDLINK, linkname="usr/bin/big"),
        Entry("dev/null", EntryType.CHAR, devmajor=1, devminor=3),
        Entry("dev/sda", EntryType.BLOCK, devmajor=8, devminor=1),
        Entry("run/p", EntryType.FIFO, uid=2**40, gid=7),
        Entry("empty", EntryType.FILE),
    )
    idx = LayerIndex(
        layer_digest=D1, diff_id=D2, media_type=OCI_LAYER_ZSTD, compression="zstd",
        compressed_size=4000, uncompressed_size=8192, chunk_size=1024, entries=entries,
    )  # fmt: skip
    return dataclasses.replace(idx, **kw)


def test_round_trip_every_field():
    idx = sample_index()
    assert decode(encode(idx)) == idx


def test_round_trip_with_gzip_checkpoints():
    cp = GzipCheckpoints(
        compressed_size=4000,
        uncompressed_size=8192,
        spacing=1 << 22,
        window_size=32768,
        points=(Checkpoint(10, 0, 0, b""), Checkpoint(2000, 3, 4096, os.urandom(32768))),
    )
    idx = sample_index(media_type=OCI_LAYER_GZIP, compression="gzip", checkpoints=cp)
    assert decode(encode(idx)).checkpoints == cp


def test_round_trip_root_attributes():
    root = Entry("", EntryType.DIR, mode=0o700, uid=5, gid=6, xattrs={"user.a": b"1"})
    assert decode(encode(sample_index(root=root))).root == root


def test_lookups():
    idx = sample_index()
    assert idx.entry_count == 10
    assert idx.by_path["usr/bin/h"].linkname == "usr/bin/big"
    assert "missing" not in idx.by_path
    assert idx.chunk_digests() == {digest(x) for x in (b"a", b"1", b"2", b"3", b"4", b"5")}


def test_newer_version_is_refused_clearly():
    data = bytearray(encode(sample_index()))
    data[len(MAGIC)] = FORMAT_VERSION + 1
    with pytest.raises(
        LayerError, match=r"format version 4 is newer than this fusesnap reads \(3\)"
    ):
        decode(bytes(data))


@pytest.mark.parametrize(
    "data",
    [b"", b"JUNK\x01", MAGIC + b"\x01" + b"not zstd", MAGIC + b"\x00"],
)
def test_garbage_is_refused(data):
    with pytest.raises(LayerError, match="layer index"):
        decode(data)


def reencode(mutate) -> bytes:
    data = encode(sample_index())
    body = msgpack.unpackb(zstandard.ZstdDecompressor().decompress(data[5:]), raw=False)
    mutate(body)
    packed = msgpack.packb(body, use_bin_type=True)
    return data[:5] + zstandard.ZstdCompressor().compress(packed)


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda b: b[7][0].__setitem__(1, b"../etc"), "unsafe path"),
        (lambda b: b[7][0].__setitem__(1, b""), "unsafe path"),
        (lambda b: b[7][1].__setitem__(2, 99), "unknown type"),
        (lambda b: b[7][1][15].__setitem__(1, b"short"), "chunk"),
        (lambda b: b[7][2].__setitem__(8, 999_999), "chunk count"),
        (lambda b: b[7][1].__setitem__(3, "0644"), "want an integer"),
        (lambda b: b.__setitem__(0, "sha256:nothex"), "invalid digest"),
        (lambda b: b.__setitem__(5, 100), "beyond the end"),
        (lambda b: b[7].__setitem__(0, [1, 2]), "want an array of 16"),
        (lambda b: b.__setitem__(9, b[7][0]), "unsafe path"),  # a root row with a path
    ],
)
def test_hostile_index_fields_are_refused(mutate, match):
    with pytest.raises(LayerError, match=match):
        decode(reencode(mutate))


@pytest.mark.parametrize(
    ("name", "want"),
    [
        ("./a//b/", "a/b"),
        ("/etc/passwd", "etc/passwd"),
        ("./", ""),
        ("a/./b", "a/b"),
        ("...", "..."),
        (".wh..wh..opq", ".wh..wh..opq"),
    ],
)
def test_normalize_path(name, want):
    assert normalize_path(name) == want


@pytest.mark.parametrize("name", ["", "..", "a/../b", "../x", "a\0b", "/.."])
def test_normalize_path_refuses(name):
    with pytest.raises(ValueError):  # noqa: PT011 - the reason text varies
        normalize_path(name)


@pytest.mark.parametrize(
    "chunks",
    [
        (ChunkRef(0, 10, digest(b"x")),),  # overlaps the previous file's data (512..522)
        (ChunkRef(6000, 5, digest(b"x")), ChunkRef(6006, 5, digest(b"y"))),  # a gap
        (ChunkRef(6000, 10, b"short"),),
        (ChunkRef(6000, 9, digest(b"x")),),  # does not cover the size
    ],
)
def test_encode_refuses_chunks_it_cannot_represent(chunks):
    bad = Entry("zz", EntryType.FILE, size=10, chunks=chunks)
    idx = sample_index()
    idx = dataclasses.replace(idx, entries=(*idx.entries[:2], bad))
    with pytest.raises(ValueError, match="entry 'zz'"):
        encode(idx)


def test_records_are_frozen():
    e = Entry("a", EntryType.FILE)
    with pytest.raises(dataclasses.FrozenInstanceError):
        e.path = "b"  # type: ignore[misc]


# -- size on a real-ish layer -----------------------------------------------------------------


def usr_layer(tmp_path: Path, budget: int) -> Path:
    """A gzip'd tar of real files from /usr (the first ``budget`` bytes of them, sorted)."""
    files: list[str] = []
    total = 0
    for top in ("/usr/include", "/usr/share", "/usr/lib", "/usr"):
        for root, dirs, names in os.walk(top):
            dirs.sort()
            files.append(root)
            for n in sorted(names):
                p = os.path.join(root, n)
                if os.path.islink(p) or (os.path.isfile(p) and os.access(p, os.R_OK)):
                    files.append(p)
                    total += os.lstat(p).st_size
                if total >= budget:
                    break
            if total >= budget:
                break
        if total >= budget:
            break
    out = tmp_path / "usr.tar.gz"
    with tarfile.open(out, "w:gz", compresslevel=6, format=tarfile.PAX_FORMAT) as tf:
        for p in dict.fromkeys(files):
            tf.add(p, arcname=p.lstrip("/"), recursive=False)
    return out


def test_index_is_a_small_fraction_of_a_real_layer(tmp_path):
    layer = usr_layer(tmp_path, 40 << 20)
    blob = layer.read_bytes()
    with layer.open("rb") as f:
        idx = build_index(
            f, layer_digest="sha256:" + hashlib.sha256(blob).hexdigest(), media_type=OCI_LAYER_GZIP
        )
    encoded = encode(idx.without_windows())  # as stored and pushed: windows by digest
    ratio = len(encoded) / len(blob)
    print(
        f"\nlayer {len(blob) / 1e6:.1f} MB gz, {idx.uncompressed_size / 1e6:.1f} MB tar, "
        f"{idx.entry_count} entries, {len(idx.chunk_digests())} chunks, "
        f"{len(idx.checkpoints.points) if idx.checkpoints else 0} checkpoints: "
        f"index {len(encoded) / 1e3:.0f} kB = {100 * ratio:.2f}% of the blob"
    )
    assert idx.entry_count > 500
    assert ratio < 0.03  # mostly the 32-byte chunk digests, which do not compress
    assert decode(encoded) == idx.without_windows()
    assert io.BytesIO(encoded).read(4) == MAGIC
