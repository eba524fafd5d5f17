"""zstd:chunked layers: their table of contents, read with one range request.

A zstd:chunked blob (containers/storage ``pkg/chunked/compressor``) is a
valid tar+zstd stream made of many zstd frames (see `fusesnap.index.toc`),
followed by skippable frames the decoder ignores::

    [frame: tar header(s)] [frame(s): file data, one per chunk] ... [frame: tar end]
    [skippable: zstd(TOC JSON)] ([skippable: tar-split], newer) [skippable: footer]

The layer descriptor's annotations locate and vouch for the TOC (the
"manifest"), so no footer needs reading:

    io.github.containers.zstd-chunked.manifest-position   "offset:length:ulength:1"
    io.github.containers.zstd-chunked.manifest-checksum   sha256 of the *compressed* TOC

Older producers, such as Debian 12's skopeo 1.9 (containers/storage 1.43)
and ctr-remote 0.12 ``--zstdchunked``, write the same keys under
``io.containers.zstd-chunked.*``; both spellings are read. ``offset`` points
just past the 8-byte skippable-frame header; `fusesnap.pull.read_zstdchunked_index` fetches
that header with the TOC (to know where file data ends) and nothing else. The
tar-split frame of newer producers is not needed and not read. ctr-remote also
writes eStargz's ``containerd.io/snapshot/stargz/toc.digest`` (sha256 of the
TOC JSON) and landmark files; both are honoured.

The manifest is verified by its digest, so the checksum annotation makes the
TOC, and through it every chunk digest, trustworthy. Without one the layer is
still read and a warning logged. The diff ID is not verified here (that means
reading the whole blob): the caller passes the one from the image config.
"""

from __future__ import annotations

import logging

import zstandard

from fusesnap.digest import Digest
from fusesnap.errors import InvalidDigestError, LayerError
from fusesnap.index.estargz import TOC_DIGEST_ANNOTATION, UNCOMPRESSED_SIZE_ANNOTATION
from fusesnap.index.toc import (
    TocBlob,
    load_toc_json,
)
from fusesnap.index.tocrows import EncodedToc, encode_toc
from fusesnap.oci import Descriptor

__all__ = [
    "CHECKSUM_ANNOTATIONS",
    "POSITION_ANNOTATIONS",
    "SKIPPABLE_HEADER",
    "encode_toc_frame",
    "is_skippable_header",
    "is_zstdchunked",
    "toc_position",
]

log = logging.getLogger(__name__)

POSITION_ANNOTATIONS = (
    "io.github.containers.zstd-chunked.manifest-position",
    "io.containers.zstd-chunked.manifest-position",
)
CHECKSUM_ANNOTATIONS = (
    "io.github.containers.zstd-chunked.manifest-checksum",
    "io.containers.zstd-chunked.manifest-checksum",
)
_MANIFEST_TYPE_CRFS = 1
SKIPPABLE_HEADER = 8  # magic 0x184D2A5? and a 32-bit little-endian size


def is_zstdchunked(layer: Descriptor) -> bool:
    """True if ``layer`` says where its zstd:chunked TOC is."""
    return any(k in layer.annotations for k in POSITION_ANNOTATIONS)


def _annotation(layer: Descriptor, keys: tuple[str, ...]) -> tuple[str, str] | None:
    for key in keys:
        if key in layer.annotations:
            return key, layer.annotations[key]
    return None


def toc_position(layer: Descriptor, max_toc: int, what: str) -> tuple[int, int, int]:
    found = _annotation(layer, POSITION_ANNOTATIONS)
    if found is None:
        raise LayerError(f"{what}: not zstd:chunked (no manifest-position annotation)")
    key, text = found
    parts = text.split(":")
    if len(parts) != 4 or not all(p.isdigit() and len(p) < 20 for p in parts):
        raise LayerError(f"{what}: {key} {text!r} is not offset:length:ulength:type")
    offset, length, ulength, kind = map(int, parts)
    if kind != _MANIFEST_TYPE_CRFS:
        raise LayerError(f"{what}: unsupported zstd:chunked manifest type {kind}")
    if length <= 0 or ulength <= 0 or offset + length > layer.size:
        raise LayerError(f"{what}: {key} {text!r} points outside the blob")
    if length > max_toc or ulength > max_toc:
        raise LayerError(
            f"{what}: zstd:chunked TOC of {max(length, ulength)} bytes "
            f"exceeds the limit of {max_toc}"
        )
    return offset, length, ulength


def is_skippable_header(head: bytes, length: int) -> bool:
    return (
        len(head) == SKIPPABLE_HEADER
        and 0x50 <= head[0] <= 0x5F
        and head[1:4] == b"\x2a\x4d\x18"
        and int.from_bytes(head[4:8], "little") >= length
    )


def _verify(layer: Descriptor, keys: tuple[str, ...], data: bytes, what: str) -> bool:
    found = _annotation(layer, keys)
    if found is None:
        return False
    key, text = found
    try:
        digest = Digest(text)
    except InvalidDigestError as exc:
        raise LayerError(f"{what}: {key}: {exc}") from None
    digest.verify(data, what=f"{what}: zstd:chunked TOC")
    return True


def encode_toc_frame(
    frame: bytes, ulength: int, data_end: int, layer: Descriptor, diff_id: Digest
) -> EncodedToc:
    what = f"layer {layer.digest.short}"
    checked = _verify(layer, CHECKSUM_ANNOTATIONS, frame, what)
    try:
        toc = zstandard.ZstdDecompressor().decompress(frame, max_output_size=ulength)
    except zstandard.ZstdError as exc:
        raise LayerError(f"{what}: corrupt zstd:chunked TOC ({exc})") from None
    if len(toc) != ulength:
        raise LayerError(f"{what}: zstd:chunked TOC is {len(toc)} bytes, not {ulength}")
    checked = _verify(layer, (TOC_DIGEST_ANNOTATION,), toc, what) or checked
    if not checked:
        log.warning(
            "%s: no manifest-checksum annotation: its zstd:chunked TOC is not verified", what
        )
    size = layer.annotations.get(UNCOMPRESSED_SIZE_ANNOTATION, "")
    blob = TocBlob(
        layer,
        diff_id,
        "zstd:chunked",
        data_end=data_end,
        uncompressed_size=int(size) if size.isdigit() and len(size) < 20 else 0,
    )
    return encode_toc(load_toc_json(toc, what=what), blob, what=what)
