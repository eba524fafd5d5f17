"""What eStargz and zstd:chunked share: a JSON table of contents turned into a `LayerIndex`.

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

import base64
import binascii
import bisect
import datetime
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fusesnap.digest import Digest
from fusesnap.errors import DigestMismatchError, LayerError
from fusesnap.index.fastbuild import new_chunk_ref, new_entry
from fusesnap.index.frames import decompress_frame
from fusesnap.index.model import (
    DEFAULT_CHUNK_SIZE,
    ChunkRef,
    Entry,
    EntryType,
    LayerIndex,
    hardlink_target,
    normalize_path,
)
from fusesnap.oci import Descriptor

__all__ = [
    "ENTRY_TYPES",
    "MAX_ID",
    "MAX_TOC_SIZE",
    "NO_PREFETCH_LANDMARK",
    "PREFETCH_LANDMARK",
    "TocBlob",
    "extract_chunk",
    "index_from_toc",
    "load_toc_json",
    "parse_rfc3339",
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
_SHA256 = re.compile(r"^sha256:([0-9a-f]{64})$")
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


def load_toc_json(data: bytes, *, what: str) -> list[Any]:
    """The ``entries`` of a TOC document (``{"version": 1, "entries": [...]}``)."""
    try:
        doc = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise LayerError(f"{what}: TOC is not valid JSON ({exc})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("entries"), list):
        raise LayerError(f"{what}: TOC is not an object with an entries list")
    if doc.get("version") != 1:
        raise LayerError(f"{what}: unsupported TOC version {doc.get('version')!r}")
    entries: list[Any] = doc["entries"]
    return entries


@dataclass(frozen=True, slots=True)
class TocBlob:
    """What `index_from_toc` needs to know about the layer besides its TOC.

    ``data_end`` is where the TOC region starts: no chunk's frames reach past
    it. ``diff_id`` comes from the image config (a TOC does not give it, and
    computing it would mean reading the whole layer).
    """

    layer: Descriptor
    diff_id: Digest
    compression: str
    data_end: int
    uncompressed_size: int = 0


def index_from_toc(entries: list[Any], blob: TocBlob, *, what: str) -> LayerIndex:
    """Turn TOC ``entries`` (decoded JSON) into a `LayerIndex`; `LayerError` if they are
    not a usable layer (unknown types, unsafe paths, chunks that do not cover a file or
    point outside the blob, bad digests)."""
    return _TocReader(blob, what).read(entries)


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


class _TocReader:
    """One pass over TOC entries: group chunks with their file, build `Entry` records."""

    def __init__(self, blob: TocBlob, what: str) -> None:
        self._blob = blob
        self._what = what
        self._unames: dict[int, str] = {}
        self._gnames: dict[int, str] = {}
        self._types: dict[str, EntryType] = {}
        self._starts: list[int] = []
        self._times: dict[str, tuple[int, int]] = {}

    def _fail(self, i: int, reason: str) -> LayerError:
        return LayerError(f"{self._what}: TOC entry {i}: {reason}")

    def _fail_chunk(self, i: int, path: str, k: int, reason: str) -> LayerError:
        return self._fail(i, f"{path!r} chunk {k}: {reason}")

    def read(self, raw: list[Any]) -> LayerIndex:
        groups: list[tuple[int, dict[str, Any], list[dict[str, Any]]]] = []
        starts: set[int] = set()
        for i, item in enumerate(raw):
            if not isinstance(item, dict):
                raise self._fail(i, "not an object")
            kind = item.get("type")
            if kind in ("reg", "chunk") and item.get("offset"):
                starts.add(self._int(item, "offset", i, hi=self._blob.data_end - 1))
            if kind == "chunk":
                if not groups or groups[-1][1].get("type") != "reg":
                    raise self._fail(i, "a chunk without a regular file before it")
                groups[-1][2].append(item)
            else:
                groups.append((i, item, []))
        self._starts = sorted(starts)
        entries: list[Entry] = []
        root: Entry | None = None
        prefetch: list[str] = []
        marked: tuple[str, ...] = ()
        for i, item, chunks in groups:
            entry = self._entry(i, item, chunks)
            if entry.path == "":
                if entry.type is not EntryType.DIR:
                    raise self._fail(i, f"a {entry.type} cannot replace the layer root")
                root = entry
            elif entry.type is EntryType.FILE and entry.path == PREFETCH_LANDMARK:
                marked = tuple(prefetch)
            elif entry.type is EntryType.FILE and entry.path == NO_PREFETCH_LANDMARK:
                marked = ()
            else:
                entries.append(entry)
                self._types[entry.path] = entry.type
                if entry.chunks:
                    prefetch.append(entry.path)
        # The producer chose the chunk sizes; the longest is the index's bound (a fixed split
        # into chunks of that size, eStargz's, then needs no lengths in the encoded form).
        longest = max((c.length for e in entries for c in e.chunks), default=DEFAULT_CHUNK_SIZE)
        return LayerIndex(
            layer_digest=self._blob.layer.digest,
            diff_id=self._blob.diff_id,
            media_type=self._blob.layer.media_type,
            compression=self._blob.compression,
            compressed_size=self._blob.layer.size,
            uncompressed_size=self._blob.uncompressed_size,
            chunk_size=longest,
            entries=tuple(entries),
            root=root,
            source=self._blob.compression,
            prefetch=marked,
        )

    # -- one entry ----------------------------------------------------------------------------

    def _entry(self, i: int, item: dict[str, Any], chunks: list[dict[str, Any]]) -> Entry:
        name = item.get("name")
        if not isinstance(name, str):
            raise self._fail(i, "no name")
        try:
            path = normalize_path(name)
        except ValueError as exc:
            raise self._fail(i, f"{name!r}: {exc}") from None
        kind = item.get("type")
        etype = ENTRY_TYPES.get(kind) if isinstance(kind, str) else None
        if etype is None:
            raise self._fail(i, f"{name!r}: unsupported type {item.get('type')!r}")
        uid, gid = self._int(item, "uid", i), self._int(item, "gid", i)
        # eStargz writes a user or group name only where it changes for that id.
        uname = self._unames[uid] = self._text(item, "userName", i) or self._unames.get(uid, "")
        gname = self._gnames[gid] = self._text(item, "groupName", i) or self._gnames.get(gid, "")
        linkname = ""
        if etype is EntryType.SYMLINK:
            linkname = self._text(item, "linkName", i)
            if "\0" in linkname:
                raise self._fail(i, f"{name!r}: symlink target contains NUL")
        elif etype is EntryType.HARDLINK:
            linkname = self._hardlink_target(i, path, self._text(item, "linkName", i))
        device = etype in (EntryType.CHAR, EntryType.BLOCK)
        size = self._int(item, "size", i) if etype is EntryType.FILE else 0
        if chunks and not size:
            raise self._fail(i, f"{name!r}: chunks of an empty file")
        mtime, nsec = self._modtime(i, item.get("modtime"))
        return new_entry(  # the constructor's fields, in order
            path,
            etype,
            self._int(item, "mode", i) & 0o7777,  # Go's tar modes may carry type bits
            uid,
            gid,
            size,
            mtime,
            nsec,
            linkname,
            self._int(item, "devMajor", i) if device else 0,
            self._int(item, "devMinor", i) if device else 0,
            self._xattrs(i, item.get("xattrs")),
            uname,
            gname,
            self._chunks(i, path, size, item, chunks) if size else (),
        )

    def _chunks(
        self, i: int, path: str, size: int, reg: dict[str, Any], more: list[dict[str, Any]]
    ) -> tuple[ChunkRef, ...]:
        refs = []
        done = 0
        parts = [reg, *more]
        last = len(parts) - 1
        for k, part in enumerate(parts):
            if k and "name" in part and not self._same_path(part["name"], path):
                raise self._fail_chunk(i, path, k, f"belongs to {part['name']!r}")
            if self._int(part, "chunkOffset", i) != done:
                raise self._fail_chunk(i, path, k, "chunks are not contiguous")
            length = self._int(part, "chunkSize", i) or size - done  # 0: to the end of the file
            if not 0 < length <= size - done or (k == last and done + length != size):
                raise self._fail_chunk(i, path, k, "chunk sizes do not add up to the file size")
            raw_digest = part.get("chunkDigest") or (reg.get("digest") if not last else None)
            m = _SHA256.match(raw_digest) if isinstance(raw_digest, str) else None
            if m is None:
                raise self._fail_chunk(i, path, k, "no sha256 chunk digest")
            coffset = self._int(part, "offset", i)
            if coffset <= 0:
                raise self._fail_chunk(i, path, k, "no offset in the blob")
            end = self._frame_end(coffset)
            if k == last and reg.get("endOffset"):
                end_offset = self._int(reg, "endOffset", i)
                if not coffset < end_offset <= end:
                    raise self._fail_chunk(i, path, k, f"endOffset {end_offset} outside its frames")
                end = end_offset
            inner = self._int(part, "innerOffset", i)
            digest = bytes.fromhex(m.group(1))
            refs.append(new_chunk_ref(done, length, digest, coffset, end - coffset, inner))
            done += length
        return tuple(refs)

    @staticmethod
    def _same_path(name: Any, path: str) -> bool:
        try:
            return isinstance(name, str) and normalize_path(name) == path
        except ValueError:
            return False

    def _frame_end(self, coffset: int) -> int:
        k = bisect.bisect_right(self._starts, coffset)
        return self._starts[k] if k < len(self._starts) else self._blob.data_end

    def _hardlink_target(self, i: int, path: str, target: str) -> str:
        try:
            return hardlink_target(target, path, self._types)
        except ValueError as exc:
            raise self._fail(i, str(exc)) from None

    # -- fields -------------------------------------------------------------------------------

    def _int(self, item: Mapping[str, Any], key: str, i: int, *, hi: int = MAX_ID) -> int:
        v = item.get(key, 0)
        if type(v) is int and 0 <= v <= hi:  # the common case, first (bool is not int here)
            return v
        if v is None:
            return 0
        if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v <= hi:
            raise self._fail(i, f"{key} {v!r} is not an integer in range")
        return v

    def _text(self, item: Mapping[str, Any], key: str, i: int) -> str:
        v = item.get(key) or ""
        if not isinstance(v, str):
            raise self._fail(i, f"{key} is not a string")
        return v

    def _modtime(self, i: int, raw: Any) -> tuple[int, int]:
        """Seconds and nanoseconds of an RFC 3339 time; empty or absent means 0 (eStargz)."""
        if not raw:
            return 0, 0
        if isinstance(raw, str) and raw in self._times:  # a layer's files share few times
            return self._times[raw]
        try:
            self._times[raw] = parse_rfc3339(raw)
        except ValueError as exc:
            raise self._fail(i, f"modtime {exc}") from None
        return self._times[raw]

    def _xattrs(self, i: int, raw: Any) -> dict[str, bytes]:
        if not raw:
            return {}
        if not isinstance(raw, dict):
            raise self._fail(i, "xattrs is not an object")
        out = {}
        for key, value in raw.items():
            if not isinstance(value, str):
                raise self._fail(i, f"xattr {key!r} is not a base64 string")
            try:
                out[key] = base64.b64decode(value, validate=True)
            except (binascii.Error, ValueError):
                raise self._fail(i, f"xattr {key!r}: bad base64") from None
        return dict(sorted(out.items()))
