"""What eStargz and zstd:chunked share: a JSON table of contents (its rows: `index.tocrows`).

Both formats descend from CRFS's stargz. The layer blob is a run of
compressed frames (gzip members for eStargz, zstd frames for zstd:chunked);
every regular file's data, and every chunk of a big file, starts a new frame,
so a chunk can be decompressed from its own byte range of the blob. A JSON
TOC near the end of the blob lists every tar entry (``name``, ``type``,
``mode``, ``uid``, ``gid``, ``size``, ``modtime``, ``linkName``, ``devMajor``,
``devMinor``, ``xattrs``) and, for file data, where its frame starts
(``offset``) and which part of the file it holds (``chunkOffset``,
``chunkSize``, ``chunkDigest``; eStargz also ``innerOffset``, zstd:chunked
``endOffset`` and ``digest``). A file of more than one chunk is a ``reg``
entry (the first chunk) followed by ``chunk`` entries.

Compressed extent of a chunk: from its ``offset`` to the next larger
``offset`` of any data entry in the blob, or to ``data_end`` (where the TOC
region starts). That range may hold more than the chunk (tar headers of the
next entries, or the next files when eStargz packs small files into one
member, ``innerOffset``), but it always decompresses on its own. A
zstd:chunked ``endOffset`` tightens the last chunk of a file to its frame.

Digests: ``chunkDigest`` and a file's ``digest`` are the sha256 of the
*uncompressed* bytes (checked against what ctr-remote and skopeo write in
``tests/lazy``), so these chunks are the same objects in the chunk store as
chunks of indexes built by streaming a layer.

What the TOC cannot carry: Go's JSON encoder replaces bytes that are not
UTF-8 in names with U+FFFD, and eStargz rounds ``modtime`` to seconds. The
landmark files ``.prefetch.landmark`` / ``.no.prefetch.landmark`` (eStargz,
and ctr-remote's zstd:chunked) are the producer's, not the image's: they are
hidden, and the regular files before ``.prefetch.landmark`` become
`LayerIndex.prefetch`.
"""

from __future__ import annotations

import datetime
import re
from dataclasses import dataclass
from typing import Annotated, Any

import msgspec

from fusesnap.digest import Digest
from fusesnap.errors import DigestMismatchError, LayerError
from fusesnap.index.frames import decompress_frame
from fusesnap.index.model import (
    ChunkRef,
    EntryType,
)
from fusesnap.oci import Descriptor

__all__ = [
    "ENTRY_TYPES",
    "MAX_ID",
    "MAX_TOC_SIZE",
    "NO_PREFETCH_LANDMARK",
    "PREFETCH_LANDMARK",
    "TocBlob",
    "TocItem",
    "extract_chunk",
    "load_toc_json",
    "parse_rfc3339",
    "toc_items",
]

# A TOC lists metadata only: 64 MiB of JSON is several million entries.
MAX_TOC_SIZE = 64 << 20
PREFETCH_LANDMARK = ".prefetch.landmark"
NO_PREFETCH_LANDMARK = ".no.prefetch.landmark"

MAX_ID = 1 << 63  # ids and sizes fit an int64
# Entry types by the names TOCs (and SOCI zTOCs) give them.
ENTRY_TYPES = {
    "reg": EntryType.FILE,
    "dir": EntryType.DIR,
    "symlink": EntryType.SYMLINK,
    "hardlink": EntryType.HARDLINK,
    "char": EntryType.CHAR,
    "block": EntryType.BLOCK,
    "fifo": EntryType.FIFO,
}
_RFC3339 = re.compile(
    r"^(\d{4})-(\d\d)-(\d\d)[Tt](\d\d):(\d\d):(\d\d)(?:\.(\d{1,9}))?([Zz]|[+-]\d\d:\d\d)$"
)
_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)


def parse_rfc3339(raw: object) -> tuple[int, int]:
    """Seconds and nanoseconds since the epoch of an RFC 3339 time (Go's ``RFC3339Nano``);
    `ValueError` (saying which text) if it is not one."""
    m = _RFC3339.match(raw) if isinstance(raw, str) else None
    if m is None:
        raise ValueError(f"{raw!r} is not an RFC 3339 time")
    year, month, day, hour, minute, second, frac, zone = m.groups()
    offset = 0
    if zone not in ("Z", "z"):
        offset = (int(zone[1:3]) * 3600 + int(zone[4:6]) * 60) * (-1 if zone[0] == "-" else 1)
    try:
        fields = (int(year), int(month), int(day), int(hour), int(minute), int(second))
        when = datetime.datetime(*fields, tzinfo=datetime.UTC)
    except ValueError as exc:
        raise ValueError(f"{raw!r}: {exc}") from None
    seconds = (when - _EPOCH) // datetime.timedelta(seconds=1) - offset
    return seconds, int((frac or "").ljust(9, "0"))


