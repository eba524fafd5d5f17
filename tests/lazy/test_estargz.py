"""eStargz TOC reading: footers, verification, limits and hostile TOCs.

The blobs are ctr-remote's (`tools.images.estargz`), read from the registry's storage and
served by an in-memory ``fetch``; TOC-level edge cases use hand-written TOC entries.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import itertools
import json
import logging
import os
import struct
import tarfile
from typing import Any

import pytest

from fusesnap import oci
from fusesnap.digest import Digest
from fusesnap.errors import DigestMismatchError, LayerError
from fusesnap.index import ChunkRef, EntryType, LayerIndex, decode, encode
from fusesnap.index.estargz import (
    FOOTER_SIZE,
    LEGACY_FOOTER_SIZE,
    TOC_DIGEST_ANNOTATION,
    parse_footer,
)
from fusesnap.index.toc import TocBlob, extract_chunk, load_toc_json, toc_items
from fusesnap.index.tocrows import encode_toc, index_from_toc
from fusesnap.lazy import AccessProfile
from fusesnap.lazy import profile as profiles
from fusesnap.oci import OCI_LAYER_GZIP, Descriptor
from fusesnap.pull import pull, read_estargz_index
from fusesnap.pull.artifact import LAYER_INDEX_MEDIA_TYPE, PushedArtifact, push_index_artifact
from fusesnap.store import open_store
from tests.lazy.conftest import REF, Connect
from tests.lazy.fakeregistry import FakeRegistry
from tests.lazy.layerblob import LayerBlob as Blob
from tools.images.push import inspect_raw

DIFF_ID = Digest("sha256:" + "0" * 64)


@pytest.fixture(scope="module")
def esgz(registry) -> Blob:
    """ctr-remote's eStargz of busybox, 256 KiB chunks: one layer, bytes and descriptor."""
    if os.geteuid() != 0:
        pytest.skip("ctr-remote needs a containerd, which needs root")
    from tools.images.estargz import build_and_push_estargz
    from tools.testenv import require

    require("containerd", "ctr-remote", "skopeo")
    img = build_and_push_estargz("busybox", registry, chunk_size=256 << 10)
    manifest = json.loads(inspect_raw(f"{img.host}/{img.repo}@{img.manifest_digest}"))
    (layer,) = manifest["layers"]
    desc = Descriptor.from_dict(layer, where="test")
    return Blob(registry.blob_path(layer["digest"]).read_bytes(), desc)


def toc_annotation(blob: Blob) -> str:
    return blob.layer.annotations[TOC_DIGEST_ANNOTATION]


# -- real blobs ---------------------------------------------------------------------------------


