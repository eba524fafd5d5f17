"""Building a LayerIndex from real tar streams written with tarfile (no mocks)."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import struct
import tarfile

import pytest
import zstandard

from fusesnap.errors import DigestMismatchError, ManifestError
from fusesnap.index import EntryType, LayerIndex, build_index, decode, encode, gzipindex
from fusesnap.oci import OCI_LAYER_GZIP, OCI_LAYER_TAR, OCI_LAYER_ZSTD

CAP = b"\x01\x00\x00\x02\x00\x20\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00"


def member(name, type=tarfile.REGTYPE, data=b"", **kw):
    info = tarfile.TarInfo(name)
    info.type = type
    info.size = len(data) if type in (tarfile.REGTYPE, tarfile.AREGTYPE) else 0
    info.mtime = kw.pop("mtime", 1_700_000_000)
    for k, v in kw.items():
        setattr(info, k, v)
    return info, data


def make_tar(members, fmt=tarfile.PAX_FORMAT) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tf:
        for info, data in members:
            tf.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return buf.getvalue()


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def index(blob: bytes, media_type: str = OCI_LAYER_TAR, **kw) -> LayerIndex:
    return build_index(io.BytesIO(blob), layer_digest=sha(blob), media_type=media_type, **kw)


def index_tar(members, **kw) -> LayerIndex:
    return index(make_tar(members), **kw)


class Unseekable(io.RawIOBase):
    def __init__(self, data: bytes) -> None:
        self._f = io.BytesIO(data)
        self.consumed = 0

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        n = self._f.readinto(b)
        self.consumed += n
        return n


# -- entries ---------------------------------------------------------------------------------


def test_every_entry_type_and_field_round_trips():
    members = [
        member("./", tarfile.DIRTYPE, mode=0o755),
        member("./bin", tarfile.DIRTYPE, mode=0o755, uid=1, gid=2, uname="bin", gname="sys"),
        member("./bin/su", data=b"#!/bin/sh\n", mode=0o4755),
        member("./bin/wall", data=b"x", mode=0o2755),
        member("./tmp", tarfile.DIRTYPE, mode=0o1777),
        member("./bin/sh", tarfile.SYMTYPE, linkname="../usr/bin/dash"),
        member("./bin/sudo", tarfile.LNKTYPE, linkname="./bin/su"),
        member("./dev/null", tarfile.CHRTYPE, devmajor=1, devminor=3, mode=0o666),
        member("./dev/sda", tarfile.BLKTYPE, devmajor=8, devminor=0, mode=0o660),
        member("./run/fifo", tarfile.FIFOTYPE, mode=0o600),
        member("./empty", data=b""),
    ]
    idx = index_tar(members)
    got = {e.path: e for e in idx.entries}
    assert [e.path for e in idx.entries] == [
        "bin", "bin/su", "bin/wall", "tmp", "bin/sh", "bin/sudo", "dev/null", "dev/sda",
        "run/fifo", "empty",
    ]  # fmt: skip
    assert got["bin"].type == EntryType.DIR
    assert (got["bin"].uid, got["bin"].gid, got["bin"].uname, got["bin"].gname) == (
        1,
        2,
        "bin",
        "sys",
    )
    assert got["bin/su"].mode == 0o4755
    assert got["bin/su"].size == 10
    assert got["bin/wall"].mode == 0o2755
    assert got["tmp"].mode == 0o1777
    assert got["bin/sh"].type == "symlink"
    assert got["bin/sh"].linkname == "../usr/bin/dash"  # symlink targets are kept as written
    assert got["bin/sudo"].type == "hardlink"
    assert got["bin/sudo"].linkname == "bin/su"  # hardlink targets are normalized
    assert (got["dev/null"].type, got["dev/null"].devmajor, got["dev/null"].devminor) == (
        "char",
        1,
        3,
    )
    assert (got["dev/sda"].type, got["dev/sda"].devmajor) == ("block", 8)
    assert got["run/fifo"].type == "fifo"
    assert got["empty"].size == 0
    assert got["empty"].chunks == ()
    assert all(e.mtime == 1_700_000_000 for e in idx.entries)
    assert decode(encode(idx)) == idx


def test_pax_long_names_long_link_targets_and_unicode():
    long_dir = "d" * 120
    longer = "/".join([f"segment{i:03d}" for i in range(30)])  # > 255 chars
    target = "t" * 300
    members = [
        member(f"{long_dir}/file", data=b"a"),
        member(f"{longer}/f", data=b"b"),
        member("link", tarfile.SYMTYPE, linkname=target),
        member("hard", tarfile.LNKTYPE, linkname=f"{longer}/f"),
        member("ünïcödé/文件.txt", data="héllo".encode()),
    ]
    idx = index_tar(members)
    paths = [e.path for e in idx.entries]
    assert paths == [f"{long_dir}/file", f"{longer}/f", "link", "hard", "ünïcödé/文件.txt"]
    assert len(longer) > 255
    assert idx.by_path["link"].linkname == target
    assert idx.by_path["hard"].linkname == f"{longer}/f"
    assert decode(encode(idx)) == idx


def test_gnu_long_names_and_non_utf8_names():
    name = "caf\udce9/" + "n" * 150  # raw byte 0xe9: not UTF-8
    idx = index(make_tar([member(name, data=b"x")], fmt=tarfile.GNU_FORMAT))
    assert idx.entries[0].path == name
    assert decode(encode(idx)).entries[0].path == name


def test_pax_xattrs_including_binary_values():
    info, data = member("bin/ping", data=b"ELF", mode=0o755)
    info.pax_headers = {
        "SCHILY.xattr.user.x": "hello",
        "SCHILY.xattr.security.capability": CAP.decode("utf-8", "surrogateescape"),
        "LIBARCHIVE.xattr.user.b64": "d29ybGQ",  # "world", unpadded like libarchive writes
        "LIBARCHIVE.xattr.user.x": "aWdub3JlZA==",  # SCHILY wins for the same name
    }
    idx = index_tar([(info, data)])
    assert idx.entries[0].xattrs == {
        "security.capability": CAP,
        "user.b64": b"world",
        "user.x": b"hello",
    }
    assert decode(encode(idx)).entries[0].xattrs == idx.entries[0].xattrs


def raw_pax_tar(name: str, records: list[tuple[bytes, bytes]], data: bytes = b"x") -> bytes:
    """A PAX header with raw (non-UTF-8) values and no hdrcharset, as Go's archive/tar writes."""
    body = b""
    for key, value in records:
        rest = b" " + key + b"=" + value + b"\n"
        n = len(rest) + 1
        while len(str(n)) + len(rest) != n:
            n = len(str(n)) + len(rest)
        body += str(n).encode() + rest
    xh = tarfile.TarInfo("PaxHeaders/" + name)
    xh.type = tarfile.XHDTYPE
    xh.size = len(body)
    out = xh.tobuf(tarfile.USTAR_FORMAT) + body + b"\0" * (-len(body) % 512)
    info = tarfile.TarInfo(name)
    info.size = len(data)
    out += info.tobuf(tarfile.USTAR_FORMAT) + data + b"\0" * (-len(data) % 512)
    return out + b"\0" * 1024


