"""What an ELF program or shared library makes the dynamic loader open next.

A process start is a chain of opens that each wait for the one before: the
kernel loads the program and its interpreter (``PT_INTERP``, e.g.
``/lib64/ld-linux-x86-64.so.2``), which opens each ``DT_NEEDED`` library in turn,
found through ``DT_RUNPATH``/``DT_RPATH`` and the default directories. On a lazy
mount each of those opens is a round trip to the registry. Once a program's bytes
are here, these functions name every file the loader will want, so that a mount
can fetch them side by side (`fusesnap.mountd.openfetch`).

Parsing is in steps, each on bytes the caller reads from the file: `parse_header`
(the first `HEADER_SIZE` bytes), `ElfHeader.segments` (the program headers),
`ElfHeader.dynamic` (the ``PT_DYNAMIC`` segment), then strings from the string
table that ``DT_STRTAB`` points at (`Segments.file_offset`). Anything malformed
gives None or empty results, never an exception: this is a hint, not a loader.
"""

from __future__ import annotations

import posixpath
import struct
from dataclasses import dataclass, field

__all__ = [
    "HEADER_SIZE",
    "MAX_DYNAMIC",
    "MAX_PROGRAM_HEADERS",
    "MAX_STRTAB",
    "Dynamic",
    "ElfHeader",
    "Segments",
    "library_candidates",
    "multiarch",
    "parse_header",
    "string_at",
]

HEADER_SIZE = 64  # an ELF64 header; an ELF32 one is 52
MAX_PHNUM = 128
MAX_PROGRAM_HEADERS = 64 << 10  # bytes of program headers read at most
MAX_DYNAMIC = 64 << 10  # bytes of PT_DYNAMIC read at most
MAX_STRTAB = 1 << 20  # bytes of the dynamic string table read at most
MAX_NEEDED = 256

_PT_LOAD, _PT_DYNAMIC, _PT_INTERP = 1, 2, 3
_DT_NULL, _DT_NEEDED, _DT_STRTAB, _DT_STRSZ, _DT_RPATH, _DT_RUNPATH = 0, 1, 5, 10, 15, 29

# The loader's default directories after the runpath (glibc: the multiarch ones of the
# machine first; musl: /lib, /usr/local/lib, /usr/lib).
_MULTIARCH = {62: "x86_64-linux-gnu", 183: "aarch64-linux-gnu", 3: "i386-linux-gnu"}
_DEFAULT_DIRS = ("/lib64", "/usr/lib64", "/lib", "/usr/local/lib", "/usr/lib")


