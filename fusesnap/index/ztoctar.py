"""The TOC of a SOCI zTOC: one record per tar entry, as soci-snapshotter's builder makes it.

soci reads the uncompressed layer with Go's ``archive/tar`` and records, per
entry, the header's fields and the stream position after its header (where the
entry's data starts); the archive size is the reader's position when it reports
the end. Python's ``tarfile`` differs from Go's reader where it matters for a
byte-exact zTOC (it strips a directory's trailing ``/``, folds global PAX
headers into later entries, decodes names as text), so `read_toc` walks the
headers itself with Go's rules:

- a header is V7, USTAR/PAX (``ustar\\0`` ``00``), GNU (``ustar `` `` \\0``) or
  STAR (USTAR magic and ``tar\\0`` trailer), told by its magic once the checksum
  (unsigned or signed) matches; numbers are octal or base-256; strings end at the
  first NUL; a USTAR or STAR prefix goes before the name with a ``/``;
- a PAX header (``x``) applies to the next entry: ``path``, ``linkpath``,
  ``uname``, ``gname``, ``uid``, ``gid``, ``size``, ``mtime`` (up to 9 fraction
  digits) override the header; every record is kept as the entry's PAX records;
- GNU long name (``L``) and long link (``K``) apply to the next entry;
- a V7 regular file (``\\0``) whose name ends in ``/`` is a directory;
- links, devices, directories and FIFOs have no data whatever their size says;
- the end is a zero block followed by a zero block, or the stream's end at a
  header boundary.

soci accepts regular files, hard and symbolic links, directories, character
and block devices and FIFOs, and fails on anything else (a global PAX header,
a sparse file): so does `read_toc`, with `LayerError`.

Times are written as Go's ``time.MarshalText`` writes them, in UTC: RFC 3339
with the fraction's trailing zeros cut (``2023-11-14T22:13:20Z``,
``2009-02-13T23:31:30.123456789Z``).
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field
from typing import BinaryIO

from fusesnap.errors import LayerError

BLOCK = 512
_MAX_SPECIAL = 1 << 20  # Go's limit on a PAX or GNU long-name payload
_ZERO = bytes(BLOCK)
_TYPES = {
    b"0": b"reg",
    b"1": b"hardlink",
    b"2": b"symlink",
    b"3": b"char",
    b"4": b"block",
    b"5": b"dir",
    b"6": b"fifo",
}
_HEADER_ONLY = frozenset({b"1", b"2", b"3", b"4", b"5", b"6"})  # no data, whatever the size says
_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)


@dataclass(frozen=True, slots=True)
class TocEntry:
    """One zTOC ``FileMetadata`` record (strings as the tar holds them, bytes)."""

    name: bytes
    type: bytes
    offset: int
    size: int
    linkname: bytes = b""
    mode: int = 0
    uid: int = 0
    gid: int = 0
    uname: bytes = b""
    gname: bytes = b""
    mod_time: bytes = b""
    devmajor: int = 0
    devminor: int = 0
    pax: dict[bytes, bytes] = field(default_factory=dict)


class TocReader:
    """Walks a tar stream fed to it in pieces of any size (`feed`), so that the pass
    that inflates a layer for its checkpoints also reads its TOC; `finish` returns
    the entries and the archive size. Raises `LayerError` where soci's builder fails
    (module docstring). Bytes after the end of the archive are ignored."""

    def __init__(self, *, what: str = "layer") -> None:
        self.what = what
        self.entries: list[TocEntry] = []
        self.pos = 0  # bytes of the stream taken
        self._buf = bytearray()
        self._need = BLOCK  # bytes _step wants next
        self._state = "header"  # header | zero2 | special | done
        self._skip = 0  # data and padding to pass over before the next _step
        self._special: tuple[bytes, int] = (b"", 0)  # flag and padding of a PAX/long-name entry
        self._pax: dict[bytes, bytes] | None = None
        self._long_name = self._long_link = b""

    def feed(self, data: bytes) -> None:
        i, n = 0, len(data)
        while i < n and self._state != "done":
            if self._skip:
                step = min(self._skip, n - i)
                self._skip -= step
                self.pos += step
                i += step
                continue
            take = min(self._need - len(self._buf), n - i)
            self._buf += data[i : i + take]
            self.pos += take
            i += take
            if len(self._buf) == self._need:
                block = bytes(self._buf)
                self._buf.clear()
                self._step(block)

    def finish(self) -> tuple[list[TocEntry], int]:
        """The entries and the size soci records: where Go's reader saw the end."""
        if self._skip or self._buf or self._state == "special":
            raise LayerError(f"{self.what}: tar stream ends inside an entry at {self.pos}")
        return self.entries, self.pos

    def _step(self, block: bytes) -> None:
        what = self.what
        if self._state == "zero2":
            if block != _ZERO:
                raise LayerError(f"{what}: a zero block followed by a header at {self.pos}")
            self._state = "done"
            return
        if self._state == "special":
            flag, padding = self._special
            self._state, self._need, self._skip = "header", BLOCK, padding
            if flag in (b"x", b"g"):
                self._pax = _parse_pax(block, what)
                if flag == b"g":
                    raise LayerError(f"{what}: a global PAX header (soci's builder refuses it)")
            elif flag == b"L":
                self._long_name = _cstr(block)
            else:
                self._long_link = _cstr(block)
            return
        if block == _ZERO:
            self._state = "zero2"
            return
        h = _parse_header(block, what)
        flag = h["type"]
        if flag in (b"x", b"g", b"L", b"K"):
            size = h["size"]
            if not 0 <= size <= _MAX_SPECIAL:
                raise LayerError(f"{what}: a PAX or long-name header of {size} bytes")
            self._special = (flag, -size % BLOCK)
            self._state, self._need = "special", size
            if size == 0:
                self._step(b"")
            return
        self._entry(h)

    def _entry(self, h: dict) -> None:
        what, pax = self.what, self._pax
        if pax:
            _merge_pax(h, pax, what)
        if self._long_name:
            h["name"] = self._long_name
        if self._long_link:
            h["linkname"] = self._long_link
        flag = h["type"]
        if flag == b"\0":
            flag = b"5" if h["name"].endswith(b"/") else b"0"
        kind = _TYPES.get(flag)
        if kind is None:
            raise LayerError(
                f"{what}: tar entry {h['name'].decode(errors='replace')!r} has type "
                f"{flag!r}, which a zTOC cannot describe"
            )
        if pax and any(k.startswith(b"GNU.sparse.") for k in pax):
            raise LayerError(f"{what}: a sparse file (soci's builder refuses it)")
        size = h["size"]
        data = 0 if flag in _HEADER_ONLY else size
        if data < 0:
            raise LayerError(f"{what}: negative size for {h['name']!r}")
        self.entries.append(
            TocEntry(
                name=h["name"],
                type=kind,
                offset=self.pos,
                size=size,
                linkname=h["linkname"],
                mode=h["mode"],
                uid=h["uid"],
                gid=h["gid"],
                uname=h["uname"],
                gname=h["gname"],
                mod_time=_go_time(*h["mtime"]),
                devmajor=h["devmajor"],
                devminor=h["devminor"],
                pax=dict(pax or {}),
            )
        )
        self._skip = data + (-data % BLOCK)
        self._pax = None
        self._long_name = self._long_link = b""