def test_raw_binary_pax_xattr_and_exact_nanosecond_mtime():
    blob = raw_pax_tar(
        "bin/ping",
        [(b"SCHILY.xattr.security.capability", CAP), (b"mtime", b"1700000000.123456789")],
    )
    e = index(blob).entries[0]
    assert e.xattrs == {"security.capability": CAP}
    assert (e.mtime, e.mtime_nsec) == (1_700_000_000, 123_456_789)


def test_whiteouts_are_kept_and_the_root_entry_is_kept_apart():
    members = [
        member(".", tarfile.DIRTYPE, mode=0o700, uid=5, gid=6),
        member("etc/.wh.passwd"),
        member("var/.wh..wh..opq"),
    ]
    idx = index_tar(members)
    assert [e.path for e in idx.entries] == ["etc/.wh.passwd", "var/.wh..wh..opq"]
    assert idx.root is not None
    assert (idx.root.path, idx.root.type, idx.root.mode, idx.root.uid) == ("", "dir", 0o700, 5)
    assert decode(encode(idx)).root == idx.root
    assert index_tar(members[1:]).root is None


def test_later_duplicate_wins_in_by_path():
    idx = index_tar([member("a", data=b"1"), member("a", data=b"22")])
    assert idx.entry_count == 2
    assert idx.by_path["a"].size == 2


# -- chunks ----------------------------------------------------------------------------------


