"""Hostile and broken layers: each gives one clear LayerError naming the layer (and entry)."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import tarfile
import zlib

import pytest
import zstandard

from fusesnap.errors import LayerError
from fusesnap.index import Limits, build_index
from fusesnap.oci import OCI_LAYER_GZIP, OCI_LAYER_TAR, OCI_LAYER_ZSTD


def member(name, type=tarfile.REGTYPE, data=b"", **kw):
    info = tarfile.TarInfo(name)
    info.type = type
    info.size = len(data) if type == tarfile.REGTYPE else 0
    for k, v in kw.items():
        setattr(info, k, v)
    return info, data


def make_tar(members) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for info, data in members:
            tf.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return buf.getvalue()


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def index(blob: bytes, media_type: str = OCI_LAYER_TAR, **kw):
    return build_index(io.BytesIO(blob), layer_digest=sha(blob), media_type=media_type, **kw)


def short(blob: bytes) -> str:
    return sha(blob)[:19]


@pytest.mark.parametrize(
    "name", ["../escape", "a/../../b", "a/../b", "./../x", "/../etc/passwd", "a/.."]
)
def test_paths_with_dotdot_are_rejected(name):
    tar = make_tar([member("ok", data=b"1"), member(name, data=b"evil")])
    with pytest.raises(LayerError) as err:
        index(tar)
    msg = str(err.value)
    assert msg.startswith(f"layer {short(tar)}: entry {name!r}:")
    assert "escapes the layer root" in msg


def test_absolute_paths_are_made_relative():
    idx = index(make_tar([member("/etc/passwd", data=b"root")]))
    assert idx.entries[0].path == "etc/passwd"


@pytest.mark.parametrize("target", ["/../etc/shadow", "../../etc/shadow", "a/../../x"])
def test_hardlink_targets_that_escape_are_rejected(target):
    tar = make_tar([member("link", tarfile.LNKTYPE, linkname=target)])
    with pytest.raises(LayerError, match=r"entry 'link': hardlink target .* escapes"):
        index(tar)


def test_absolute_hardlink_target_inside_the_layer_is_root_relative():
    # GNU tar strips the "/", containerd resolves it under the root: it names etc/passwd.
    tar = make_tar(
        [member("etc/passwd", data=b"x"), member("l", tarfile.LNKTYPE, linkname="/etc/passwd")]
    )
    assert index(tar).by_path["l"].linkname == "etc/passwd"


def test_hardlink_to_an_unseen_target_is_allowed_it_may_be_in_a_lower_layer():
    idx = index(make_tar([member("l", tarfile.LNKTYPE, linkname="usr/bin/lower")]))
    assert idx.entries[0].linkname == "usr/bin/lower"


@pytest.mark.parametrize(
    ("members", "match"),
    [
        (
            [member("d", tarfile.DIRTYPE), member("l", tarfile.LNKTYPE, linkname="d")],
            "is a directory",
        ),
        ([member("l", tarfile.LNKTYPE, linkname="l")], "is not a file"),
        ([member("l", tarfile.LNKTYPE, linkname="./")], "is not a file"),
    ],
)
def test_hardlinks_to_dirs_themselves_or_root_are_rejected(members, match):
    with pytest.raises(LayerError, match=match):
        index(make_tar(members))


def test_symlink_targets_may_point_anywhere():
    idx = index(make_tar([member("l", tarfile.SYMTYPE, linkname="../../../../etc/shadow")]))
    assert idx.entries[0].linkname == "../../../../etc/shadow"


def test_empty_name_is_rejected():
    tar = make_tar([member("", data=b"x")])
    with pytest.raises(LayerError, match=r"entry '': empty name"):
        index(tar)


def test_a_file_named_like_the_root_is_rejected():
    with pytest.raises(LayerError, match="cannot replace the layer root"):
        index(make_tar([member("./", data=b"x")]))


def test_nul_in_a_pax_path_is_rejected():
    info, data = member("x", data=b"1")
    info.pax_headers = {"path": "a\0b"}
    with pytest.raises(LayerError, match="NUL"):
        index(make_tar([(info, data)]))


def test_numbers_out_of_range_are_rejected():
    info, data = member("x", data=b"1")
    info.pax_headers = {"uid": str(1 << 70)}
    with pytest.raises(LayerError, match="out of range"):
        index(make_tar([(info, data)]))


def test_unknown_entry_type_is_rejected():
    with pytest.raises(LayerError, match="unsupported tar entry type"):
        index(make_tar([member("odd", b"Z")]))


# -- broken streams --------------------------------------------------------------------------


SAMPLE = make_tar([member("a", data=os.urandom(200_000)), member("b", data=b"bee")])


def test_truncated_gzip():
    blob = gzip.compress(SAMPLE)[:-5000]
    with pytest.raises(LayerError, match=rf"^layer {short(blob)}: truncated gzip stream$"):
        index(blob, OCI_LAYER_GZIP)


def test_truncated_gzip_trailer_fails_the_crc_and_size_check():
    blob = gzip.compress(SAMPLE)[:-2]
    with pytest.raises(LayerError, match="truncated gzip stream"):
        index(blob, OCI_LAYER_GZIP)
    bad_crc = bytearray(gzip.compress(SAMPLE))
    bad_crc[-8] ^= 0xFF
    with pytest.raises(LayerError, match="corrupt gzip stream"):
        index(bytes(bad_crc), OCI_LAYER_GZIP)


def test_garbage_after_gzip_stream():
    blob = gzip.compress(SAMPLE) + b"GARBAGE"
    with pytest.raises(LayerError, match="garbage after the end of the gzip stream"):
        index(blob, OCI_LAYER_GZIP)


def test_not_gzip_at_all():
    with pytest.raises(LayerError, match="corrupt gzip stream"):
        index(SAMPLE, OCI_LAYER_GZIP)


def test_truncated_and_corrupt_zstd():
    blob = zstandard.ZstdCompressor().compress(SAMPLE)
    with pytest.raises(LayerError, match="truncated zstd stream"):
        index(blob[: len(blob) // 2], OCI_LAYER_ZSTD)
    with pytest.raises(LayerError, match="corrupt zstd stream"):
        index(blob + b"not a frame", OCI_LAYER_ZSTD)


def test_garbage_after_a_tar_header():
    first = make_tar([member("a", data=b"hello")])[:1024]  # header + one data block
    tar = first + os.urandom(512) + b"\0" * 1024
    with pytest.raises(
        LayerError, match=r"^layer sha256:[0-9a-f]{12}: invalid tar header at offset 1024: "
    ):
        index(tar)


def test_bad_checksum_in_a_later_header():
    tar = bytearray(make_tar([member("a", data=b"hello"), member("b", data=b"bee")]))
    tar[1024 + 100] ^= 0x01  # the mode field of the second header
    with pytest.raises(LayerError, match=r"invalid tar header at offset 1024: bad checksum"):
        index(bytes(tar))


def test_bad_checksum_in_first_header():
    tar = bytearray(SAMPLE)
    tar[0] ^= 0x01
    with pytest.raises(LayerError, match="invalid tar stream"):
        index(bytes(tar))


def test_tar_truncated_inside_file_data():
    tar = SAMPLE[:100_000]
    with pytest.raises(LayerError, match=r"entry 'a': truncated file data"):
        index(tar)


def test_random_bytes_are_not_a_tar():
    with pytest.raises(LayerError):
        index(os.urandom(5000))


# -- limits ----------------------------------------------------------------------------------


def zeros_bomb(size: int) -> bytes:
    """A gzip'd tar holding one file of ``size`` zero bytes, made without holding it in memory."""
    info = tarfile.TarInfo("zeros")
    info.size = size
    c = zlib.compressobj(9, zlib.DEFLATED, 31)
    parts = [c.compress(info.tobuf(tarfile.PAX_FORMAT))]
    block = bytes(1 << 20)
    for _ in range(size // len(block)):
        parts.append(c.compress(block))
    parts.append(c.compress(b"\0" * 1024))
    parts.append(c.flush())
    return b"".join(parts)


def test_decompression_bomb_stops_at_the_limit():
    blob = zeros_bomb(100 << 20)
    assert len(blob) < 200_000
    seen = []
    limits = Limits(max_uncompressed=10 << 20)
    with pytest.raises(LayerError, match=rf"^layer {short(blob)}: uncompressed size exceeds limit"):
        index(blob, OCI_LAYER_GZIP, limits=limits, on_chunk=lambda d, data: seen.append(len(data)))
    assert sum(seen) <= 10 << 20  # stopped early: nothing past the limit was handed on


def test_compression_ratio_limit():
    blob = zeros_bomb(20 << 20)
    with pytest.raises(LayerError, match="compression ratio exceeds limit"):
        index(blob, OCI_LAYER_GZIP, limits=Limits(max_ratio=50, ratio_grace=1 << 20))


def test_entry_count_limit():
    tar = make_tar([member(f"f{i}") for i in range(5)])
    with pytest.raises(LayerError, match="more than 3 entries"):
        index(tar, limits=Limits(max_entries=3))


def test_huge_pax_record_is_refused_before_it_is_read():
    info, data = member("x", data=b"1")
    info.pax_headers = {"comment": "c" * 100_000}
    with pytest.raises(LayerError, match=r"tar metadata record of \d+ bytes exceeds the limit"):
        index(make_tar([(info, data)]), limits=Limits(max_header=65536), chunk_size=4096)
