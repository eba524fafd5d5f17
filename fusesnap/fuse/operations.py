"""The pyfuse3 Operations class: FUSE requests mapped onto a `MountSource`.

Thin by design: names, nodes and bytes come from the source
(`fusesnap.fuse.source`), attributes from `fusesnap.fuse.attrs`; this module
only translates, counts and guards.

One translation point: every handler is wrapped once (`_handler`). Only
`pyfuse3.FUSEError` leaves a handler, because pyfuse3 lets any other
exception end the whole mount::

    NotFoundError                     ENOENT (EIO for a read: a missing chunk)
    NotADirectoryError, IsADirectoryError   their errno
    any write, create, setattr, xattr change   EROFS
    LayerError, StoreError, other FusesnapError   EIO, logged (message only)
    anything else                     EIO, logged with its traceback

Caching: the tree is immutable, so the kernel may keep everything. Entries and
attributes are valid for `CACHE_TIMEOUT`, misses are negative entries, readdir
replies are readdirplus (pyfuse3 always uses it: each entry carries its
attributes), and files open with ``keep_cache`` (``direct_io`` off), so a
second ``cat`` of a file and a second ``ls -lR`` are served by the kernel
(but for open, opendir/readdir and readlink, which pyfuse3 3.5 keeps in Python: its
``fuse_init`` never sets FUSE_CAP_CACHE_SYMLINKS, its opendir reply cannot set
``cache_readdir``, and the kernel's zero-message opens, which an ENOSYS answer to
open/opendir would turn on with FOPEN_KEEP_CACHE | FOPEN_CACHE_DIR, leave the file
handle 0, while pyfuse3 hands `read` and `readdir` the file handle only, not the inode).
A tree without any extended attribute answers the first getxattr with ENOSYS:
the kernel then answers every later one itself, with EOPNOTSUPP where a disk
would say ENODATA ("no such attribute"), instead of asking the daemon twice
per file for ``ls -l`` and on every lookup of an overlayfs using the mount.

Mounting: `mount_options` (always ``ro`` and ``default_permissions``, so the
kernel enforces the image's modes), `fuse_session` (``pyfuse3.init`` ...
``pyfuse3.close``), `serve` (the request loop, until unmounted or `terminate`).
pyfuse3 keeps one session per process.
"""

from __future__ import annotations

import errno
import functools
import logging
import os
from collections import Counter
from collections.abc import Callable, Coroutine, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, TypeVar

import pyfuse3
import trio

from fusesnap.errors import FusesnapError, NotFoundError
from fusesnap.fs import Node
from fusesnap.fuse.attrs import CACHE_TIMEOUT, entry_attributes, negative_entry, statvfs
from fusesnap.fuse.handover import Handover, fuse_descriptors, take_init
from fusesnap.fuse.lookups import LookupCounts
from fusesnap.fuse.source import MountSource
from fusesnap.index import EntryType

__all__ = [
    "FuseOperations",
    "RequestStats",
    "fuse_session",
    "mount_options",
    "serve",
    "terminate",
]

log = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")

# Raised on purpose by the tree and the source with the errno a caller should see.
_PASSTHROUGH_ERRORS = (NotADirectoryError, IsADirectoryError)


class RequestStats:
    """What the kernel asked and how it went (counters only; read with `snapshot`)."""

    def __init__(self) -> None:
        self.requests: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()  # "op:ERRNO_NAME"
        self.bytes_read = 0
        self.negative_lookups = 0

    def failed(self, op: str, code: int) -> None:
        self.errors[f"{op}:{errno.errorcode.get(code, code)}"] += 1

    def snapshot(self) -> dict[str, Any]:
        return {
            "requests": dict(sorted(self.requests.items())),
            "requests_total": sum(self.requests.values()),
            "errors": dict(sorted(self.errors.items())),
            "bytes_read": self.bytes_read,
            "negative_lookups": self.negative_lookups,
        }


def _errno_for(op: str, exc: Exception, not_found: int) -> int:
    if isinstance(exc, NotFoundError):
        if not_found == errno.EIO:
            log.error("%s: %s", op, exc)
        return not_found
    if isinstance(exc, _PASSTHROUGH_ERRORS) and exc.errno:
        return exc.errno
    if isinstance(exc, FusesnapError):
        log.error("%s: %s", op, exc)  # the message names the object; no traceback needed
    else:
        log.exception("%s: unexpected error", op)
    return errno.EIO