def test_file_spanning_several_chunks():
    big = os.urandom(4096 * 2 + 1808)
    exact = os.urandom(4096 * 2)
    tar = make_tar(
        [member("small", data=b"tiny"), member("big", data=big), member("exact", data=exact)]
    )
    seen = []
    idx = index(tar, chunk_size=4096, on_chunk=lambda d, data: seen.append((d, data)))
    small, bigf, exactf = idx.entries
    assert [c.length for c in bigf.chunks] == [4096, 4096, 1808]
    assert [c.length for c in exactf.chunks] == [4096, 4096]
    assert len(small.chunks) == 1
    for e, content in ((small, b"tiny"), (bigf, big), (exactf, exact)):
        assert b"".join(tar[c.offset : c.offset + c.length] for c in e.chunks) == content
        for c in e.chunks:
            assert hashlib.sha256(tar[c.offset : c.offset + c.length]).digest() == c.digest
    assert [d for d, _ in seen] == [c.digest for e in idx.entries for c in e.chunks]
    assert all(hashlib.sha256(data).digest() == d for d, data in seen)
    assert idx.chunk_digests() == {d for d, _ in seen}
    assert decode(encode(idx)) == idx


# -- compression and digests -----------------------------------------------------------------


SAMPLE = [
    member("etc/hosts", data=b"127.0.0.1 localhost\n"),
    member("big", data=os.urandom(300_000)),
]


@pytest.mark.parametrize(
    ("media_type", "compress"),
    [
        (OCI_LAYER_TAR, lambda b: b),
        (OCI_LAYER_GZIP, lambda b: gzip.compress(b, 6)),
        (OCI_LAYER_ZSTD, lambda b: zstandard.ZstdCompressor().compress(b)),
    ],
)
def test_compressions_give_the_same_entries_and_diff_id(media_type, compress):
    tar = make_tar(SAMPLE)
    blob = compress(tar)
    idx = index(blob, media_type, chunk_size=65536)
    plain = index(tar, chunk_size=65536)
    assert idx.entries == plain.entries
    assert idx.diff_id == sha(tar)
    assert idx.layer_digest == sha(blob)
    assert (idx.compressed_size, idx.uncompressed_size) == (len(blob), len(tar))
    assert idx.compression == {OCI_LAYER_TAR: "none", OCI_LAYER_GZIP: "gzip"}.get(
        media_type, "zstd"
    )
    assert (idx.checkpoints is not None) == (media_type == OCI_LAYER_GZIP)
    assert decode(encode(idx)) == idx


def test_multi_member_gzip_and_multi_frame_zstd_with_skippable_frame():
    tar = make_tar(SAMPLE)
    cut = len(tar) // 3
    gz = gzip.compress(tar[:cut]) + gzip.compress(tar[cut:])
    assert index(gz, OCI_LAYER_GZIP).diff_id == sha(tar)
    c = zstandard.ZstdCompressor()
    skippable = struct.pack("<II", 0x184D2A50, 4) + b"meta"
    zst = c.compress(tar[:cut]) + skippable + c.compress(tar[cut:])
    assert index(zst, OCI_LAYER_ZSTD).diff_id == sha(tar)


def test_gzip_checkpoints_come_from_the_one_pass_even_from_a_pipe():
    blob = gzip.compress(make_tar(SAMPLE))
    source = Unseekable(blob)
    idx = build_index(io.BufferedReader(source), layer_digest=sha(blob), media_type=OCI_LAYER_GZIP)
    assert source.consumed == len(blob)  # read once
    assert idx.checkpoints is not None
    assert idx.checkpoints == gzipindex.build_checkpoints(io.BytesIO(blob))
    assert idx.entries == index(blob, OCI_LAYER_GZIP).entries


def test_digest_mismatch():
    blob = gzip.compress(make_tar(SAMPLE))
    with pytest.raises(DigestMismatchError, match="layer sha256:"):
        build_index(io.BytesIO(blob), layer_digest=sha(b"other"), media_type=OCI_LAYER_GZIP)


def test_bad_download_reports_digest_mismatch_not_corruption():
    blob = gzip.compress(make_tar(SAMPLE))
    with pytest.raises(DigestMismatchError):
        build_index(io.BytesIO(blob[:-100]), layer_digest=sha(blob), media_type=OCI_LAYER_GZIP)


def test_unsupported_media_type():
    with pytest.raises(ManifestError):
        index(make_tar(SAMPLE), "application/vnd.oci.image.layer.v1.tar+bzip2")


def test_empty_layers():
    assert index(b"").entries == ()
    assert index(b"\0" * 1024).entries == ()
    assert index(gzip.compress(b"\0" * 1024), OCI_LAYER_GZIP).entries == ()


def test_data_after_the_end_of_archive_is_hashed_but_ignored():
    tar = make_tar(SAMPLE) + b"trailing junk"
    idx = index(tar)
    assert idx.diff_id == sha(tar)
    assert idx.entry_count == 2
