"""zstd:chunked TOC reading on skopeo's real output: annotations (both spellings),
verification, limits, and chunks located by their zstd frames."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import pytest
import zstandard

from fusesnap.digest import Digest
from fusesnap.errors import DigestMismatchError, LayerError
from fusesnap.index import LayerIndex, decode, encode
from fusesnap.index.toc import extract_chunk
from fusesnap.index.zstdchunked import (
    CHECKSUM_ANNOTATIONS,
    POSITION_ANNOTATIONS,
    is_zstdchunked,
)
from fusesnap.oci import Descriptor
from fusesnap.pull import read_zstdchunked_index
from tests.lazy.layerblob import LayerBlob
from tools.images.catalog import LAYOUT_TAG, build_layout
from tools.images.layout import read_json_blob, resolve_tag

pytestmark = pytest.mark.requires("skopeo")

DIFF_ID = Digest("sha256:" + "0" * 64)
NEW_POSITION, OLD_POSITION = POSITION_ANNOTATIONS
NEW_CHECKSUM, OLD_CHECKSUM = CHECKSUM_ANNOTATIONS


class Blob(LayerBlob):
    async def read(self, **kw: int) -> LayerIndex:
        return await read_zstdchunked_index(self.fetch, layer=self.layer, diff_id=DIFF_ID, **kw)


def layers(name: str) -> list[Blob]:
    """skopeo's zstd:chunked conversion of catalog image ``name``, layer by layer."""
    layout = build_layout(name, compression="zstd:chunked")
    manifest: Any = read_json_blob(layout, resolve_tag(layout, LAYOUT_TAG).digest)
    out = []
    for d in manifest["layers"]:
        blob = Path(layout, "blobs", "sha256", d["digest"].split(":", 1)[1]).read_bytes()
        out.append(Blob(blob, Descriptor.from_dict(d, where="test")))
    return out


@pytest.fixture(scope="module")
def busybox() -> Blob:
    (layer,) = layers("busybox")
    return layer


def test_debian_skopeo_writes_the_older_annotation_names(busybox: Blob) -> None:
    """Debian 12's skopeo 1.9 (containers/storage 1.43): ``io.containers.zstd-chunked.*``,
    a 40-byte footer in a skippable frame (the TOC itself is found through the annotation)."""
    assert set(busybox.layer.annotations) == {OLD_POSITION, OLD_CHECKSUM}
    assert is_zstdchunked(busybox.layer)
    tail = busybox.data[-48:]
    assert tail[:4] == b"\x50\x2a\x4d\x18"
    assert int.from_bytes(tail[4:8], "little") == 40
    assert tail[-8:] == b"GnUlInUx"


async def test_one_request_for_the_toc(busybox: Blob) -> None:
    blob = busybox.with_()
    idx = await blob.read()
    offset, length = map(int, blob.layer.annotations[OLD_POSITION].split(":")[:2])
    assert blob.requests == [(offset - 8, length + 8)]  # the skippable frame header, the TOC
    assert idx.compression == idx.source == "zstd:chunked"
    assert decode(encode(idx)) == idx


async def test_every_chunk_is_its_own_frame(busybox: Blob) -> None:
    idx = await busybox.with_().read()
    busybox_bin = idx.by_path["bin/busybox"]
    assert len(busybox_bin.chunks) > 10  # containers/storage's rolling-checksum chunks
    content = bytearray()
    for c in busybox_bin.chunks:
        frame = busybox.data[c.coffset : c.coffset + c.clength]
        one = zstandard.ZstdDecompressor().decompressobj()
        assert len(one.decompress(frame)) == c.length  # exactly one frame holding the chunk
        assert one.eof
        assert not one.unused_data
        content += extract_chunk("zstd:chunked", frame, c)
    assert hashlib.sha256(content).hexdigest() == (
        "3d9f2889d6782537624a4e1a10e68a2ddd53e0ee8bac02676f27308f42ec6bf6"
    )  # the file digest
    # "zeros" chunks (runs of NUL bytes) are frames too, and the same objects as any zeros.
    zeros = [c for c in busybox_bin.chunks if c.digest == hashlib.sha256(bytes(c.length)).digest()]
    assert zeros


async def test_newer_annotation_names_are_read(busybox: Blob) -> None:
    ann = busybox.layer.annotations
    blob = busybox.with_(
        ann={
            OLD_POSITION: None,
            OLD_CHECKSUM: None,
            NEW_POSITION: ann[OLD_POSITION],
            NEW_CHECKSUM: ann[OLD_CHECKSUM],
        }
    )
    assert (await blob.read()).entries == (await busybox.with_().read()).entries


async def test_checksum_mismatch(busybox: Blob) -> None:
    blob = busybox.with_(ann={OLD_CHECKSUM: "sha256:" + "ab" * 32})
    with pytest.raises(DigestMismatchError, match="zstd:chunked TOC"):
        await blob.read()


