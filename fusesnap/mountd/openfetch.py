"""A lazy mount fetches what a process opens, and what the dynamic loader will open next.

A file a process opens is fetched whole in the background (up to `OPEN_FETCH_MAX`
bytes), in as few requests as its chunks allow: a binary or library is then paged
in by the kernel from local chunks instead of a round trip per fault.

If it is an ELF program or library, what its loader opens next is fetched the
same way, side by side, instead of one registry round trip after another: its
first chunk comes on its own request, and as soon as it is here the interpreter
it names (``PT_INTERP``) and, for glibc's loader, ``/etc/ld.so.cache`` are
fetched beside the rest of the file; once the whole file is here, its
``DT_NEEDED`` libraries, found as the loader finds them (`fusesnap.fs.elf`), and
theirs in turn. A program that is a language runtime known to
`fusesnap.fs.runtimes` brings the files it reads as it starts the same way,
beside its libraries. Once a file; best effort (a failure here is the reads' to say).
"""

from __future__ import annotations

import logging
import posixpath
from collections.abc import Sequence

import trio

from fusesnap.errors import FusesnapError
from fusesnap.fs import MergedTree, Node, chunk_slices, runtimes
from fusesnap.fs import elf as elfs
from fusesnap.image import resolve
from fusesnap.index import ChunkRef, Entry, EntryType, LayerIndex
from fusesnap.lazy import LazyChunks, PrefetchPlan, PrefetchResult, run_prefetch
from fusesnap.mountd.guard import SideTasks

__all__ = ["OPEN_FETCH_MAX", "STARTUP_FILES", "OpenedFiles"]

log = logging.getLogger(__name__)

# Opened files up to this size are fetched whole (unless --prefetch none).
OPEN_FETCH_MAX = 16 << 20

LD_SO_CACHE = "/etc/ld.so.cache"

# What nearly every container start reads, fetched as a mount comes up when there is
# nothing better to go by (no access profile, no landmark files): containerd reads the
# first two to resolve a container's user and groups; the C library reads the time zone
# (the file the link names) for a program's first local time; and the shell, an ELF
# program, brings the dynamic loader, ld.so.cache and the C library that every
# dynamically linked program of the image loads. A file the image lacks is skipped.
STARTUP_FILES = ("/etc/passwd", "/etc/group", "/etc/localtime", "/bin/sh")
# Of those, what containerd reads before the container exists, through a mount of its
# own (a profile recorded inside a container does not see it): fetched first always.
CONTAINERD_FILES = STARTUP_FILES[:2]
# How long the rest of the background fetches wait for those at most.
_FIRST_TIMEOUT = 5.0

# An ELF object's header and its program headers.
_Headers = tuple[elfs.ElfHeader, elfs.Segments]