# A TOC field that holds an id, a size or an offset: an integer that fits an int64 (JSON
# null, which no producer writes, reads as 0, as an absent field does).
_Uint = Annotated[int, msgspec.Meta(ge=0, le=MAX_ID - 1)] | None


class TocItem(msgspec.Struct, frozen=True, gc=False):
    """One item of a TOC's ``entries`` (module docstring), its fields' JSON types checked
    as it is decoded (in C: a large TOC has some ten thousand items). What the values mean
    together is `fusesnap.index.tocrows`'s to check."""

    name: str | None = None
    type: str | None = None
    size: _Uint = 0
    modtime: str | None = None
    linkName: str | None = None  # the TOC's own field names
    mode: _Uint = 0
    uid: _Uint = 0
    gid: _Uint = 0
    userName: str | None = None
    groupName: str | None = None
    devMajor: _Uint = 0
    devMinor: _Uint = 0
    xattrs: dict[str, Any] | None = None
    digest: str | None = None
    offset: _Uint = 0
    endOffset: _Uint = 0
    innerOffset: _Uint = 0
    chunkOffset: _Uint = 0
    chunkSize: _Uint = 0
    chunkDigest: str | None = None


class _TocDocument(msgspec.Struct, gc=False):
    version: Any = None
    entries: list[TocItem] | None = None


_DECODER = msgspec.json.Decoder(_TocDocument)


def load_toc_json(data: bytes, *, what: str) -> list[TocItem]:
    """The ``entries`` of a TOC document (``{"version": 1, "entries": [...]}``); a
    `LayerError` if it is not JSON, or a field of an entry has the wrong JSON type."""
    try:
        doc = _DECODER.decode(data)
    except msgspec.ValidationError as exc:
        raise LayerError(f"{what}: TOC {_where(exc)}") from None
    except (msgspec.DecodeError, RecursionError) as exc:
        raise LayerError(f"{what}: TOC is not valid JSON ({exc})") from None
    if doc.entries is None:
        raise LayerError(f"{what}: TOC is not an object with an entries list")
    if doc.version != 1 or isinstance(doc.version, bool):
        raise LayerError(f"{what}: unsupported TOC version {doc.version!r}")
    return doc.entries


def toc_items(raw: list[Any], *, what: str) -> list[TocItem]:
    """TOC ``entries`` already decoded from JSON (lists and dicts), checked as
    `load_toc_json` checks them."""
    try:
        return msgspec.convert(raw, list[TocItem])
    except msgspec.ValidationError as exc:
        raise LayerError(f"{what}: TOC {_where(exc)}") from None


_ITEM_PATH = re.compile(r"`\$(?:\.entries)?\[(\d+)\]\.?([^`]*)`")


def _where(exc: msgspec.ValidationError) -> str:
    """msgspec's "Expected `int`, got `str` - at `$.entries[3].uid`" said as the other
    TOC errors say it: "entry 3: uid: expected `int`, got `str`"."""
    text, _, at = str(exc).rpartition(" - at ")
    m = _ITEM_PATH.fullmatch(at)
    if not text or m is None:
        return f"does not have a TOC's form ({exc})"
    reason = text[:1].lower() + text[1:]
    if reason.startswith("expected `object`"):
        reason = f"not an object ({reason})"
    return f"entry {m.group(1)}: " + (f"{m.group(2)}: {reason}" if m.group(2) else reason)


@dataclass(frozen=True, slots=True)
class TocBlob:
    """What `fusesnap.index.tocrows.encode_toc` needs to know about the layer besides its TOC.

    ``data_end`` is where the TOC region starts: no chunk's frames reach past
    it. ``diff_id`` comes from the image config (a TOC does not give it, and
    computing it would mean reading the whole layer).
    """

    layer: Descriptor
    diff_id: Digest
    compression: str
    data_end: int
    uncompressed_size: int = 0


def extract_chunk(compression: str, data: bytes, ref: ChunkRef, *, what: str = "chunk") -> bytes:
    """The chunk ``ref`` from ``data``, the blob's bytes ``[ref.coffset, ref.coffset +
    ref.clength)``: decompressed (gzip members for ``estargz``, zstd frames for
    ``zstd:chunked``; never more than ``ref.inner + ref.length`` bytes of output),
    sliced and verified.

    Raise `DigestMismatchError` if the bytes do not hash to ``ref.digest``,
    `LayerError` if they do not decompress.
    """
    if compression not in ("estargz", "zstd:chunked"):
        raise ValueError(f"not a frame format: {compression!r}")
    want = ref.inner + ref.length
    out = decompress_frame(data, want, what=what)  # the fetcher's decoder: one of them
    piece = out[ref.inner : want]
    got = Digest.of(piece)
    if len(piece) != ref.length or bytes.fromhex(got.hex) != ref.digest:
        raise DigestMismatchError(
            f"{what} sha256:{ref.digest.hex()[:12]}: digest mismatch (got {got[:19]})"
        )
    return piece