def read_toc(fileobj: BinaryIO, *, what: str = "layer") -> tuple[list[TocEntry], int]:
    """Walk the uncompressed tar stream in ``fileobj`` (module docstring); return its
    entries in order and the archive size soci records."""
    reader = TocReader(what=what)
    while data := fileobj.read(1 << 20):
        reader.feed(data)
    return reader.finish()


def _cstr(b: bytes) -> bytes:
    i = b.find(b"\0")
    return b if i < 0 else b[:i]


def _octal(b: bytes, what: str) -> int:
    s = _cstr(b.strip(b" \0"))
    if not s:
        return 0
    try:
        return int(s, 8)
    except ValueError:
        raise LayerError(f"{what}: bad number {b!r} in a tar header") from None


def _numeric(b: bytes, what: str) -> int:
    if b and b[0] & 0x80:
        negative = bool(b[0] & 0x40)
        x = 0
        for i, c in enumerate(b):
            if negative:
                c ^= 0xFF
            if i == 0:
                c &= 0x7F
            if x >> 56:
                raise LayerError(f"{what}: base-256 number out of range in a tar header")
            x = x << 8 | c
        if x >> 63:
            raise LayerError(f"{what}: base-256 number out of range in a tar header")
        return ~x if negative else x
    return _octal(b, what)