class OpenedFiles:
    """`fetch` is the mount's ``on_open``: see the module docstring."""

    def __init__(
        self, lazy: LazyChunks, plan: PrefetchPlan, tasks: SideTasks, tree: MergedTree
    ) -> None:
        self._lazy, self._plan, self._tasks, self._tree = lazy, plan, tasks, tree
        self._seen: set[int] = set()

    def fetch(self, node: Node) -> None:
        """A process opened ``node``: fetch it whole."""
        self._fetch_file(node)

    def fetch_startup_files(self) -> None:
        """Fetch `STARTUP_FILES` (and what the shell links) as if they were opened."""
        for path in STARTUP_FILES:
            node = self._file_at(path)
            if node is not None and node.ino not in self._seen:
                self._plan.startup_files += 1
                self._fetch_file(node)

    async def fetch_first(self, paths: Sequence[str]) -> None:
        """Fetch the files at ``paths`` (start-up files) side by side; return once they
        are here, or could not be fetched."""
        async with trio.open_nursery() as nursery:
            for path in paths:
                node = self._file_at(path)
                if node is not None and self._claim(node):
                    self._plan.startup_files += 1
                    index = self._lazy.indexes[node.layer]
                    nursery.start_soon(self._run, index, node.entry)

    async def prefetch(self) -> None:
        """A mount's background fetches (`run_prefetch`: landmarks, profile); a container's
        root first brings what containerd reads before the container exists
        (`CONTAINERD_FILES`: the rest waits for them, so they come at once), then, with
        nothing better to go by, the rest of `STARTUP_FILES`."""
        plan, lazy = self._plan, self._lazy
        if plan.startup:
            with trio.move_on_after(_FIRST_TIMEOUT):
                await self.fetch_first(CONTAINERD_FILES)
            if plan.wants_startup_files(lazy):
                self.fetch_startup_files()
        await run_prefetch(lazy, plan)

    def _claim(self, node: Node) -> bool:
        """Whether ``node`` is to be fetched now (whole, once)."""
        entry = node.entry
        if node.ino in self._seen or not entry.chunks or entry.size > OPEN_FETCH_MAX:
            return False
        self._seen.add(node.ino)
        return True

    def _fetch_file(self, node: Node) -> None:
        if self._claim(node):
            what = f"fetching opened file {node.entry.path}"
            self._tasks.start_soon(what, self._run, self._lazy.indexes[node.layer], node.entry)

    def _file_at(self, path: str) -> Node | None:
        """The regular file at ``path`` (symlinks followed), if the image has one."""
        try:
            node = resolve(self._tree, path)
        except FusesnapError:
            return None
        return node if node.entry.type is EntryType.FILE else None

    async def _run(self, index: LayerIndex, entry: Entry) -> None:
        # The first chunk on its own: a program's loader wants its headers before the rest,
        # and they name the interpreter, which can then come beside the rest.
        rest = entry.chunks[1:]
        results: list[PrefetchResult] = []
        headers: list[_Headers] = []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._head, index, entry, results, headers)
            if rest:
                nursery.start_soon(self._fetch, index, rest, entry, results)
        if len(results) < 1 + bool(rest) or any(r.failed for r in results):
            return
        self._plan.opened_files += 1
        if headers:
            for node in await self._libraries(entry, *headers[0]):
                self._follow_node(node)

    async def _fetch(
        self,
        index: LayerIndex,
        refs: Sequence[ChunkRef],
        entry: Entry,
        results: list[PrefetchResult],
    ) -> None:
        assert self._lazy.fetcher is not None
        try:
            result = await self._lazy.fetcher.prefetch(index, refs)
        except FusesnapError as exc:  # the reads will say it
            log.debug("fetching opened %s: %s", entry.path, exc)
            return
        self._plan.fetched += result.fetched
        self._plan.failed += result.failed
        results.append(result)

    async def _head(
        self,
        index: LayerIndex,
        entry: Entry,
        results: list[PrefetchResult],
        headers: list[_Headers],
    ) -> None:
        """Fetch the first chunk; if it starts an ELF object, keep its headers in
        ``headers`` and fetch the interpreter it names, and ld.so.cache."""
        await self._fetch(index, entry.chunks[:1], entry, results)
        if not results or results[-1].failed:
            return
        found = await self._headers(entry)
        if found is None:
            return
        headers.append(found)
        if found[1].interp is None:
            return
        try:
            raw = await self._read(entry, *found[1].interp)
        except FusesnapError as exc:
            log.debug("reading the interpreter of %s: %s", entry.path, exc)
            return
        name = elfs.string_at(raw, 0)
        if name is not None and name.startswith("/"):
            self._follow(name)
            self._follow(LD_SO_CACHE)  # glibc's loader reads it first
        self._follow_runtime(entry, found[0])

    def _follow_runtime(self, entry: Entry, header: elfs.ElfHeader) -> None:
        """If program ``entry`` is a language runtime known to `fusesnap.fs.runtimes`,
        fetch the files it reads as it starts."""
        for candidates in runtimes.startup_candidates("/" + entry.path.lstrip("/"), header.machine):
            node = next(filter(None, map(self._file_at, candidates)), None)
            if node is not None and node.ino not in self._seen:
                self._plan.runtime_files += 1
                self._fetch_file(node)

    def _follow(self, path: str) -> None:
        """Fetch the file at ``path`` (if the image has one) as if it were opened."""
        node = self._file_at(path)
        if node is not None:
            self._follow_node(node)

    def _follow_node(self, node: Node) -> None:
        if node.ino not in self._seen:
            self._plan.linked_files += 1
            self._fetch_file(node)

    async def _read(self, entry: Entry, offset: int, size: int) -> bytes:
        """Bytes of ``entry`` (local by now: they were just fetched)."""
        parts = []
        for ref, lo, hi in chunk_slices(entry, offset, size):
            start, data = await self._lazy.read(ref.digest, lo, hi)
            parts.append(data[lo - start : hi - start])
        return b"".join(parts)

    async def _headers(self, entry: Entry) -> _Headers | None:
        """``entry``'s ELF header and program headers, if it is an ELF object."""
        try:
            header = elfs.parse_header(await self._read(entry, 0, elfs.HEADER_SIZE))
            if header is None:
                return None
            size = header.program_headers_size
            if size > elfs.MAX_PROGRAM_HEADERS:
                return None
            return header, header.segments(await self._read(entry, header.phoff, size))
        except FusesnapError as exc:
            log.debug("reading the ELF headers of %s: %s", entry.path, exc)
            return None

    async def _libraries(
        self, entry: Entry, header: elfs.ElfHeader, segments: elfs.Segments
    ) -> list[Node]:
        """The libraries the loader opens for ELF object ``entry``, each as the first of
        its candidates in search order that the image has."""
        if segments.dynamic is None:
            return []
        try:
            dynamic = header.dynamic(await self._read(entry, *segments.dynamic))
            table_at = None if dynamic.strtab is None else segments.file_offset(dynamic.strtab)
            if table_at is None or not dynamic.needed:
                return []
            table = await self._read(entry, table_at, dynamic.strsz or elfs.MAX_STRTAB)
        except FusesnapError as exc:
            log.debug("reading the dynamic section of %s: %s", entry.path, exc)
            return []
        needed = [s for s in (elfs.string_at(table, n) for n in dynamic.needed) if s]
        runpath = [s for s in (elfs.string_at(table, n) for n in dynamic.runpath) if s]
        origin = posixpath.dirname("/" + entry.path.lstrip("/"))
        out = []
        for candidates in elfs.library_candidates(needed, runpath, origin, header.machine):
            node = next(filter(None, map(self._file_at, candidates)), None)
            if node is not None:
                out.append(node)
        return out
