"""`fusesnap.fs.elf`: the interpreter and libraries an ELF object makes the loader open."""

from __future__ import annotations

import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from fusesnap.fs import elf


def _links(data: bytes) -> tuple[str | None, list[str], list[str]]:
    """(interpreter, needed, runpath) as a mount reads them: in the module's steps."""
    header = elf.parse_header(data[: elf.HEADER_SIZE])
    assert header is not None
    segments = header.segments(data[header.phoff : header.phoff + header.program_headers_size])
    interp = None
    if segments.interp is not None:
        off, size = segments.interp
        interp = elf.string_at(data[off : off + size], 0)
    if segments.dynamic is None:
        return interp, [], []
    off, size = segments.dynamic
    dynamic = header.dynamic(data[off : off + size])
    assert dynamic.strtab is not None
    at = segments.file_offset(dynamic.strtab)
    assert at is not None
    table = data[at : at + dynamic.strsz]
    needed = [elf.string_at(table, n) or "?" for n in dynamic.needed]
    runpath = [elf.string_at(table, n) or "?" for n in dynamic.runpath]
    return interp, needed, runpath


def _elf(*, wide: bool, order: str, needed: list[str], runpath: str | None) -> bytes:
    """A minimal shared object: a PT_INTERP, a PT_LOAD mapping the file at 0x400000 and a
    PT_DYNAMIC whose DT_STRTAB is a virtual address in that load."""
    strtab = b"\0"
    offsets = []
    for name in [*needed, *([runpath] if runpath else [])]:
        offsets.append(len(strtab))
        strtab += name.encode() + b"\0"
    interp = b"/lib/ld-test.so.1\0"
    ehsize, phentsize = (64, 56) if wide else (52, 32)
    phoff, phnum = ehsize, 3
    interp_at = phoff + phentsize * phnum
    strtab_at = interp_at + len(interp)
    dyn_at = strtab_at + len(strtab)
    base = 0x400000
    dyn = [(1, off) for off in offsets[: len(needed)]]
    if runpath:
        dyn.append((29, offsets[-1]))
    dyn += [(5, base + strtab_at), (10, len(strtab)), (0, 0)]
    dyn_item = order + ("qQ" if wide else "iI")
    dyn_bytes = b"".join(struct.pack(dyn_item, t, v) for t, v in dyn)
    total = dyn_at + len(dyn_bytes)
    ident = b"\x7fELF" + bytes([2 if wide else 1, 1 if order == "<" else 2, 1]) + bytes(9)
    if wide:
        head = struct.pack(
            order + "HHIQQQIHHHHHH", 3, 62, 1, 0, phoff, 0, 0, ehsize, phentsize, phnum, 0, 0, 0
        )
        ph = order + "IIQQQQQQ"
        phdrs = [
            struct.pack(ph, 3, 4, interp_at, base + interp_at, 0, len(interp), len(interp), 1),
            struct.pack(ph, 1, 5, 0, base, 0, total, total, 0x1000),
            struct.pack(ph, 2, 6, dyn_at, base + dyn_at, 0, len(dyn_bytes), len(dyn_bytes), 8),
        ]
    else:
        head = struct.pack(
            order + "HHIIIIIHHHHHH", 3, 3, 1, 0, phoff, 0, 0, ehsize, phentsize, phnum, 0, 0, 0
        )
        ph = order + "IIIIIIII"
        phdrs = [
            struct.pack(ph, 3, interp_at, base + interp_at, 0, len(interp), len(interp), 4, 1),
            struct.pack(ph, 1, 0, base, 0, total, total, 5, 0x1000),
            struct.pack(ph, 2, dyn_at, base + dyn_at, 0, len(dyn_bytes), len(dyn_bytes), 6, 4),
        ]
    data = ident + head + b"".join(phdrs) + interp + strtab + dyn_bytes
    assert len(data) == total
    return data


@pytest.mark.parametrize(("wide", "order"), [(True, "<"), (False, "<"), (True, ">"), (False, ">")])
def test_interpreter_needed_libraries_and_runpath(wide: bool, order: str) -> None:
    data = _elf(wide=wide, order=order, needed=["libz.so.1", "libc.so.6"], runpath="$ORIGIN/../x")
    assert _links(data) == ("/lib/ld-test.so.1", ["libz.so.1", "libc.so.6"], ["$ORIGIN/../x"])


def test_a_real_program_of_this_machine() -> None:
    ls = Path(shutil.which("ls") or "/bin/ls").resolve()
    interp, needed, _ = _links(ls.read_bytes())
    assert interp is not None
    assert "ld-linux" in interp
    assert "libc.so.6" in needed
    ldd = subprocess.run(["ldd", str(ls)], capture_output=True, text=True, check=True).stdout
    listed = {line.split()[0] for line in ldd.splitlines() if "=>" in line}
    assert set(needed) <= listed  # ldd lists the libraries' own needs too


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x7fELF",
        b"#!/bin/sh\n" + bytes(100),
        b"\x7fELF\x03\x01" + bytes(100),  # no such class
        b"\x7fELF\x02\x01\x01" + bytes(9) + struct.pack("<HH", 1, 62) + bytes(100),  # ET_REL
    ],
)
def test_what_is_not_a_dynamic_elf_object_has_no_header(data: bytes) -> None:
    assert elf.parse_header(data) is None


def test_truncated_or_hostile_tables_give_less_not_errors() -> None:
    data = _elf(wide=True, order="<", needed=["libz.so.1"], runpath=None)
    header = elf.parse_header(data[:64])
    assert header is not None
    assert header.segments(b"\xff" * 7).loads == []  # shorter than one program header
    segments = header.segments(data[header.phoff : header.phoff + header.program_headers_size])
    assert segments.file_offset(0x10) is None  # outside every PT_LOAD
    dynamic = header.dynamic(b"\x01" * 5)  # shorter than one entry
    assert dynamic.needed == []
    assert dynamic.strtab is None
    assert elf.string_at(b"abc\0", 10) is None
    assert elf.string_at(b"abc", 1) == "bc"  # no NUL: to the end


def test_library_candidates_follow_the_loader_order() -> None:
    got = elf.library_candidates(
        ["libfoo.so", "/opt/abs.so", "rel/x.so"],
        ["$ORIGIN/../lib:/opt/lib:relative"],
        "/app/bin",
        62,
    )
    assert got[0][:4] == [
        "/app/lib/libfoo.so",
        "/opt/lib/libfoo.so",
        "/lib/x86_64-linux-gnu/libfoo.so",
        "/usr/lib/x86_64-linux-gnu/libfoo.so",
    ]
    assert "/usr/lib/libfoo.so" in got[0]
    assert got[1] == ["/opt/abs.so"]
    assert len(got) == 2  # a relative path depends on the working directory: left out
