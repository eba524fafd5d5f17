"""A TOC (eStargz, zstd:chunked; `fusesnap.index.toc`) turned into a stored layer index.

The TOC's items go straight to the rows of the encoded form (`fusesnap.index.codec`,
format 3), in one pass that checks what they mean: paths, types, chunks that cover
their file inside the blob, digests, times. No `Entry` is built on the way: a
containerd Prepare waits for this (`fusesnap.containerd.remote`), and building a
`LayerIndex` and then encoding it took twice as long (the Debian image's 6,869-entry
TOC: 49 ms + 28 ms for the records and their encoding, against 35 ms for the rows).
`index_from_toc` decodes the rows for a caller that wants the records: that check of
what was written is the one every stored index gets when it is read.
"""

from __future__ import annotations

import base64
import binascii
import bisect
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from fusesnap.digest import Digest
from fusesnap.errors import LayerError
from fusesnap.index import codec
from fusesnap.index.codec import TYPE_CODES, common_prefix, name_bytes, pack_body
from fusesnap.index.model import (
    DEFAULT_CHUNK_SIZE,
    EntryType,
    LayerIndex,
    hardlink_target,
    is_normal_path,
    normalize_path,
)
from fusesnap.index.toc import (
    ENTRY_TYPES,
    NO_PREFETCH_LANDMARK,
    PREFETCH_LANDMARK,
    TocBlob,
    TocItem,
    parse_rfc3339,
)

__all__ = ["EncodedToc", "encode_toc", "index_from_toc"]

_FILE = EntryType.FILE
_LANDMARKS = (PREFETCH_LANDMARK, NO_PREFETCH_LANDMARK)
_SHA256 = re.compile(r"^sha256:([0-9a-f]{64})$")


@dataclass(frozen=True, slots=True)
class EncodedToc:
    """A layer's index from its TOC, in the form the store keeps (``data``), with what its
    record lists besides (`fusesnap.pull.indexing.store_encoded_index`)."""

    data: bytes
    diff_id: Digest
    uncompressed_size: int
    entry_count: int
    chunk_digests: frozenset[bytes]

    def index(self) -> LayerIndex:
        """The records (decoded: every field checked again, as for any stored index)."""
        return codec.decode(self.data)


def encode_toc(entries: Sequence[TocItem], blob: TocBlob, *, what: str) -> EncodedToc:
    """The stored index of the layer whose TOC lists ``entries`` (`load_toc_json`,
    `toc_items`); `LayerError` if they are not a usable layer (unknown types, unsafe
    paths, chunks that do not cover a file or point outside the blob, bad digests)."""
    return _TocRows(blob, what).encode(entries)


def index_from_toc(entries: Sequence[TocItem], blob: TocBlob, *, what: str) -> LayerIndex:
    """`encode_toc`, as records."""
    return encode_toc(entries, blob, what=what).index()


