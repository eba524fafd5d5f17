"""eStargz layers: their table of contents, read with two range requests.

An eStargz blob is a valid tar.gz made of many gzip members (see
`fusesnap.index.toc` for what that buys)::

    [member: tar headers + file data] ... [member: tar of stargz.index.json] [footer]

The footer is an empty gzip member whose FEXTRA field carries the offset of
the TOC member (stargz-snapshotter ``estargz/types.go``, ``docs/estargz.md``):

    eStargz, 51 bytes   10 gzip header | XLEN=26 | "SG" | LEN=22 | "%016xSTARGZ" % offset
                        | 5-byte empty stored block | 8 bytes CRC32, ISIZE
    stargz, 47 bytes    the same without the "SG" LEN subfield header (XLEN=22)

`fusesnap.pull.read_estargz_index` fetches the last 51 bytes (which hold either footer), then
the TOC member ``[offset, size - footer)``: footer and TOC only, never file
data. The TOC member inflates (bounded by ``max_toc``) to a tar whose only
entry is ``stargz.index.json``; its sha256 is checked against the layer
annotation ``containerd.io/snapshot/stargz/toc.digest`` when the manifest has
one (ctr-remote always writes it). The manifest is verified by its digest, so
that annotation makes the whole TOC, and through it every ``chunkDigest``,
trustworthy. A layer without the annotation is still read (a warning is
logged): its chunks are then checked only against a TOC that nothing vouches
for.

The diff ID is *not* verified here: computing it means reading and inflating
the whole blob, so the caller passes the one from the image config.
"""

from __future__ import annotations

import io
import logging
import re
import tarfile
import zlib

from fusesnap.digest import Digest
from fusesnap.errors import InvalidDigestError, LayerError
from fusesnap.index.toc import (
    TocBlob,
    load_toc_json,
)
from fusesnap.index.tocrows import EncodedToc, encode_toc
from fusesnap.oci import Descriptor

__all__ = [
    "FOOTER_SIZE",
    "LEGACY_FOOTER_SIZE",
    "TOC_DIGEST_ANNOTATION",
    "TOC_TAR_NAME",
    "UNCOMPRESSED_SIZE_ANNOTATION",
    "encode_toc_member",
    "parse_footer",
]

log = logging.getLogger(__name__)

TOC_DIGEST_ANNOTATION = "containerd.io/snapshot/stargz/toc.digest"
UNCOMPRESSED_SIZE_ANNOTATION = "io.containers.estargz.uncompressed-size"
TOC_TAR_NAME = "stargz.index.json"
FOOTER_SIZE = 51
LEGACY_FOOTER_SIZE = 47

_PAYLOAD = re.compile(rb"^([0-9a-fA-F]{16})STARGZ$")
_SUBFIELD = b"SG\x16\x00"  # SI1 SI2, LEN=22 little-endian
# The tar around the TOC JSON: its header(s), padding and the end-of-archive blocks.
_TAR_SLACK = 64 << 10


def parse_footer(tail: bytes, *, what: str = "layer") -> tuple[int, int]:
    """``(toc_offset, footer_size)`` from the last bytes of a blob (at least 47, at most 51
    are looked at): an eStargz footer first, then the legacy stargz one.

    Raise `LayerError` if neither is there (not eStargz, or a truncated blob).
    """
    for size, xlen, prefix in ((FOOTER_SIZE, 26, _SUBFIELD), (LEGACY_FOOTER_SIZE, 22, b"")):
        footer = tail[-size:]
        if len(footer) != size or footer[:4] != b"\x1f\x8b\x08\x04":  # gzip, deflate, FEXTRA
            continue
        if int.from_bytes(footer[10:12], "little") != xlen:
            continue
        extra = footer[12 : 12 + xlen]
        m = _PAYLOAD.match(extra[len(prefix) :])
        if not extra.startswith(prefix) or m is None or not _is_empty_member(footer):
            continue
        return int(m.group(1), 16), size
    raise LayerError(f"{what}: no eStargz footer at the end of the blob (not eStargz, or cut)")


def _is_empty_member(footer: bytes) -> bool:
    d = zlib.decompressobj(31)
    try:
        return d.decompress(footer) == b"" and d.eof and not d.unused_data
    except zlib.error:
        return False


def encode_toc_member(
    member: bytes, toc_offset: int, layer: Descriptor, diff_id: Digest, max_toc: int
) -> EncodedToc:
    what = f"layer {layer.digest.short}"
    toc = _toc_json(member, max_toc, what)
    want = layer.annotations.get(TOC_DIGEST_ANNOTATION)
    if want is None:
        log.warning(
            "%s: no %s annotation: its eStargz TOC is not verified", what, TOC_DIGEST_ANNOTATION
        )
    else:
        try:
            expected = Digest(want)
        except InvalidDigestError as exc:
            raise LayerError(f"{what}: {TOC_DIGEST_ANNOTATION}: {exc}") from None
        expected.verify(toc, what=f"{what}: eStargz TOC")
    blob = TocBlob(
        layer, diff_id, "estargz", data_end=toc_offset, uncompressed_size=_size_annotation(layer)
    )
    return encode_toc(load_toc_json(toc, what=what), blob, what=what)


def _toc_json(member: bytes, max_toc: int, what: str) -> bytes:
    """The bytes of ``stargz.index.json`` in the TOC gzip member."""
    d = zlib.decompressobj(31)
    try:
        tar = d.decompress(member, max_toc + _TAR_SLACK)
    except zlib.error as exc:
        raise LayerError(f"{what}: corrupt eStargz TOC member ({exc})") from None
    if d.unconsumed_tail:
        raise LayerError(f"{what}: eStargz TOC inflates to more than {max_toc} bytes")
    if not d.eof:
        raise LayerError(f"{what}: eStargz TOC member is truncated")
    try:
        with tarfile.open(fileobj=io.BytesIO(tar), mode="r:") as tf:
            info = tf.next()
            if info is None or info.name != TOC_TAR_NAME or not info.isfile():
                name = None if info is None else info.name
                raise LayerError(f"{what}: eStargz TOC tar holds {name!r}, not {TOC_TAR_NAME}")
            if info.size > max_toc:
                raise LayerError(f"{what}: eStargz TOC of {info.size} bytes exceeds {max_toc}")
            f = tf.extractfile(info)
            data = f.read() if f is not None else b""
    except (tarfile.TarError, EOFError) as exc:
        raise LayerError(f"{what}: eStargz TOC is not a valid tar ({exc})") from None
    if len(data) != info.size:
        raise LayerError(f"{what}: eStargz TOC is truncated")
    return data


def _size_annotation(layer: Descriptor) -> int:
    text = layer.annotations.get(UNCOMPRESSED_SIZE_ANNOTATION, "")
    return int(text) if text.isdigit() and len(text) < 20 else 0