def _parse_header(b: bytes, what: str) -> dict:
    # Checksum: the field counts as spaces; the sum of unsigned or of signed bytes.
    stored = _octal(b[148:156], what)
    unsigned = sum(b[:148]) + 8 * 32 + sum(b[156:])
    signed = sum(x - 256 if x > 127 else x for x in b[:148] + b[156:]) + 8 * 32
    if stored not in (unsigned, signed):
        raise LayerError(f"{what}: a tar header with a bad checksum")
    magic, version, trailer = b[257:263], b[263:265], b[508:512]
    if magic == b"ustar\0":
        fmt = "star" if trailer == b"tar\0" else "ustar"
    elif magic == b"ustar " and version == b" \0":
        fmt = "gnu"
    else:
        fmt = "v7"
    h: dict = {
        "type": b[156:157],
        "name": _cstr(b[0:100]),
        "linkname": _cstr(b[157:257]),
        "size": _numeric(b[124:136], what),
        "mode": _numeric(b[100:108], what),
        "uid": _numeric(b[108:116], what),
        "gid": _numeric(b[116:124], what),
        "mtime": (_numeric(b[136:148], what), 0),
        "uname": b"",
        "gname": b"",
        "devmajor": 0,
        "devminor": 0,
    }
    if fmt != "v7":
        h["uname"] = _cstr(b[265:297])
        h["gname"] = _cstr(b[297:329])
        h["devmajor"] = _numeric(b[329:337], what)
        h["devminor"] = _numeric(b[337:345], what)
        prefix = b""
        if fmt == "ustar":
            prefix = _cstr(b[345:500])
        elif fmt == "star":
            prefix = _cstr(b[345:476])
        if prefix:
            h["name"] = prefix + b"/" + h["name"]
    return h


def _parse_pax(data: bytes, what: str) -> dict[bytes, bytes]:
    out: dict[bytes, bytes] = {}
    sparse: list[bytes] = []
    while data:
        space = data.find(b" ")
        try:
            n = int(data[:space]) if space > 0 else -1
        except ValueError:
            n = -1
        if n <= space or n > len(data) or data[n - 1 : n] != b"\n":
            raise LayerError(f"{what}: a malformed PAX record")
        record, data = data[space + 1 : n - 1], data[n:]
        key, eq, value = record.partition(b"=")
        if not eq or not key:
            raise LayerError(f"{what}: a malformed PAX record")
        if key in (b"GNU.sparse.offset", b"GNU.sparse.numbytes"):
            sparse.append(value)
        else:
            out[key] = value
    if sparse:
        out[b"GNU.sparse.map"] = b",".join(sparse)
    return out


def _merge_pax(h: dict, pax: dict[bytes, bytes], what: str) -> None:
    for key, value in pax.items():
        if not value:
            continue
        if key == b"path":
            h["name"] = value
        elif key == b"linkpath":
            h["linkname"] = value
        elif key in (b"uname", b"gname"):
            h[key.decode()] = value
        elif key in (b"uid", b"gid", b"size"):
            try:
                h[key.decode()] = int(value, 10)
            except ValueError:
                raise LayerError(f"{what}: bad PAX {key.decode()} {value!r}") from None
        elif key == b"mtime":
            h["mtime"] = _pax_time(value, what)


def _pax_time(value: bytes, what: str) -> tuple[int, int]:
    secs_text, _, frac = value.partition(b".")
    try:
        secs = int(secs_text, 10)
    except ValueError:
        raise LayerError(f"{what}: bad PAX mtime {value!r}") from None
    if not frac:
        return secs, 0
    if not frac.isdigit():
        raise LayerError(f"{what}: bad PAX mtime {value!r}")
    nsec = int(frac[:9].ljust(9, b"0"))
    if secs_text.startswith(b"-"):
        nsec = -nsec
    return secs, nsec


def _go_time(secs: int, nsec: int) -> bytes:
    """Go's ``time.Unix(secs, nsec).UTC().MarshalText()``; empty where Go fails (a
    year outside 0..9999)."""
    secs += nsec // 1_000_000_000
    nsec %= 1_000_000_000
    try:
        t = _EPOCH + datetime.timedelta(seconds=secs)
    except OverflowError:
        return b""
    text = f"{t.year:04d}-{t.month:02d}-{t.day:02d}T{t.hour:02d}:{t.minute:02d}:{t.second:02d}"
    if nsec:
        text += "." + f"{nsec:09d}".rstrip("0")
    return (text + "Z").encode()