class _TocRows:
    """One pass over TOC entries: chunks grouped with their file, a row for each entry."""

    def __init__(self, blob: TocBlob, what: str) -> None:
        self._blob = blob
        self._what = what
        self._unames: dict[int, str] = {}
        self._gnames: dict[int, str] = {}
        self._types: dict[str, EntryType] = {}
        self._starts: list[int] = []
        self._times: dict[str, tuple[int, int]] = {}
        self._names: dict[str, bytes] = {"": b""}  # user and group names, encoded

    def _fail(self, i: int, reason: str) -> LayerError:
        return LayerError(f"{self._what}: TOC entry {i}: {reason}")

    def _fail_chunk(self, i: int, path: str, k: int, reason: str) -> LayerError:
        return self._fail(i, f"{path!r} chunk {k}: {reason}")

    def encode(self, raw: Sequence[TocItem]) -> EncodedToc:
        groups: list[tuple[int, TocItem, list[TocItem]]] = []
        starts: set[int] = set()
        last_end = self._blob.data_end - 1
        for i, item in enumerate(raw):
            kind = item.type
            if kind == "chunk":
                if not groups or groups[-1][1].type != "reg":
                    raise self._fail(i, "a chunk without a regular file before it")
                groups[-1][2].append(item)
            else:
                groups.append((i, item, []))
            if item.offset and (kind == "reg" or kind == "chunk"):
                if item.offset > last_end:
                    raise self._fail(i, f"offset {item.offset!r} is not an integer in range")
                starts.add(item.offset)
        self._starts = sorted(starts)
        rows: list[list[Any]] = []
        root: list[Any] | None = None
        prefetch: list[str] = []
        marked: list[str] = []
        # Files of several chunks, whose lengths are stored unless they are the fixed split
        # into the layer's longest chunk (known at the end): their columns and lengths.
        split: list[tuple[list[Any], list[int]]] = []
        digests: set[bytes] = set()
        longest = 0
        prev_path = b""
        prev_cend = 0  # where the previous frame chunk ended
        for i, item, chunks in groups:
            path, etype, row = self._row(i, item, chunks)
            if path == "":
                if etype is not EntryType.DIR:
                    raise self._fail(i, f"a {etype} cannot replace the layer root")
                root = row
                continue
            if etype is _FILE and path in _LANDMARKS:
                marked = prefetch[:] if path == PREFETCH_LANDMARK else []
                continue
            self._types[path] = etype
            path_b = name_bytes(path)
            plen = common_prefix(prev_path, path_b)
            row[0], row[1] = plen, path_b[plen:]
            prev_path = path_b
            parts = row[15]
            if parts is not None:
                prefetch.append(path)
                if len(parts) == 1:  # most files
                    length, digest, coffset, clength, inner = parts[0]
                    deltas = [coffset - prev_cend]
                    row[15] = [None, digest, None, deltas, [clength], [inner] if inner else None]
                    prev_cend = coffset + clength
                    digests.add(digest)
                    if length > longest:
                        longest = length
                else:
                    row[15], prev_cend, top = self._columns(parts, prev_cend, digests, split)
                    longest = max(longest, top)
            rows.append(row)
        # The producer chose the chunk sizes; the longest is the index's bound (a fixed split
        # into chunks of that size, eStargz's, then needs no lengths in the encoded form).
        chunk_size = longest or DEFAULT_CHUNK_SIZE
        for columns, lengths in split:
            if lengths[-1] > chunk_size or any(n != chunk_size for n in lengths[:-1]):
                columns[2] = lengths
        blob = self._blob
        body = [
            str(blob.layer.digest),
            str(blob.diff_id),
            blob.layer.media_type,
            blob.compression,
            blob.layer.size,
            blob.uncompressed_size,
            chunk_size,
            rows,
            None,
            root,
            blob.compression,
            [name_bytes(p) for p in marked],
        ]
        return EncodedToc(
            data=pack_body(body),
            diff_id=blob.diff_id,
            uncompressed_size=blob.uncompressed_size,
            entry_count=len(rows),
            chunk_digests=frozenset(digests),
        )

    @staticmethod
    def _columns(
        parts: list[tuple[int, bytes, int, int, int]],
        prev_cend: int,
        digests: set[bytes],
        split: list[tuple[list[Any], list[int]]],
    ) -> tuple[list[Any], int, int]:
        """The frame columns of a file of several chunks (its lengths left to the caller,
        in ``split``), where the last frame chunk ends, and its longest chunk."""
        lengths, deltas, clengths, inners = [], [], [], []
        for length, digest, coffset, clength, inner in parts:
            lengths.append(length)
            deltas.append(coffset - prev_cend)
            clengths.append(clength)
            inners.append(inner)
            prev_cend = coffset + clength
            digests.add(digest)
        joined = b"".join(p[1] for p in parts)
        columns = [None, joined, None, deltas, clengths, inners if any(inners) else None]
        split.append((columns, lengths))
        return columns, prev_cend, max(lengths)

    # -- one entry ----------------------------------------------------------------------------

    def _row(
        self, i: int, item: TocItem, chunks: list[TocItem]
    ) -> tuple[str, EntryType, list[Any]]:
        """The entry's path, type and row (its path columns for the caller to fill, and
        its chunks as (length, digest, coffset, clength, inner) for the caller to lay out)."""
        name = item.name
        if name is None:
            raise self._fail(i, "no name")
        bare = name[:-1] if name[-1:] == "/" else name  # "etc/": a directory
        if is_normal_path(bare):
            path = bare  # normal already (a TOC's names nearly always are)
        else:
            try:
                path = normalize_path(name)
            except ValueError as exc:
                raise self._fail(i, f"{name!r}: {exc}") from None
        etype = ENTRY_TYPES.get(item.type) if item.type is not None else None
        if etype is None:
            raise self._fail(i, f"{name!r}: unsupported type {item.type!r}")
        uid, gid = item.uid or 0, item.gid or 0
        # eStargz writes a user or group name only where it changes for that id.
        uname = item.userName
        if uname:
            self._unames[uid] = uname
        else:
            uname = self._unames.get(uid, "")
        gname = item.groupName
        if gname:
            self._gnames[gid] = gname
        else:
            gname = self._gnames.get(gid, "")
        linkname = ""
        size = 0
        devmajor = devminor = 0
        if etype is _FILE:
            size = item.size or 0
            if chunks and not size:
                raise self._fail(i, f"{name!r}: chunks of an empty file")
        elif etype is EntryType.SYMLINK:
            linkname = item.linkName or ""
            if "\0" in linkname:
                raise self._fail(i, f"{name!r}: symlink target contains NUL")
        elif etype is EntryType.HARDLINK:
            linkname = self._hardlink_target(i, path, item.linkName or "")
        elif etype is EntryType.CHAR or etype is EntryType.BLOCK:
            devmajor, devminor = item.devMajor or 0, item.devMinor or 0
        mtime, nsec = self._modtime(i, item.modtime)
        row = [
            0,
            b"",
            TYPE_CODES[etype],
            (item.mode or 0) & 0o7777,  # Go's tar modes may carry type bits
            uid,
            gid,
            mtime,
            nsec,
            size,
            name_bytes(linkname) if linkname else b"",
            devmajor,
            devminor,
            self._xattrs(i, item.xattrs) if item.xattrs else None,
            self._name(uname),
            self._name(gname),
            self._chunks(i, path, size, item, chunks) if size else None,
        ]
        return path, etype, row

    def _chunks(
        self, i: int, path: str, size: int, reg: TocItem, more: list[TocItem]
    ) -> list[tuple[int, bytes, int, int, int]]:
        out = []
        done = 0
        parts = [reg, *more]
        last = len(parts) - 1
        for k, part in enumerate(parts):
            if k and part.name is not None and not self._same_path(part.name, path):
                raise self._fail_chunk(i, path, k, f"belongs to {part.name!r}")
            if (part.chunkOffset or 0) != done:
                raise self._fail_chunk(i, path, k, "chunks are not contiguous")
            length = part.chunkSize or size - done  # 0: to the end of the file
            if not 0 < length <= size - done or (k == last and done + length != size):
                raise self._fail_chunk(i, path, k, "chunk sizes do not add up to the file size")
            raw_digest = part.chunkDigest or (reg.digest if not last else None)
            m = _SHA256.match(raw_digest) if raw_digest is not None else None
            if m is None:
                raise self._fail_chunk(i, path, k, "no sha256 chunk digest")
            coffset = part.offset or 0
            if coffset <= 0:
                raise self._fail_chunk(i, path, k, "no offset in the blob")
            end = self._frame_end(coffset)
            if k == last and reg.endOffset:
                end_offset = reg.endOffset
                if not coffset < end_offset <= end:
                    raise self._fail_chunk(i, path, k, f"endOffset {end_offset} outside its frames")
                end = end_offset
            digest = bytes.fromhex(m.group(1))
            out.append((length, digest, coffset, end - coffset, part.innerOffset or 0))
            done += length
        return out

    def _name(self, name: str) -> bytes:
        got = self._names.get(name)
        if got is None:
            got = self._names[name] = name_bytes(name)
        return got

    @staticmethod
    def _same_path(name: str, path: str) -> bool:
        try:
            return normalize_path(name) == path
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

    def _modtime(self, i: int, raw: str | None) -> tuple[int, int]:
        """Seconds and nanoseconds of an RFC 3339 time; empty or absent means 0 (eStargz)."""
        if not raw:
            return 0, 0
        got = self._times.get(raw)  # a layer's files share few times
        if got is None:
            try:
                got = self._times[raw] = parse_rfc3339(raw)
            except ValueError as exc:
                raise self._fail(i, f"modtime {exc}") from None
        return got

    def _xattrs(self, i: int, raw: dict[str, Any]) -> list[bytes]:
        """The xattrs as the encoded form keeps them: names and values, sorted by name."""
        out = {}
        for key, value in raw.items():
            if not isinstance(value, str):
                raise self._fail(i, f"xattr {key!r} is not a base64 string")
            try:
                out[key] = base64.b64decode(value, validate=True)
            except (binascii.Error, ValueError):
                raise self._fail(i, f"xattr {key!r}: bad base64") from None
        return [x for key in sorted(out) for x in (name_bytes(key), out[key])]
