"""The zTOC writer against soci-snapshotter's own zTOCs, and on tars the vectors lack."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from pathlib import Path

import flatbuffers
import pytest

from fusesnap.errors import LayerError
from fusesnap.index import ztocwrite
from fusesnap.index.zinfo import build_zinfo
from fusesnap.index.ztoc import parse_ztoc
from fusesnap.index.ztoctar import TocReader, read_toc

VECTORS = Path(__file__).parent.parent / "fixtures" / "soci-ztoc"
MANIFEST = json.loads((VECTORS / "manifest.json").read_text())


@pytest.mark.parametrize("vector", MANIFEST, ids=[v["name"] for v in MANIFEST])
def test_byte_for_byte_as_soci_wrote_it(vector: dict) -> None:
    golden = (VECTORS / f"{vector['name']}.ztoc").read_bytes()
    ztoc = ztocwrite.build_ztoc(
        str(VECTORS / vector["input"]), span=vector["span"], build_tool="soci-oracle"
    )
    if ztoc.data != golden:  # say which field differs before failing on the bytes
        assert parse_ztoc(ztoc.data) == parse_ztoc(golden)
    assert ztoc.data == golden
    assert ztoc.digest == "sha256:" + hashlib.sha256(golden).hexdigest()


# -- tars the vectors do not cover ------------------------------------------------------


def _rich_tar() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:

        def add(info: tarfile.TarInfo, data: bytes = b"") -> None:
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data) if data else None)

        d = tarfile.TarInfo("d/")
        d.type, d.mode, d.mtime = tarfile.DIRTYPE, 0o755, 1700000000
        add(d)
        f = tarfile.TarInfo("d/regular")
        f.mode, f.uid, f.gid, f.uname, f.gname = 0o4755, 1000, 1001, "alice", "staff"
        f.mtime = 1234567890.5  # a PAX mtime with a fraction
        f.pax_headers = {"mtime": "1234567890.123456789", "SCHILY.xattr.user.comment": "hi"}
        add(f, b"data\n")
        h = tarfile.TarInfo("d/hard")
        h.type, h.linkname = tarfile.LNKTYPE, "d/regular"
        add(h)
        s = tarfile.TarInfo("d/sym")
        s.type, s.linkname = tarfile.SYMTYPE, "x" * 150  # a PAX linkpath
        add(s)
        c = tarfile.TarInfo("d/char")
        c.type, c.devmajor, c.devminor = tarfile.CHRTYPE, 1, 3
        add(c)
        p = tarfile.TarInfo("d/fifo")
        p.type = tarfile.FIFOTYPE
        add(p)
        add(tarfile.TarInfo("d/" + "n" * 150), b"long name\n")  # a PAX path
    return buf.getvalue()


def test_toc_of_a_rich_tar(tmp_path: Path) -> None:
    layer = tmp_path / "rich.tar.gz"
    layer.write_bytes(gzip.compress(_rich_tar(), mtime=0))
    ztoc = ztocwrite.build_ztoc(str(layer), span=4096, build_tool="t")
    got = parse_ztoc(ztoc.data)
    entries = {e.name: e for e in got.files}
    assert list(entries) == [
        b"d/",
        b"d/regular",
        b"d/hard",
        b"d/sym",
        b"d/char",
        b"d/fifo",
        b"d/" + b"n" * 150,
    ]
    reg = entries[b"d/regular"]
    assert reg.type == "reg"
    assert reg.mode == 0o4755
    assert (reg.uid, reg.gid, reg.uname, reg.gname) == (1000, 1001, b"alice", b"staff")
    assert reg.mod_time == "2009-02-13T23:31:30.123456789Z"
    pax = dict(reg.pax)
    assert pax[b"SCHILY.xattr.user.comment"] == b"hi"
    assert pax[b"mtime"] == b"1234567890.123456789"
    raw = _rich_tar()
    assert raw[reg.offset : reg.offset + reg.size] == b"data\n"
    assert entries[b"d/hard"].type == "hardlink"
    assert entries[b"d/hard"].linkname == b"d/regular"
    assert entries[b"d/sym"].linkname == b"x" * 150
    assert (entries[b"d/char"].devmajor, entries[b"d/char"].devminor) == (1, 3)
    assert entries[b"d/fifo"].type == "fifo"
    assert entries[b"d/"].mod_time == "2023-11-14T22:13:20Z"
    long = entries[b"d/" + b"n" * 150]
    assert raw[long.offset : long.offset + long.size] == b"long name\n"
    # the archive ends after its two zero blocks, as Go's tar reader stops
    with tarfile.open(fileobj=io.BytesIO(raw)) as tf:
        members = tf.getmembers()
    end = members[-1].offset_data + 512
    assert got.uncompressed_size == end + 1024
    assert got.compressed_size == layer.stat().st_size


def test_multi_member_checkpoints_run_on_across_members(tmp_path: Path) -> None:
    raw = _rich_tar()  # in three members
    third = len(raw) // 3
    parts = [raw[:third], raw[third : 2 * third], raw[2 * third :]]
    layer = tmp_path / "multi.tar.gz"
    layer.write_bytes(b"".join(gzip.compress(p, mtime=0) for p in parts))
    with layer.open("rb") as f:
        zinfo = build_zinfo(f, span=512)
    assert zinfo.compressed_size == layer.stat().st_size
    assert zinfo.checkpoints[0].uoffset == 0
    assert zinfo.checkpoints[-1].uoffset >= 2 * third  # one in the last member
    for p in zinfo.checkpoints:  # each window is the output before its checkpoint
        before = raw[max(0, p.uoffset - 32768) : p.uoffset]
        assert p.window == bytes(32768 - len(before)) + before


def test_a_global_pax_header_is_refused_like_soci_does() -> None:
    buf = io.BytesIO()
    with tarfile.open(
        fileobj=buf, mode="w", format=tarfile.PAX_FORMAT, pax_headers={"comment": "global"}
    ) as tf:
        tf.addfile(tarfile.TarInfo("a"))
    with pytest.raises(LayerError, match="global PAX"):
        read_toc(io.BytesIO(buf.getvalue()))


def test_corrupt_or_truncated_gzip_is_a_layer_error(tmp_path: Path) -> None:
    data = gzip.compress(_rich_tar(), mtime=0)
    layer = tmp_path / "bad.tar.gz"
    layer.write_bytes(data[: len(data) // 2])
    with pytest.raises(LayerError, match="truncated"):
        ztocwrite.build_ztoc(str(layer))
    layer.write_bytes(data[:20] + bytes(200) + data[220:])
    with pytest.raises(LayerError):
        ztocwrite.build_ztoc(str(layer))
    layer.write_bytes(b"not gzip at all")
    with pytest.raises(LayerError):
        ztocwrite.build_ztoc(str(layer))


def test_builder_is_the_flatbuffers_package() -> None:
    assert isinstance(ztocwrite._builder(), flatbuffers.Builder)


def test_a_directory_has_no_data_whatever_its_size_field_says() -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tf:
        d = tarfile.TarInfo("d")
        d.type = tarfile.DIRTYPE
        tf.addfile(d)
        f = tarfile.TarInfo("d/f")
        f.size = 3
        tf.addfile(f, io.BytesIO(b"abc"))
    raw = bytearray(buf.getvalue())
    raw[124:136] = b"%011o\0" % 1024  # the directory claims 1 KiB of data
    raw[148:156] = b" " * 8
    raw[148:156] = b"%06o\0 " % sum(raw[:512])
    entries, _ = read_toc(io.BytesIO(bytes(raw)))
    assert [(e.name, e.type, e.size) for e in entries] == [
        (b"d/", b"dir", 1024),
        (b"d/f", b"reg", 3),
    ]
    assert raw[entries[1].offset : entries[1].offset + 3] == b"abc"


@pytest.mark.parametrize("piece", [1, 7, 512, 100_000])
def test_the_toc_does_not_depend_on_how_the_stream_is_cut(piece: int) -> None:
    raw = _rich_tar()
    reader = TocReader()
    for i in range(0, len(raw), piece):
        reader.feed(raw[i : i + piece])
    assert reader.finish() == read_toc(io.BytesIO(raw))
    truncated = TocReader()
    truncated.feed(raw[:700])
    with pytest.raises(LayerError, match="ends inside an entry"):
        truncated.finish()