def _handler(
    op: str, *, not_found: int = errno.ENOENT, expected: tuple[int, ...] = ()
) -> Callable[
    [Callable[Concatenate[FuseOperations, P], Coroutine[Any, Any, T]]],
    Callable[Concatenate[FuseOperations, P], Coroutine[Any, Any, T]],
]:
    """Count request ``op`` and let only `pyfuse3.FUSEError` out (module docstring).

    Answers with an errno in ``expected`` (such as "no such xattr") are normal
    replies, not counted as errors.
    """

    def wrap(
        fn: Callable[Concatenate[FuseOperations, P], Coroutine[Any, Any, T]],
    ) -> Callable[Concatenate[FuseOperations, P], Coroutine[Any, Any, T]]:
        @functools.wraps(fn)
        async def handle(self: FuseOperations, *args: P.args, **kwargs: P.kwargs) -> T:
            self.stats.requests[op] += 1
            try:
                return await fn(self, *args, **kwargs)
            except pyfuse3.FUSEError as exc:
                if exc.errno not in expected:
                    self.stats.failed(op, exc.errno)
                raise
            except Exception as exc:
                code = _errno_for(op, exc, not_found)
                self.stats.failed(op, code)
                raise pyfuse3.FUSEError(code) from None

        return handle

    return wrap