async def test_toc_replaced_in_the_blob_fails_verification(busybox: Blob) -> None:
    offset, length, ulength = map(int, busybox.layer.annotations[OLD_POSITION].split(":")[:3])
    toc = zstandard.ZstdDecompressor().decompress(busybox.data[offset : offset + length],
                                                  max_output_size=ulength)  # fmt: skip
    forged = zstandard.ZstdCompressor(level=1).compress(toc.replace(b"etc/passwd", b"etc/PASSWD"))
    data = busybox.data[:offset] + forged + busybox.data[offset + len(forged) :]
    position = f"{offset}:{len(forged)}:{ulength}:1"
    with pytest.raises(DigestMismatchError):
        await busybox.with_(data, ann={OLD_POSITION: position}).read()


async def test_without_checksum_the_toc_is_read_and_noted(busybox: Blob, caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="fusesnap.index.zstdchunked"):
        idx = await busybox.with_(ann={OLD_CHECKSUM: None}).read()
    assert "not verified" in caplog.text
    assert "etc/passwd" in idx.by_path


@pytest.mark.parametrize(
    ("position", "match"),
    [
        (None, "no manifest-position"),
        ("1:2:3", "offset:length:ulength:type"),
        ("1:x:3:1", "offset:length:ulength:type"),
        ("100:10:10:2", "manifest type 2"),
        ("2000000000:10:10:1", "outside the blob"),
        ("100:0:10:1", "outside the blob"),
    ],
)
async def test_bad_position_annotation(busybox: Blob, position: str | None, match: str) -> None:
    blob = busybox.with_(ann={OLD_POSITION: position})
    with pytest.raises(LayerError, match=match):
        await blob.read()
    assert blob.requests == []


async def test_toc_too_large(busybox: Blob) -> None:
    blob = busybox.with_()
    with pytest.raises(LayerError, match="exceeds the limit of 4096"):
        await blob.read(max_toc=4096)  # the TOC inflates to ~18 KiB
    assert blob.requests == []
    offset, length, _ = busybox.layer.annotations[OLD_POSITION].split(":")[:3]
    lying = busybox.with_(ann={OLD_POSITION: f"{offset}:{length}:1000:1"})
    with pytest.raises(LayerError, match=r"corrupt zstd:chunked TOC|not 1000"):
        await lying.read()


async def test_truncated_toc(busybox: Blob) -> None:
    offset, length, ulength = busybox.layer.annotations[OLD_POSITION].split(":")[:3]
    blob = busybox.with_(ann={OLD_POSITION: f"{offset}:{int(length) - 9}:{ulength}:1",
                            OLD_CHECKSUM: None})  # fmt: skip
    with pytest.raises(LayerError, match=r"corrupt zstd:chunked TOC|is .* bytes"):
        await blob.read()


async def test_chunk_that_does_not_hash_to_its_digest_is_detected(busybox: Blob) -> None:
    idx = await busybox.with_().read()
    c = idx.by_path["etc/passwd"].chunks[0]
    frame = busybox.data[c.coffset : c.coffset + c.clength]
    assert extract_chunk("zstd:chunked", frame, c).startswith(b"root:")
    other = zstandard.ZstdCompressor().compress(b"root::0:0::/:/bin/sh\n".ljust(c.length, b"#"))
    with pytest.raises(DigestMismatchError):
        extract_chunk("zstd:chunked", other, c)
    with pytest.raises((DigestMismatchError, LayerError)):
        extract_chunk("zstd:chunked", frame[: len(frame) // 2], c)


async def test_multi_layer_images() -> None:
    """Whiteouts stay entries (``.wh.NAME``); empty files have no chunks; hardlinks
    keep their target."""
    _, upper = layers("crafted-whiteouts")
    top = await upper.read()
    assert {".wh.dir1", "a/.wh.gone.txt"} <= set(top.by_path)
    _, high = layers("crafted-hardlinks")
    idx = await high.read()
    assert idx.by_path["h2/lower-link"].linkname == "h/orig"
    misc = (await layers("crafted-misc")[0].read()).by_path
    assert misc["empty/e0"].size == 0
    assert misc["empty/e0"].chunks == ()


def test_toc_json_is_what_the_producer_wrote(busybox: Blob) -> None:
    """The fields this reader relies on, in skopeo 1.9's own output."""
    offset, length, ulength = map(int, busybox.layer.annotations[OLD_POSITION].split(":")[:3])
    toc = json.loads(zstandard.ZstdDecompressor().decompress(
        busybox.data[offset : offset + length], max_output_size=ulength))  # fmt: skip
    assert toc["version"] == 1
    reg = next(e for e in toc["entries"] if e["name"] == "etc/passwd")
    assert {"offset", "endOffset", "digest", "size", "mode", "modtime"} <= set(reg)
    frame = busybox.data[reg["offset"] : reg["endOffset"]]
    # The sha256 of the uncompressed file: the chunk store's name for the same bytes.
    data = zstandard.ZstdDecompressor().decompressobj().decompress(frame)
    assert reg["digest"] == Digest.of(data)
