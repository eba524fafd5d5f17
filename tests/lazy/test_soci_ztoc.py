"""soci-snapshotter's zTOCs read against the layers they were built from, every test vector.

Ground truth is the tar itself (Python's tarfile and fusesnap's own tar scan) and the blob:
the TOC must list what the tar holds, every span must hash to its digest and inflate from
its checkpoint to the tar's bytes, and every file read through the zTOC (span-verified
random access, the fetcher's path) must be the file in the tar.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import random
import tarfile
import zlib
from collections.abc import Iterator
from decimal import Decimal

import pytest
import trio

from fusesnap.digest import Digest
from fusesnap.errors import DigestMismatchError, LayerError
from fusesnap.index import EntryType, LayerIndex, build_index, decode, encode, gzipindex
from fusesnap.index.soci import index_from_ztoc
from fusesnap.index.ztoc import parse_zinfo, parse_ztoc, span_range
from fusesnap.lazy import open_chunk_fetcher
from fusesnap.oci import OCI_LAYER_GZIP
from fusesnap.store import Store, open_store
from tests.lazy.sociztoc import (
    Vector,
    vector,
    vectors,
    with_file_name,
    with_file_offset,
    with_span_digest,
    write_ztoc,
)

VECTORS = vectors()
NAMES = [v.name for v in VECTORS]
DIFF_ID = Digest.of(b"not checked here")
_TYPES = {
    tarfile.REGTYPE: EntryType.FILE,
    tarfile.AREGTYPE: EntryType.FILE,
    tarfile.DIRTYPE: EntryType.DIR,
    tarfile.SYMTYPE: EntryType.SYMLINK,
    tarfile.LNKTYPE: EntryType.HARDLINK,
    tarfile.CHRTYPE: EntryType.CHAR,
    tarfile.BLKTYPE: EntryType.BLOCK,
    tarfile.FIFOTYPE: EntryType.FIFO,
}


@pytest.fixture
def store(tmp_path) -> Iterator[Store]:
    with open_store(tmp_path / "root") as s:
        yield s


def _index(v: Vector, ztoc: bytes | None = None, chunk_size: int = 1 << 20) -> LayerIndex:
    data = v.ztoc if ztoc is None else ztoc
    return index_from_ztoc(data, v.layer, DIFF_ID, chunk_size=chunk_size)


def _members(v: Vector) -> list[tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(v.blob), mode="r:gz") as tf:
        return tf.getmembers()


def _path(name: str) -> str:
    return "/".join(p for p in name.split("/") if p and p != ".")


# -- the TOC ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_the_toc_lists_what_the_tar_holds(name: str) -> None:
    v = vector(name)
    ztoc = parse_ztoc(v.ztoc)
    assert ztoc.build_tool == "soci-oracle"
    assert ztoc.span_size == v.span
    assert ztoc.compressed_size == len(v.blob)
    assert ztoc.uncompressed_size == len(gzip.decompress(v.blob))
    index = _index(v)
    members = _members(v)
    entries = [index.root, *index.entries] if index.root is not None else list(index.entries)
    assert [e.path for e in entries] == [_path(m.name) for m in members]
    for e, m in zip(entries, members, strict=True):
        assert e.type is _TYPES[m.type], m.name
        assert e.size == (m.size if m.isreg() else 0), m.name
        assert e.mode == m.mode & 0o7777, m.name
        assert (e.uid, e.gid, e.uname, e.gname) == (m.uid, m.gid, m.uname, m.gname), m.name
        if m.issym():
            assert e.linkname == m.linkname
        elif m.islnk():
            assert e.linkname == _path(m.linkname)
        if m.ischr() or m.isblk():
            assert (e.devmajor, e.devminor) == (m.devmajor, m.devminor)
        exact = Decimal(m.pax_headers.get("mtime", str(int(m.mtime))))
        assert Decimal(e.mtime) + Decimal(e.mtime_nsec) / 10**9 == exact, m.name
        xattrs = {k[13:]: x for k, x in m.pax_headers.items() if k.startswith("SCHILY.xattr.")}
        assert {k: x.decode("utf-8", "surrogateescape") for k, x in e.xattrs.items()} == xattrs
        if m.isreg() and m.size:
            assert e.chunks[0].offset == m.offset_data
            assert sum(c.length for c in e.chunks) == m.size


@pytest.mark.parametrize("name", NAMES)
def test_the_entries_are_those_of_a_tar_scan(name: str) -> None:
    v = vector(name)
    built = build_index(io.BytesIO(v.blob), layer_digest=v.layer.digest, media_type=OCI_LAYER_GZIP)
    index = _index(v)

    def bare(entries):
        return [dataclasses.replace(e, chunks=()) for e in entries]

    assert bare(index.entries) == bare(built.entries)
    assert index.root == built.root
    assert index.uncompressed_size == built.uncompressed_size


def test_the_vectors_cover_several_spans_and_gzip_members() -> None:
    assert max(len(parse_ztoc(v.ztoc).points) for v in VECTORS) >= 3
    multi = vector("multi-basic").blob
    assert multi.count(b"\x1f\x8b\x08") >= 2


# -- spans and checkpoints ------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_every_span_hashes_to_its_digest_and_inflates_to_the_tar(name: str) -> None:
    v = vector(name)
    ztoc = parse_ztoc(v.ztoc)
    tar = gzip.decompress(v.blob)
    cp = _index(v).checkpoints
    assert cp is not None
    for i, digest in enumerate(ztoc.span_digests):
        start, end = span_range(ztoc.points, i, len(v.blob))
        span = v.blob[start:end]
        assert hashlib.sha256(span).digest() == digest
        ustart = ztoc.points[i].uoffset
        uend = ztoc.points[i + 1].uoffset if i + 1 < len(ztoc.points) else len(tar)
        if uend == ustart:
            continue

        if i == 0:  # zran parses a gzip header first: any of the same length will do
            span, start = gzipindex.plain_header(start) + span, 0

        def from_span(offset: int, length: int, span=span, start=start) -> bytes:
            assert offset >= start, "read before the span"
            got = span[offset - start : offset - start + length]
            return got + bytes(length - len(got))  # past the span: never inflated

        # One byte short of the next checkpoint, as the fetcher plans it.
        n = uend - ustart - (1 if i + 1 < len(ztoc.points) else 0)
        assert gzipindex.read_range(cp, from_span, ustart, n) == tar[ustart : ustart + n]


def test_a_first_version_checkpoints_blob_implies_checkpoint_zero() -> None:
    v = vector("text-l9")
    raw = parse_ztoc(v.ztoc)
    blob = _zinfo_blob(v.ztoc)
    old = blob[:12] + blob[12 + 17 + 32768 :]  # checkpoint 0 left out, the count kept
    span, points = parse_zinfo(old)
    assert span == raw.span_size
    assert points == raw.points
    with pytest.raises(LayerError, match="does not hold"):
        parse_zinfo(blob[:-1])


def _zinfo_blob(ztoc: bytes) -> bytes:
    count = parse_ztoc(ztoc).points
    for i in range(len(ztoc)):  # the blob starts with its count and span size
        if ztoc[i : i + 4] == len(count).to_bytes(4, "little"):
            n = int.from_bytes(ztoc[i - 4 : i], "little")
            if n == 12 + len(count) * (17 + 32768):
                return ztoc[i : i + n]
    raise AssertionError("no checkpoints blob")


# -- reading files through the zTOC ---------------------------------------------------------------


class _Ranges:
    def __init__(self, blob: bytes) -> None:
        self.blob = blob
        self.calls: list[tuple[int, int]] = []

    async def __call__(self, digest: Digest, offset: int, length: int) -> bytes:
        assert offset >= 0
        assert offset + length <= len(self.blob)
        self.calls.append((offset, length))
        return self.blob[offset : offset + length]


@pytest.mark.parametrize("name", NAMES)
async def test_every_file_reads_through_the_ztoc(name: str, store: Store) -> None:
    v = vector(name)
    index = _index(v, chunk_size=64 << 10)
    with tarfile.open(fileobj=io.BytesIO(v.blob)) as tf:
        files = {_path(m.name): tf.extractfile(m).read() for m in tf if m.isreg()}  # type: ignore[union-attr]
    ranges = _Ranges(v.blob)
    ztoc = parse_ztoc(v.ztoc)
    bounds = {span_range(ztoc.points, i, len(v.blob)) for i in range(len(ztoc.points))}
    async with open_chunk_fetcher(ranges, store.chunks) as fetcher:
        for e in index.entries:
            if e.type is EntryType.FILE and e.size:
                got = await fetcher.get_many(index, e.chunks)
                assert b"".join(got[c.digest] for c in e.chunks) == files[e.path]
        assert fetcher.stats.verify_failures == 0
    starts, ends = {s for s, _ in bounds}, {e for _, e in bounds}
    for offset, length in ranges.calls:  # whole spans only: what their digests cover
        assert offset in starts
        assert offset + length in ends
    # Stored under the sha256 of their bytes, not under their locators.
    for e in index.entries:
        for c in e.chunks:
            assert not store.chunks.exists(c.digest)
    for e in index.entries:
        if e.chunks:
            first = files[e.path][: e.chunks[0].length]
            assert store.chunks.get(hashlib.sha256(first).digest()) == first


async def test_a_later_fetcher_inflates_the_stored_spans(store: Store) -> None:
    v = vector("large-compressible-l1")
    index = _index(v)
    part0 = next(e for e in index.entries if e.path == "big/part-0.log")
    first = _Ranges(v.blob)
    async with open_chunk_fetcher(first, store.chunks) as fetcher:
        want = await fetcher.get_many(index, part0.chunks)
    assert len(first.calls) == 1
    assert index.checkpoints is not None
    assert store.chunks.exists(index.checkpoints.span_digests[0])
    again = _Ranges(b"")  # any request would fail
    async with open_chunk_fetcher(again, store.chunks) as fetcher:
        assert await fetcher.get_many(index, part0.chunks) == want
        assert fetcher.stats.spans_from_store == 1
    assert again.calls == []


async def test_concurrent_reads_in_one_span_fetch_it_once(store: Store) -> None:
    v = vector("large-compressible-l1")
    index = _index(v, chunk_size=256 << 10)
    part0 = next(e for e in index.entries if e.path == "big/part-0.log")
    ranges = _Ranges(v.blob)
    async with open_chunk_fetcher(ranges, store.chunks) as fetcher, trio.open_nursery() as n:
        for ref in part0.chunks:  # each its own batch, as the kernel's parallel reads are
            n.start_soon(fetcher.get, index, ref)
    assert len(ranges.calls) == 1, ranges.calls


def test_a_plain_header_stands_in_for_any_length() -> None:
    for size in (10, 11, 12, 20, 300):
        header = gzipindex.plain_header(size)
        assert len(header) == size
        d = zlib.decompressobj(31)
        assert d.decompress(header + zlib.compress(b"x")[2:-4] + _trailer(b"x")) == b"x"


def _trailer(data: bytes) -> bytes:
    return zlib.crc32(data).to_bytes(4, "little") + len(data).to_bytes(4, "little")


def test_the_stored_form_keeps_the_span_digests() -> None:
    index = _index(vector("large-compressible-l1"))
    assert index.span_verified
    again = decode(encode(index))
    assert again == index
    assert again.checkpoints is not None
    assert again.checkpoints.span_digests == index.checkpoints.span_digests  # type: ignore[union-attr]


# -- bad zTOCs -----------------------------------------------------------------------------------


async def test_a_span_that_does_not_match_its_digest_serves_nothing(store: Store) -> None:
    v = vector("large-compressible-l1")
    index = _index(v, with_span_digest(v.ztoc, 1, bytes(32)))
    ranges = _Ranges(v.blob)
    assert index.checkpoints is not None
    second = index.checkpoints.points[1].uoffset
    ref = next(c for e in index.entries for c in e.chunks if c.offset >= second)
    async with open_chunk_fetcher(ranges, store.chunks) as fetcher:
        with pytest.raises(DigestMismatchError, match="zTOC span 1"):
            await fetcher.get(index, ref)
        assert fetcher.stats.verify_failures == 1
    assert store.chunks.stats().count == 0


async def test_corrupt_blob_bytes_fail_the_span_check(store: Store) -> None:
    v = vector("text-l0")
    index = _index(v)
    bad = bytearray(v.blob)
    bad[len(bad) // 3] ^= 0x20  # in span 0, inside a stored block: it would inflate
    ranges = _Ranges(bytes(bad))
    ref = index.entries[0].chunks[0]
    async with open_chunk_fetcher(ranges, store.chunks) as fetcher:
        with pytest.raises(DigestMismatchError, match="zTOC span 0"):
            await fetcher.get(index, ref)
    assert store.chunks.stats().count == 0


def test_a_truncated_ztoc_is_refused() -> None:
    v = vector("basic-l9")
    for cut in (0, 3, 100, len(v.ztoc) // 2, len(v.ztoc) - 1):
        with pytest.raises(LayerError, match="zTOC"):
            _index(v, v.ztoc[:cut])


def test_a_ztoc_of_another_blob_is_refused() -> None:
    v = vector("basic-l9")
    other = dataclasses.replace(v, blob=v.blob + b"\0")
    with pytest.raises(LayerError, match="not 199"):
        _index(other, v.ztoc)


def test_a_name_that_escapes_the_root_is_refused() -> None:
    v = vector("basic-l9")
    assert parse_ztoc(v.ztoc).files[1].name == b"etc/hostname"
    with pytest.raises(LayerError, match="escapes the layer root"):
        _index(v, with_file_name(v.ztoc, 1, b"../../hostna"))


def test_a_toc_that_points_past_the_archive_is_refused() -> None:
    v = vector("basic-l9")
    with pytest.raises(LayerError, match="past the end of the archive"):
        _index(v, with_file_offset(v.ztoc, 1, 5120 - 4))


# -- entry types the vectors lack, in a zTOC fusesnap writes --------------------------------------


def _every_kind_of_entry() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:

        def add(name: str, kind: bytes, data: bytes = b"", **attrs: object) -> None:
            info = tarfile.TarInfo(name)
            info.type, info.size, info.mtime, info.mode = kind, len(data), 1_700_000_000, 0o644
            for key, value in attrs.items():
                setattr(info, key, value)
            tf.addfile(info, io.BytesIO(data) if data else None)

        add("./", tarfile.DIRTYPE, mode=0o755, mtime=1_600_000_000)
        add("etc", tarfile.DIRTYPE, mode=0o755, uid=7, gid=8, uname="u", gname="g")
        big = random.Random(1).randbytes(300_000)  # several spans of 64 KiB
        pax = {"SCHILY.xattr.user.note": "hi", "mtime": "1700000000.123456789"}
        add("etc/big", tarfile.REGTYPE, big, mode=0o4755, pax_headers=pax)
        add("etc/link", tarfile.SYMTYPE, linkname="../etc/big")
        add("etc/hard", tarfile.LNKTYPE, linkname="etc/big")
        add("dev/null", tarfile.CHRTYPE, devmajor=1, devminor=3)
        add("dev/sda", tarfile.BLKTYPE, devmajor=8, devminor=0)
        add("run/fifo", tarfile.FIFOTYPE)
        add("long/" + "n" * 150, tarfile.REGTYPE, b"long name\n")
        add("tmp", tarfile.DIRTYPE, mode=0o1777)
    return gzip.compress(buf.getvalue(), mtime=0)


async def test_every_entry_type_reads_as_a_tar_scan_would(store: Store) -> None:
    blob = _every_kind_of_entry()
    v = Vector("written", blob, write_ztoc(blob), 64 << 10)
    index = _index(v, chunk_size=32 << 10)
    built = build_index(io.BytesIO(blob), layer_digest=v.layer.digest, media_type=OCI_LAYER_GZIP)
    assert [dataclasses.replace(e, chunks=()) for e in index.entries] == [
        dataclasses.replace(e, chunks=()) for e in built.entries
    ]
    assert index.root == built.root
    assert index.root is not None
    assert {e.type for e in index.entries} == set(EntryType)
    big = index.by_path["etc/big"]
    assert (big.mode, big.mtime_nsec, dict(big.xattrs)) == (0o4755, 123456789, {"user.note": b"hi"})
    assert len(index.checkpoints.points) > 3  # type: ignore[union-attr]
    async with open_chunk_fetcher(_Ranges(blob), store.chunks) as fetcher:
        for path in ("etc/big", "long/" + "n" * 150):
            e = index.by_path[path]
            got = await fetcher.get_many(index, e.chunks)
            assert b"".join(got[c.digest] for c in e.chunks) == _tar_file(blob, path)


def _tar_file(blob: bytes, path: str) -> bytes:
    with tarfile.open(fileobj=io.BytesIO(blob)) as tf:
        f = tf.extractfile(path)
        assert f is not None
        return f.read()


def test_a_hardlink_to_a_directory_is_refused() -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        tf.addfile(_dir("d"))
        link = tarfile.TarInfo("l")
        link.type, link.linkname = tarfile.LNKTYPE, "d"
        tf.addfile(link)
    blob = gzip.compress(buf.getvalue(), mtime=0)
    with pytest.raises(LayerError, match="is not a file"):
        _index(Vector("x", blob, write_ztoc(blob), 64 << 10))


def _dir(name: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE
    return info