async def test_reads_footer_and_toc_only(esgz: Blob) -> None:
    blob = esgz.with_()
    idx = await read_estargz_index(blob.fetch, layer=blob.layer, diff_id=DIFF_ID)
    assert blob.requests[0] == (len(blob.data) - FOOTER_SIZE, FOOTER_SIZE)
    toc_offset, _ = parse_footer(blob.data[-FOOTER_SIZE:])
    assert blob.requests[1] == (toc_offset, len(blob.data) - FOOTER_SIZE - toc_offset)
    assert idx.compression == "estargz"
    assert idx.source == "estargz"
    assert idx.uncompressed_size > len(blob.data)  # io.containers.estargz.uncompressed-size
    assert ".no.prefetch.landmark" not in idx.by_path
    assert idx.prefetch == ()
    busybox = idx.by_path["bin/busybox"]
    assert busybox.size > 1 << 20
    assert len(busybox.chunks) == -(-busybox.size // (256 << 10))
    content = b"".join(
        extract_chunk("estargz", blob.data[c.coffset : c.coffset + c.clength], c)
        for c in busybox.chunks
    )
    assert len(content) == busybox.size
    # Every chunk's compressed range starts a gzip member, and the ranges do not overlap.
    ranges = sorted((c.coffset, c.clength) for e in idx.entries for c in e.chunks)
    for (a, n), (b, _) in itertools.pairwise(ranges):
        assert a + n <= b
    assert all(blob.data[a : a + 2] == b"\x1f\x8b" for a, _ in ranges)


async def test_legacy_stargz_footer(esgz: Blob) -> None:
    toc_offset, _ = parse_footer(esgz.data[-FOOTER_SIZE:])
    legacy = (b"\x1f\x8b\x08\x04\x00\x00\x00\x00\x00\xff" + struct.pack("<H", 22)
              + b"%016xSTARGZ" % toc_offset + b"\x01\x00\x00\xff\xff" + bytes(8))  # fmt: skip
    assert len(legacy) == LEGACY_FOOTER_SIZE
    assert gzip.decompress(legacy) == b""  # a valid, empty gzip member
    blob = esgz.with_(esgz.data[:-FOOTER_SIZE] + legacy)
    assert parse_footer(blob.data[-FOOTER_SIZE:]) == (toc_offset, LEGACY_FOOTER_SIZE)
    idx = await read_estargz_index(blob.fetch, layer=blob.layer, diff_id=DIFF_ID)
    new = await read_estargz_index(esgz.with_().fetch, layer=esgz.layer, diff_id=DIFF_ID)
    assert idx.entries == new.entries
    assert idx.compressed_size == len(esgz.data) - (FOOTER_SIZE - LEGACY_FOOTER_SIZE)


@pytest.mark.parametrize("cut", [1, 10, FOOTER_SIZE, 4096])
async def test_truncated_blob_has_no_footer(esgz: Blob, cut: int) -> None:
    blob = esgz.with_(esgz.data[:-cut])
    with pytest.raises(LayerError, match="no eStargz footer"):
        await read_estargz_index(blob.fetch, layer=blob.layer, diff_id=DIFF_ID)
    assert len(blob.requests) == 1


async def test_too_small_and_plain_gzip_are_refused(esgz: Blob) -> None:
    tiny = esgz.with_(esgz.data[-40:])
    with pytest.raises(LayerError, match="too small"):
        await read_estargz_index(tiny.fetch, layer=tiny.layer, diff_id=DIFF_ID)
    plain = esgz.with_(gzip.compress(os.urandom(5000)))
    with pytest.raises(LayerError, match="no eStargz footer"):
        await read_estargz_index(plain.fetch, layer=plain.layer, diff_id=DIFF_ID)


async def test_toc_digest_mismatch(esgz: Blob) -> None:
    blob = esgz.with_(ann={TOC_DIGEST_ANNOTATION: "sha256:" + "ab" * 32})
    with pytest.raises(DigestMismatchError, match="eStargz TOC"):
        await read_estargz_index(blob.fetch, layer=blob.layer, diff_id=DIFF_ID)
    bad = esgz.with_(ann={TOC_DIGEST_ANNOTATION: "md5:zz"})
    with pytest.raises(LayerError, match=r"toc\.digest"):
        await read_estargz_index(bad.fetch, layer=bad.layer, diff_id=DIFF_ID)


async def test_toc_without_annotation_is_read_and_noted(esgz: Blob, caplog) -> None:
    blob = esgz.with_(ann={TOC_DIGEST_ANNOTATION: None})
    with caplog.at_level(logging.WARNING, logger="fusesnap.index.estargz"):
        idx = await read_estargz_index(blob.fetch, layer=blob.layer, diff_id=DIFF_ID)
    assert "not verified" in caplog.text
    assert "bin/busybox" in idx.by_path


async def test_toc_modified_in_the_blob_fails_verification(esgz: Blob) -> None:
    """A registry serving another TOC (same size) than the manifest promised."""
    toc_offset, _ = parse_footer(esgz.data[-FOOTER_SIZE:])
    member = esgz.data[toc_offset:-FOOTER_SIZE]
    tar = bytearray(gzip.decompress(member))
    at = tar.index(b'"bin/busybox"')
    tar[at + 1 : at + 4] = b"BIN"
    forged = gzip.compress(bytes(tar))
    data = esgz.data[:toc_offset] + forged + esgz.data[-FOOTER_SIZE:]
    blob = esgz.with_(data)
    with pytest.raises(DigestMismatchError):
        await read_estargz_index(blob.fetch, layer=blob.layer, diff_id=DIFF_ID)


async def test_toc_too_large(esgz: Blob) -> None:
    toc_offset, _ = parse_footer(esgz.data[-FOOTER_SIZE:])
    member_size = len(esgz.data) - FOOTER_SIZE - toc_offset
    blob = esgz.with_()
    with pytest.raises(LayerError, match="exceeds the limit"):
        await read_estargz_index(blob.fetch, layer=blob.layer, diff_id=DIFF_ID,
                                 max_toc=member_size - 1)  # fmt: skip
    assert len(blob.requests) == 1  # the footer only: a huge TOC is never fetched
    # Small compressed, big inflated (a gzip bomb in the TOC member's place).
    blob = esgz.with_()
    with pytest.raises(LayerError, match=r"inflates to more than|exceeds"):
        await read_estargz_index(blob.fetch, layer=blob.layer, diff_id=DIFF_ID,
                                 max_toc=member_size)  # fmt: skip


async def test_footer_pointing_outside_the_blob(esgz: Blob) -> None:
    footer = bytearray(esgz.data[-FOOTER_SIZE:])
    footer[16:32] = b"%016x" % (len(esgz.data) + 5)
    blob = esgz.with_(esgz.data[:-FOOTER_SIZE] + bytes(footer))
    with pytest.raises(LayerError, match="outside the blob"):
        await read_estargz_index(blob.fetch, layer=blob.layer, diff_id=DIFF_ID)


async def test_chunk_that_does_not_hash_to_its_digest_is_detected(esgz: Blob) -> None:
    idx = await read_estargz_index(esgz.with_().fetch, layer=esgz.layer, diff_id=DIFF_ID)
    c = idx.by_path["etc/passwd"].chunks[0]
    good = esgz.data[c.coffset : c.coffset + c.clength]
    assert extract_chunk("estargz", good, c) == gzip.decompress(good)[: c.length]
    other = gzip.compress(b"root:x:0:0:evil:/root:/bin/sh\n".ljust(c.length, b"#"))
    with pytest.raises(DigestMismatchError):
        extract_chunk("estargz", other, c)
    flipped = bytearray(good)
    flipped[len(flipped) // 2] ^= 0xFF
    with pytest.raises((DigestMismatchError, LayerError)):
        extract_chunk("estargz", bytes(flipped), c)
    with pytest.raises((DigestMismatchError, LayerError)):
        extract_chunk("estargz", good[: len(good) // 2], c)  # a truncated member


# -- TOC entries (hand-written) ------------------------------------------------------------------


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


LAYER = Descriptor(OCI_LAYER_GZIP, Digest("sha256:" + "1" * 64), 10_000)


def toc_index(entries: list[Any], data_end: int = 9_000) -> LayerIndex:
    blob = TocBlob(LAYER, DIFF_ID, "estargz", data_end=data_end)
    return index_from_toc(toc_items(entries, what="test"), blob, what="test")


def test_inner_offsets_share_one_member() -> None:
    """Newer eStargz writers pack small files into one gzip member (innerOffset)."""
    member = gzip.compress(b"aaaa" + b"bbbbbb")
    entries = [
        {"name": "./", "type": "dir", "mode": 0o40700, "uid": 3},
        {"name": "a", "type": "reg", "size": 4, "offset": 100, "innerOffset": 0,
         "chunkDigest": sha(b"aaaa"), "userName": "bob", "uid": 7},
        {"name": "b", "type": "reg", "size": 6, "offset": 100, "innerOffset": 4,
         "digest": sha(b"bbbbbb"), "uid": 7, "modtime": "2024-02-29T12:00:01.5+01:00"},
        {"name": "c", "type": "reg", "size": 3, "offset": 100 + len(member),
         "chunkDigest": sha(b"ccc")},
    ]  # fmt: skip
    idx = toc_index(entries)
    a, b, c = (idx.by_path[n].chunks[0] for n in "abc")
    assert (a.coffset, a.clength, a.inner) == (100, len(member), 0)
    assert (b.coffset, b.clength, b.inner) == (100, len(member), 4)
    assert (c.coffset, c.clength) == (100 + len(member), 9_000 - 100 - len(member))
    assert extract_chunk("estargz", member, b) == b"bbbbbb"
    assert idx.root is not None
    assert idx.root.mode == 0o700
    assert idx.root.uid == 3
    assert idx.by_path["b"].uname == "bob"  # userName is written once per uid
    assert (idx.by_path["b"].mtime, idx.by_path["b"].mtime_nsec) == (1709204401, 500_000_000)


def test_chunks_follow_their_file() -> None:
    entries = [
        {"name": "big", "type": "reg", "size": 10, "offset": 10, "chunkSize": 4,
         "chunkDigest": sha(b"0123")},
        {"type": "chunk", "offset": 50, "chunkOffset": 4, "chunkSize": 4,
         "chunkDigest": sha(b"4567")},
        {"type": "chunk", "offset": 80, "chunkOffset": 8, "chunkDigest": sha(b"89")},
        {"name": "h", "type": "hardlink", "linkName": "/big"},
        {"name": "s", "type": "symlink", "linkName": "../../x"},
        {"name": "dev/null", "type": "char", "devMajor": 1, "devMinor": 3, "mode": 0o20666},
        {"name": "x", "type": "dir", "xattrs": {"user.k": "AP8="}},
    ]  # fmt: skip
    idx = toc_index(entries, data_end=200)
    assert [(c.offset, c.length, c.coffset, c.clength) for c in idx.by_path["big"].chunks] == [
        (0, 4, 10, 40), (4, 4, 50, 30), (8, 2, 80, 120)]  # fmt: skip
    assert idx.by_path["h"].linkname == "big"
    assert idx.by_path["h"].type is EntryType.HARDLINK
    assert idx.by_path["s"].linkname == "../../x"
    assert (idx.by_path["dev/null"].devmajor, idx.by_path["dev/null"].mode) == (1, 0o666)
    assert idx.by_path["x"].xattrs == {"user.k": b"\x00\xff"}
    assert idx.chunk_size == 4


@pytest.mark.parametrize(
    ("entries", "match"),
    [
        ([{"type": "chunk", "offset": 5, "chunkOffset": 0}], "chunk without a regular file"),
        ([{"name": "../x", "type": "dir"}], "escapes"),
        ([{"name": "x", "type": "sock"}], "unsupported type"),
        ([{"name": "x", "type": "reg", "size": 3, "offset": 5}], "no sha256"),
        ([{"name": "x", "type": "reg", "size": 3, "chunkDigest": sha(b"abc")}], "no offset"),
        ([{"name": "x", "type": "reg", "size": 3, "offset": 9_500, "chunkDigest": sha(b"a")}],
         "not an integer in range"),
        ([{"name": "x", "type": "reg", "size": 8, "offset": 5, "chunkSize": 4,
           "chunkDigest": sha(b"a")},
          {"type": "chunk", "offset": 50, "chunkOffset": 5, "chunkDigest": sha(b"b")}],
         "not contiguous"),
        ([{"name": "x", "type": "reg", "size": 8, "offset": 5, "chunkSize": 4,
           "chunkDigest": sha(b"a")}], "do not add up"),
        ([{"name": "x", "type": "dir", "xattrs": {"user.a": "not base64!"}}], "bad base64"),
        ([{"name": "x", "type": "dir", "modtime": "yesterday"}], "RFC 3339"),
        ([{"name": "x", "type": "dir", "uid": -1}], "uid"),
        ([{"name": "x", "type": "dir", "mode": "0755"}], "mode"),
        ([{"name": "d", "type": "dir"}, {"name": "h", "type": "hardlink", "linkName": "d"}],
         "not a file"),
        ([{"name": "h", "type": "hardlink", "linkName": "../etc/shadow"}], "escapes"),
        ([{"name": "./", "type": "reg"}], "cannot replace the layer root"),
        (["junk"], "not an object"),
    ],
)  # fmt: skip
def test_hostile_toc_entries_are_refused(entries: list[Any], match: str) -> None:
    with pytest.raises(LayerError, match=match):
        toc_index(entries)


def test_toc_rows_are_what_the_codec_writes_for_their_records() -> None:
    """A TOC goes straight to encoded rows: encoding the records they decode to gives the
    same bytes, and the counts a layer record keeps are the records'."""
    entries = [
        {"name": "./", "type": "dir", "mode": 0o40755, "xattrs": {"user.r": "AQ=="}},
        {"name": "usr/", "type": "dir", "uid": 0, "userName": "root", "groupName": "root"},
        {"name": "usr/big", "type": "reg", "size": 10, "offset": 10, "chunkSize": 4,
         "chunkDigest": sha(b"0123"), "modtime": "2024-01-02T03:04:05Z"},
        {"type": "chunk", "offset": 50, "chunkOffset": 4, "chunkSize": 4,
         "chunkDigest": sha(b"4567")},
        {"type": "chunk", "offset": 80, "chunkOffset": 8, "chunkDigest": sha(b"89")},
        {"name": "usr/odd", "type": "reg", "size": 7, "offset": 90, "chunkSize": 3,
         "chunkDigest": sha(b"abc"), "uid": 5, "userName": "u5"},
        {"name": "usr/odd", "type": "chunk", "offset": 95, "chunkOffset": 3,
         "chunkDigest": sha(b"defg")},
        {"name": "usr/sm\u00e5", "type": "reg", "size": 2, "offset": 100, "innerOffset": 3,
         "digest": sha(b"hi"), "uid": 5},
        {"name": ".prefetch.landmark", "type": "reg", "size": 1, "offset": 120,
         "chunkDigest": sha(b"\x0f")},
        {"name": "usr/hard", "type": "hardlink", "linkName": "usr/big"},
        {"name": "usr/s", "type": "symlink", "linkName": "big", "modtime": "2024-01-02T03:04:05Z"},
        {"name": "dev/null", "type": "char", "devMajor": 1, "devMinor": 3, "mode": 0o20666},
        {"name": "usr/odd", "type": "fifo"},
    ]  # fmt: skip
    blob = TocBlob(LAYER, DIFF_ID, "estargz", data_end=200, uncompressed_size=999)
    got = encode_toc(toc_items(entries, what="test"), blob, what="test")
    idx = got.index()
    assert encode(idx) == got.data
    assert got.entry_count == len(idx.entries) == 8
    assert got.chunk_digests == idx.chunk_digests()
    assert len(got.chunk_digests) == 6  # the landmark's is not the layer's
    assert (got.diff_id, got.uncompressed_size) == (DIFF_ID, 999)
    assert idx.prefetch == ("usr/big", "usr/odd", "usr/små")
    assert [c.length for c in idx.entries[2].chunks] == [3, 4]  # lengths kept: not the split
    assert idx.by_path["usr/odd"].type is EntryType.FIFO  # the later entry of a path wins
    assert idx.by_path["usr/små"].uname == "u5"


def test_toc_field_types_are_checked_as_it_is_decoded() -> None:
    def doc(*entries: dict[str, Any], version: Any = 1) -> bytes:
        return json.dumps({"version": version, "entries": list(entries)}).encode()

    dir_a = {"name": "a", "type": "dir"}
    with pytest.raises(LayerError, match=r"TOC entry 1: uid: expected `int"):
        load_toc_json(doc(dir_a, {**dir_a, "uid": "0"}), what="t")
    with pytest.raises(LayerError, match=r"TOC entry 0: mode: expected `int"):
        load_toc_json(doc({**dir_a, "mode": -1}), what="t")
    with pytest.raises(LayerError, match=r"TOC entry 0: name: expected `str"):
        load_toc_json(doc({**dir_a, "name": 7}), what="t")
    with pytest.raises(LayerError, match="entry 0: not an object"):
        load_toc_json(doc("junk"), what="t")  # type: ignore[arg-type]
    with pytest.raises(LayerError, match="unsupported TOC version True"):
        load_toc_json(doc(dir_a, version=True), what="t")
    with pytest.raises(LayerError, match="not an object with an entries list"):
        load_toc_json(b'{"version": 1}', what="t")
    with pytest.raises(LayerError, match="not valid JSON"):
        load_toc_json(b'{"version": 1, "entries": [', what="t")
    # null, which no producer writes, reads as an absent field does
    items = load_toc_json(doc({**dir_a, "uid": None, "xattrs": None, "modtime": None}), what="t")
    idx = index_from_toc(items, TocBlob(LAYER, DIFF_ID, "estargz", data_end=9), what="t")
    assert (idx.entries[0].uid, idx.entries[0].xattrs, idx.entries[0].mtime) == (0, {}, 0)


def test_landmarks_are_hidden_and_mark_the_prefetch_set() -> None:
    one = {"type": "reg", "size": 1, "chunkDigest": sha(b"\x0f")}
    entries = [
        {"name": "etc/", "type": "dir"},
        {"name": "etc/a", "type": "reg", "size": 1, "offset": 10, "chunkDigest": sha(b"a")},
        {"name": "etc/empty", "type": "reg"},
        {"name": "bin/x", "type": "reg", "size": 1, "offset": 20, "chunkDigest": sha(b"x")},
        {**one, "name": ".prefetch.landmark", "offset": 30},
        {"name": "later", "type": "reg", "size": 1, "offset": 40, "chunkDigest": sha(b"l")},
    ]  # fmt: skip
    idx = toc_index(entries)
    assert idx.prefetch == ("etc/a", "bin/x")
    assert [e.path for e in idx.entries] == ["etc", "etc/a", "etc/empty", "bin/x", "later"]
    # The landmark's member still bounds the file before it.
    assert idx.by_path["bin/x"].chunks[0].clength == 10
    none = toc_index([{**one, "name": ".no.prefetch.landmark", "offset": 5}, *entries[:2]])
    assert none.prefetch == ()
    assert len(none.entries) == 2


def test_extract_chunk_reads_only_what_it_needs() -> None:
    ref = ChunkRef(0, 3, hashlib.sha256(b"abc").digest(), 0, 1, inner=0)
    bomb = gzip.compress(b"abc" + bytes(50 << 20))  # 50 MiB of zeros after the chunk
    assert extract_chunk("estargz", bomb, ref) == b"abc"


def footer(toc_offset: int) -> bytes:
    return (b"\x1f\x8b\x08\x04\x00\x00\x00\x00\x00\xff" + struct.pack("<H", 26) + b"SG"
            + struct.pack("<H", 22) + b"%016xSTARGZ" % toc_offset + b"\x01\x00\x00\xff\xff"
            + bytes(8))  # fmt: skip


def toc_member(toc: bytes) -> bytes:
    info = tarfile.TarInfo("stargz.index.json")
    info.size = len(toc)
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.GNU_FORMAT) as tf:
        tf.addfile(info, io.BytesIO(toc))
    return gzip.compress(out.getvalue())


async def test_toc_that_inflates_past_the_limit() -> None:
    toc = b'{"version": 1, "entries": []' + b" " * (4 << 20) + b"}"
    member = toc_member(toc)
    data = member + footer(0)
    layer = Descriptor(OCI_LAYER_GZIP, Digest.of(data), len(data),
                       annotations={TOC_DIGEST_ANNOTATION: sha(toc)})  # fmt: skip
    blob = Blob(data, layer)
    with pytest.raises(LayerError, match="inflates to more than"):
        await read_estargz_index(blob.fetch, layer=layer, diff_id=DIFF_ID, max_toc=1 << 20)
    idx = await read_estargz_index(blob.fetch, layer=layer, diff_id=DIFF_ID)  # the default cap
    assert idx.entries == ()


async def test_default_cap_refuses_a_huge_toc_without_fetching_it() -> None:
    size = (65 << 20) + FOOTER_SIZE
    tail = footer(0)
    layer = Descriptor(OCI_LAYER_GZIP, Digest("sha256:" + "2" * 64), size)
    requests = []

    async def fetch(offset: int, length: int) -> bytes:
        requests.append((offset, length))
        assert offset == size - FOOTER_SIZE
        return tail

    with pytest.raises(LayerError, match="exceeds the limit of 67108864"):
        await read_estargz_index(fetch, layer=layer, diff_id=DIFF_ID)
    assert requests == [(size - FOOTER_SIZE, FOOTER_SIZE)]


def tiny_estargz_image(
    fake: FakeRegistry, toc_digest: str | None = None, tag: str = str(REF.tag)
) -> tuple[Descriptor, Descriptor]:
    """A one-file eStargz image (``a``: b"abc") in ``fake`` under ``tag``, its manifest
    vouching for the TOC by its digest or by ``toc_digest``; (config, layer)."""
    lead, data = gzip.compress(b""), gzip.compress(b"abc")
    toc = json.dumps({"version": 1, "entries": [
        {"name": "a", "type": "reg", "size": 3, "offset": len(lead), "chunkDigest": sha(b"abc")},
    ]}).encode()  # fmt: skip
    blob = lead + data + toc_member(toc) + footer(len(lead) + len(data))
    config = fake.add_blob(json.dumps({
        "architecture": "amd64", "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [str(DIFF_ID)]},
    }).encode(), oci.OCI_CONFIG)  # fmt: skip
    layer = fake.add_blob(blob, OCI_LAYER_GZIP)
    vouched = toc_digest or sha(toc)
    described = {**layer.to_dict(), "annotations": {TOC_DIGEST_ANNOTATION: vouched}}
    doc = {"schemaVersion": 2, "mediaType": oci.OCI_MANIFEST, "config": config.to_dict(),
           "layers": [described]}  # fmt: skip
    fake.add_manifest(REF.repository, json.dumps(doc).encode(), oci.OCI_MANIFEST,
                      tags=(tag,))  # fmt: skip
    return config, dataclasses.replace(layer, annotations={TOC_DIGEST_ANNOTATION: vouched})


async def test_a_lazy_pull_reads_the_toc_beside_the_config(
    fake: FakeRegistry, connect: Connect, tmp_path
) -> None:
    """A TOC's range reads need only the manifest: they go out before the image config is
    fetched (which gives the diff ID its encoding needs), and not for a layer the store
    has indexed already."""
    config, layer = tiny_estargz_image(fake)
    seen: list[str] = []

    def note(request: Any) -> None:
        for desc, name in ((config, "config"), (layer, "toc")):
            if request.url.path.endswith(desc.digest):
                seen.append(name)

    fake.hooks.append(note)
    with open_store(tmp_path / "root") as store:
        async with connect() as client:
            got = await pull(store, client, REF, lazy=True)
            assert [o.action for o in got.outcomes] == ["estargz"]
            assert seen.index("toc") < seen.index("config"), seen
            assert seen.count("toc") == 2  # the footer, then the TOC member
            assert decode(store.layers.index(layer.digest)).by_path["a"].size == 3
            seen.clear()
            again = await pull(store, client, REF, lazy=True)
        assert [o.action for o in again.outcomes] == ["store"]
        assert "toc" not in seen


async def index_blobs(client: Any, pushed: PushedArtifact) -> set[str]:
    """The digests of the layer index blobs of index artifact ``pushed``."""
    _, body = await client.get_manifest(REF, pushed.digest)
    return {b["digest"] for b in json.loads(body)["layers"]
            if b["mediaType"] == LAYER_INDEX_MEDIA_TYPE}  # fmt: skip


def blob_gets(fake: FakeRegistry, digests: set[str]) -> int:
    """How many GETs of these blobs the fake registry saw."""
    return sum(1 for r in fake.requests
               if r.method == "GET" and r.url.path.rpartition("/")[2] in digests)  # fmt: skip


async def test_a_toc_comes_before_the_index_artifact_whose_profile_is_kept(
    fake: FakeRegistry, connect: Connect, tmp_path
) -> None:
    """A layer that promises a TOC is indexed from it: the image's index artifact gives
    its access profile, and its index blob for that layer is never fetched."""
    fake.referrers_api = False
    _, layer = tiny_estargz_image(fake)
    with open_store(tmp_path / "builder") as builder, open_store(tmp_path / "root") as store:
        async with connect() as client:
            first = await pull(builder, client, REF, lazy=True)
            index = decode(builder.layers.index(layer.digest))
            profile = AccessProfile(
                str(first.manifest.digest), ((0, bytes.fromhex(sha(b"abc")[7:])),)
            )
            pushed = await push_index_artifact(
                client, REF, first.manifest, [index], profile=profile
            )
            blobs = await index_blobs(client, pushed)
            fake.requests.clear()
            got = await pull(store, client, REF, lazy=True)
        assert [o.action for o in got.outcomes] == ["estargz"]
        assert got.artifact == pushed.digest
        assert len(blobs) == 1
        assert blob_gets(fake, blobs) == 0
        assert profiles.load(store, str(first.manifest.digest)) == profile
        assert store.layers.index(layer.digest) == builder.layers.index(layer.digest)


async def test_an_unusable_toc_sends_its_layer_to_the_index_artifact(
    fake: FakeRegistry, connect: Connect, tmp_path, caplog
) -> None:
    fake.referrers_api = False
    _, layer = tiny_estargz_image(fake, tag="good")
    with open_store(tmp_path / "builder") as builder:
        async with connect() as client:
            await pull(builder, client, dataclasses.replace(REF, tag="good"), lazy=True)
        index = decode(builder.layers.index(layer.digest))
    tiny_estargz_image(fake, toc_digest=sha(b"another TOC"))  # REF: the same blob
    with open_store(tmp_path / "root") as store:
        async with connect() as client:
            manifest = (await client.resolve(REF)).manifest
            blobs = await index_blobs(
                client, await push_index_artifact(client, REF, manifest, [index])
            )
            fake.requests.clear()
            with caplog.at_level(logging.WARNING):
                got = await pull(store, client, REF, lazy=True)
        (outcome,) = got.outcomes
        assert outcome.action == "artifact"
        assert "passed over: estargz TOC: " in outcome.text
        assert "cannot use its estargz TOC" in caplog.text
        assert blob_gets(fake, blobs) == 1
        assert decode(store.layers.index(layer.digest)).by_path["a"].size == 3