@dataclass(frozen=True, slots=True)
class ElfHeader:
    """The fields of an ELF file header that lead to its dynamic section."""

    order: str  # "<" or ">"
    wide: bool  # ELFCLASS64
    machine: int
    phoff: int
    phentsize: int
    phnum: int

    @property
    def program_headers_size(self) -> int:
        return self.phentsize * self.phnum

    def segments(self, data: bytes) -> Segments:
        """The program headers in ``data`` (read at `phoff`, `program_headers_size` long)."""
        # (type, offset, vaddr, filesz) at these positions of Elf64_Phdr / Elf32_Phdr
        fmt, picks = ("IIQQQQQQ", (0, 2, 3, 5)) if self.wide else ("IIIIIIII", (0, 1, 2, 4))
        item = struct.Struct(self.order + fmt)
        out = Segments()
        if self.phentsize < item.size:
            return out
        for n in range(min(self.phnum, len(data) // self.phentsize)):
            values = item.unpack_from(data, n * self.phentsize)
            kind, offset, vaddr, size = (values[i] for i in picks)
            if kind == _PT_LOAD:
                out.loads.append((vaddr, offset, size))
            elif kind == _PT_DYNAMIC:
                out.dynamic = (offset, min(size, MAX_DYNAMIC))
            elif kind == _PT_INTERP:
                out.interp = (offset, min(size, 4096))
        return out

    def dynamic(self, data: bytes) -> Dynamic:
        """The entries of the ``PT_DYNAMIC`` segment in ``data`` that name libraries."""
        item = struct.Struct(self.order + ("qQ" if self.wide else "iI"))
        out = Dynamic()
        for n in range(len(data) // item.size):
            tag, value = item.unpack_from(data, n * item.size)
            if tag == _DT_NULL:
                break
            if tag == _DT_NEEDED and len(out.needed) < MAX_NEEDED:
                out.needed.append(value)
            elif tag in (_DT_RUNPATH, _DT_RPATH):
                out.runpath.append(value)
            elif tag == _DT_STRTAB:
                out.strtab = value
            elif tag == _DT_STRSZ:
                out.strsz = min(value, MAX_STRTAB)
        return out


@dataclass(slots=True)
class Segments:
    """Where the interpreter's name and the dynamic section are in the file."""

    loads: list[tuple[int, int, int]] = field(default_factory=list)  # vaddr, offset, size
    dynamic: tuple[int, int] | None = None  # offset, size
    interp: tuple[int, int] | None = None  # offset, size

    def file_offset(self, vaddr: int) -> int | None:
        """The file offset of virtual address ``vaddr`` (through the PT_LOAD segments)."""
        for start, offset, size in self.loads:
            if start <= vaddr < start + size:
                return offset + (vaddr - start)
        return None


@dataclass(slots=True)
class Dynamic:
    """``DT_NEEDED`` and runpath names (offsets in the string table) and where that is."""

    needed: list[int] = field(default_factory=list)
    runpath: list[int] = field(default_factory=list)
    strtab: int | None = None  # a virtual address
    strsz: int = 0


def parse_header(data: bytes) -> ElfHeader | None:
    """The header of an ELF executable or shared object starting ``data``; None if it
    is not one (or is not dynamic: no program headers)."""
    if len(data) < 52 or data[:4] != b"\x7fELF" or data[4] not in (1, 2) or data[5] not in (1, 2):
        return None
    wide, order = data[4] == 2, "<" if data[5] == 1 else ">"
    if wide:
        if len(data) < HEADER_SIZE:
            return None
        kind, machine, _, _, phoff, _, _, _, phentsize, phnum = struct.unpack_from(
            order + "HHIQQQIHHH", data, 16
        )
    else:
        kind, machine, _, _, phoff, _, _, _, phentsize, phnum = struct.unpack_from(
            order + "HHIIIIIHHH", data, 16
        )
    if kind not in (2, 3) or not 0 < phnum <= MAX_PHNUM or phentsize == 0:  # EXEC or DYN
        return None
    return ElfHeader(order, wide, machine, phoff, phentsize, phnum)


def string_at(table: bytes, offset: int) -> str | None:
    """The NUL-terminated string at ``offset`` of a string table; None if out of range."""
    if not 0 <= offset < len(table):
        return None
    end = table.find(b"\0", offset)
    raw = table[offset : end if end >= 0 else len(table)]
    return raw.decode("utf-8", "replace") if raw else None


def multiarch(machine: int) -> str | None:
    """Debian's multiarch triplet for ELF machine ``machine`` (None: not known here)."""
    return _MULTIARCH.get(machine)


def library_candidates(
    needed: list[str], runpath: list[str], origin: str, machine: int
) -> list[list[str]]:
    """For each needed library, the absolute paths the loader tries, in its order.

    ``origin``: the directory of the object that needs them (``$ORIGIN``). A name with
    a slash is a path; relative ones are left out (they depend on the working
    directory). ld.so.cache is not read: its directories are nearly always these.
    """
    dirs: list[str] = []
    for path in runpath:
        for part in path.split(":"):
            part = part.replace("${ORIGIN}", origin).replace("$ORIGIN", origin)
            if part.startswith("/"):
                dirs.append(posixpath.normpath(part))
    triplet = multiarch(machine)
    if triplet is not None:
        dirs += [f"/lib/{triplet}", f"/usr/lib/{triplet}"]
    dirs += _DEFAULT_DIRS
    out: list[list[str]] = []
    for name in needed:
        if "/" in name:
            if name.startswith("/"):
                out.append([name])
            continue
        out.append([f"{d}/{name}" for d in dict.fromkeys(dirs)])
    return out