class FuseOperations(pyfuse3.Operations):
    """Serve ``source`` read-only; ``stats`` counts requests, ``lookups`` kernel references.

    File and directory handles are inode numbers: an open file has no state
    beyond its inode in an immutable tree.
    """

    supports_dot_lookup = True
    enable_writeback_cache = False
    enable_acl = False

    def __init__(
        self, source: MountSource | None = None, *, timeout: float = CACHE_TIMEOUT
    ) -> None:
        super().__init__()
        self._source = source  # may come after the mount, before `serve`
        self.timeout = timeout
        self.stats = RequestStats()
        self.lookups = LookupCounts()
        # Told of every regular file a process opens (a lazy mount fetches it ahead).
        self.on_open: Callable[[Node], None] | None = None
        # Called when libfuse has the connection's INIT (`fusesnap.fuse.handover`).
        self.on_init: Callable[[], None] | None = None
        # Set when libfuse has the INIT; a task it wakes runs after the reply is sent
        # (libfuse answers in the same synchronous call), so the kernel is answering.
        self.initialized = trio.Event()

    @property
    def source(self) -> MountSource:
        """What is served (`RuntimeError` before it is given)."""
        if self._source is None:
            raise RuntimeError("the filesystem has no source yet")
        return self._source

    @source.setter
    def source(self, source: MountSource) -> None:
        self._source = source

    def init(self) -> None:
        if self.on_init is not None:
            self.on_init()
        self.initialized.set()

    def _attributes(self, ino: int) -> pyfuse3.EntryAttributes:
        return entry_attributes(self.source.node(ino), timeout=self.timeout)

    @_handler("lookup")
    async def lookup(
        self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        node = self.source.lookup(parent_inode, os.fsdecode(name))
        if node is None:
            self.stats.negative_lookups += 1
            return negative_entry(timeout=self.timeout)
        attr = entry_attributes(node, timeout=self.timeout)
        self.lookups.add(node.ino)
        return attr

    async def forget(self, inode_list: Sequence[tuple[int, int]]) -> None:
        # No request to answer: must not raise at all, not even FUSEError.
        self.stats.requests["forget"] += 1
        try:
            for ino, n in inode_list:
                self.lookups.forget(ino, n)
        except Exception:
            log.exception("forget")

    @_handler("getattr")
    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        return self._attributes(inode)

    @_handler("readlink")
    async def readlink(self, inode: int, ctx: pyfuse3.RequestContext) -> bytes:
        entry = self.source.node(inode).entry
        if entry.type is not EntryType.SYMLINK:
            raise pyfuse3.FUSEError(errno.EINVAL)
        return os.fsencode(entry.linkname)

    @_handler("open")
    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        if flags & os.O_ACCMODE != os.O_RDONLY:
            raise pyfuse3.FUSEError(errno.EROFS)
        node = self.source.node(inode)
        if node.is_dir:
            raise pyfuse3.FUSEError(errno.EISDIR)
        if self.on_open is not None:
            self.on_open(node)
        return pyfuse3.FileInfo(fh=inode, keep_cache=True, direct_io=False)

    @_handler("read", not_found=errno.EIO)
    async def read(self, fh: int, off: int, size: int) -> bytes:
        data = await self.source.read(self.source.node(fh), off, size)
        self.stats.bytes_read += len(data)
        return data

    @_handler("release")
    async def release(self, fh: int) -> None:
        return None

    @_handler("opendir")
    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        if not self.source.node(inode).is_dir:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        return inode

    @_handler("readdir")
    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        for offset, (name, node) in enumerate(self.source.entries(fh, start_id), start_id):
            attr = entry_attributes(node, timeout=self.timeout)
            if not pyfuse3.readdir_reply(token, os.fsencode(name), attr, offset + 1):
                break
            if offset >= 2:  # readdirplus counts as a lookup, except for "." and ".."
                self.lookups.add(node.ino)

    @_handler("releasedir")
    async def releasedir(self, fh: int) -> None:
        return None

    @_handler("statfs")
    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        return statvfs(self.source.stats, self.source.inode_count)

    @_handler("getxattr", expected=(pyfuse3.ENOATTR, errno.ENOSYS))
    async def getxattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> bytes:
        if not self.source.has_xattrs:
            # The kernel then answers every getxattr itself (EOPNOTSUPP) instead of asking
            # for each file (ls -l asks twice per file, overlayfs on every lookup).
            raise pyfuse3.FUSEError(errno.ENOSYS)
        value = self.source.node(inode).entry.xattrs.get(os.fsdecode(name))
        if value is None:
            raise pyfuse3.FUSEError(pyfuse3.ENOATTR)
        return value

    @_handler("listxattr")
    async def listxattr(self, inode: int, ctx: pyfuse3.RequestContext) -> list[bytes]:
        return [os.fsencode(name) for name in self.source.node(inode).entry.xattrs]

    # Read-only: every request that would change something. The "ro" mount option makes
    # the kernel refuse most of them first; these answer the rest (and a mount without it).

    @_handler("setattr")
    async def setattr(
        self,
        inode: int,
        attr: pyfuse3.EntryAttributes,
        fields: pyfuse3.SetattrFields,
        fh: int | None,
        ctx: pyfuse3.RequestContext,
    ) -> pyfuse3.EntryAttributes:
        raise _read_only()

    @_handler("mknod")
    async def mknod(
        self, parent_inode: int, name: bytes, mode: int, rdev: int, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        raise _read_only()

    @_handler("mkdir")
    async def mkdir(
        self, parent_inode: int, name: bytes, mode: int, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        raise _read_only()

    @_handler("unlink")
    async def unlink(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        raise _read_only()

    @_handler("rmdir")
    async def rmdir(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        raise _read_only()

    @_handler("symlink")
    async def symlink(
        self, parent_inode: int, name: bytes, target: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        raise _read_only()

    @_handler("rename")
    async def rename(
        self,
        parent_inode_old: int,
        name_old: bytes,
        parent_inode_new: int,
        name_new: bytes,
        flags: int,
        ctx: pyfuse3.RequestContext,
    ) -> None:
        raise _read_only()

    @_handler("link")
    async def link(
        self, inode: int, new_parent_inode: int, new_name: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        raise _read_only()

    @_handler("write")
    async def write(self, fh: int, off: int, buf: bytes) -> int:
        raise _read_only()

    @_handler("create")
    async def create(
        self, parent_inode: int, name: bytes, mode: int, flags: int, ctx: pyfuse3.RequestContext
    ) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        raise _read_only()

    @_handler("setxattr")
    async def setxattr(
        self, inode: int, name: bytes, value: bytes, ctx: pyfuse3.RequestContext
    ) -> None:
        raise _read_only()

    @_handler("removexattr")
    async def removexattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        raise _read_only()


def _read_only() -> pyfuse3.FUSEError:
    return pyfuse3.FUSEError(errno.EROFS)


def mount_options(*, allow_other: bool = False, fsname: str = "fusesnap") -> set[str]:
    """FUSE mount options: read-only, kernel permission checks, ``fuse.fusesnap`` type."""
    options = set(pyfuse3.default_options)
    options |= {"ro", "default_permissions", f"fsname={fsname}", "subtype=fusesnap"}
    if allow_other:
        options.add("allow_other")
    return options


@contextmanager
def fuse_session(
    ops: FuseOperations,
    mountpoint: Path,
    options: set[str],
    *,
    hold: Callable[[int, bytes], None] | None = None,
    takeover: Handover | None = None,
) -> Iterator[None]:
    """Mount ``ops`` at ``mountpoint`` for the block, unmount (lazily) after it.

    Must be entered outside trio (``pyfuse3.init`` mounts synchronously);
    run `serve` inside the block. `RuntimeError` if the mount fails.

    ``hold``: given a descriptor of the new connection and its INIT request
    (`fusesnap.fuse.handover`), to keep for a daemon that takes over.
    ``takeover``: serve that connection, already mounted at ``mountpoint``, instead
    of mounting (the block's end does not unmount it).
    """
    if takeover is not None:
        ops.on_init = takeover.swap
        pyfuse3.init(ops, f"/dev/fd/{takeover.start()}", options)
    else:
        before = fuse_descriptors()
        pyfuse3.init(ops, str(mountpoint), options)
    try:
        if takeover is None and hold is not None:
            (number,) = fuse_descriptors() - before
            fuse_fd = os.dup(number)
            handover = Handover(fuse_fd, take_init(fuse_fd))
            hold(fuse_fd, handover.init)
            handover.start(number)
            ops.on_init = handover.swap
        yield
    finally:
        pyfuse3.close(unmount=True)


async def serve() -> None:
    """Answer requests until the filesystem is unmounted or `terminate` is called.

    Concurrency: pyfuse3 starts up to 99 request tasks on this loop; handlers
    that wait (chunk loads) let the others run.
    """
    await pyfuse3.main(max_tasks=99)


def terminate() -> None:
    """End `serve` (from a task on its loop); the mount itself goes when the session closes."""
    pyfuse3.terminate()
