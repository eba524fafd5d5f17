"""The LMDB environment: one per process per store, and the one place where
lmdb's exceptions become `StoreError`.

py-lmdb refuses to open an environment twice in one process (LMDB's rule:
closing the second handle would drop the process's locks on the lock file),
yet a program may
open the same store from several places — a CLI command and a library call,
or several tests. So environments live in a process-wide registry keyed by
the real path of ``store.lmdb/``; each `Env` is a refcounted handle on one of
them, and the last `close()` closes the environment.

Concurrency: readers in other processes keep working while one process
writes (LMDB's MVCC with its lock file; the store is never opened with
``lock=False``). Writers, in any process, are serialized by LMDB's writer
mutex: a write transaction waits for the one in progress. py-lmdb raises if a
thread begins a second write transaction inside its first, which is why
`blobs`, `images` and `leases` also offer functions that take the caller's
transaction, for gc to compose. Opening a store takes the writer lock for a
moment (py-lmdb keeps named-database handles only from a write
transaction), so an open waits for a write in progress elsewhere; after
that, reads never wait.

After ``fork()`` an environment opened by the parent must not be used
(LMDB's rule), and py-lmdb will not open it again in the child: the child
gets a `StoreError` saying so, and should use the store from a fresh
process (fork + exec, ``subprocess``).
"""

from __future__ import annotations

import ctypes
import itertools
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import lmdb

from fusesnap.errors import StoreError, StoreFullError
from fusesnap.store.schema import DATABASES, ensure_schema

# LMDB on Linux maps this much address space but grows the data file only as
# pages are used (without MDB_WRITEMAP it never ftruncates to the map size),
# so a large default costs nothing and "map full" stays theoretical.
DEFAULT_MAP_SIZE = 1 << 40
MAX_DBS = 16
# One slot per concurrent read transaction, across all processes.
MAX_READERS = 512
LMDB_DIR = "store.lmdb"
INGEST_DIR = "ingest"


_LIBC = ctypes.CDLL(None, use_errno=True)
_DONTNEED = 4  # MADV_DONTNEED: a shared file mapping's pages are read again from the file


class Closing:
    """``with x:`` closes ``x`` on the way out; subclasses define `close`."""

    __slots__ = ()

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


@dataclass(eq=False, slots=True)
class _Shared:
    env: lmdb.Environment
    dbs: dict[bytes, Any]
    pid: int
    refs: int = 0


_REGISTRY: dict[str, _Shared] = {}
_REGISTRY_LOCK = threading.Lock()


def _after_fork_in_child() -> None:
    # A thread of the parent may have held the lock at fork time.
    global _REGISTRY_LOCK
    _REGISTRY_LOCK = threading.Lock()


os.register_at_fork(after_in_child=_after_fork_in_child)


def _forked(root: Path) -> StoreError:
    return StoreError(
        f"store at {root} was opened before fork(); LMDB cannot be used across fork, "
        "use the store from a new process"
    )


class Env:
    """A handle on a store's LMDB environment and ingest directory."""

    def __init__(self, root: Path, key: str, shared: _Shared) -> None:
        self.root = root
        self.path = root / LMDB_DIR
        self.ingest_dir = root / INGEST_DIR
        self._key = key
        self._shared: _Shared | None = shared

    def _live(self) -> _Shared:
        shared = self._shared
        if shared is None:
            raise StoreError(f"store at {self.root} is closed")
        if shared.pid != os.getpid():
            raise _forked(self.root)
        return shared

    def db(self, name: bytes) -> Any:
        return self._live().dbs[name]

    @contextmanager
    def txn(self, *, write: bool = False, buffers: bool = False) -> Iterator[lmdb.Transaction[Any]]:
        """A transaction that commits if the block succeeds, else aborts.

        With ``buffers=True`` values are memoryviews into the map, valid only
        inside the block: copy what you keep (saves copying a whole 1 MiB
        segment to return 4 KiB of it).
        """
        shared = self._live()
        try:
            txn: lmdb.Transaction[Any] = (
                shared.env.begin(write=write, buffers=True)
                if buffers
                else shared.env.begin(write=write)
            )
            with txn:
                yield txn
        except lmdb.MapFullError as exc:
            size = shared.env.info()["map_size"]
            raise StoreFullError(
                f"store at {self.root} is full (map size {size} bytes): "
                "run gc, or open it with a larger map_size"
            ) from exc
        except lmdb.Error as exc:
            if write and _disk_full(self.root, exc):
                raise StoreFullError(f"store at {self.root}: disk full ({exc})") from exc
            raise StoreError(f"store at {self.root}: {exc}") from exc

    def iter_items(
        self, name: bytes, *, prefix: bytes = b"", batch: int = 256
    ) -> Iterator[tuple[bytes, bytes]]:
        """Every (key, value) of one database, read ``batch`` at a time.

        Each batch has its own short read transaction: a consumer that holds
        the iterator for minutes (or resumes it in another thread) must not
        pin an old snapshot, which would keep LMDB from reusing freed pages
        and make the data file grow under a concurrent writer. The price is
        that the listing is not one snapshot; records are immutable or
        replaced whole, so each item is still consistent.
        """
        start = prefix
        while True:
            items: list[tuple[bytes, bytes]] = []
            with self.txn() as txn:
                cursor = txn.cursor(db=self.db(name))
                if not cursor.set_range(start):
                    return
                for key, value in cursor:
                    if not key.startswith(prefix):
                        break
                    items.append((key, value))
                    if len(items) >= batch:
                        break
            yield from items
            if len(items) < batch:
                return
            start = items[-1][0] + b"\0"

    def iter_keys(self, name: bytes, *, batch: int = 4096) -> Iterator[bytes]:
        """Every key of one database, ``batch`` per short read transaction
        (as `iter_items`), without reading a value: listing the chunk
        database must not copy every chunk."""
        start = b""
        while True:
            with self.txn() as txn:
                cursor = txn.cursor(db=self.db(name))
                if not cursor.set_range(start):
                    return
                keys = list(itertools.islice(cursor.iternext(values=False), batch))
            yield from keys
            if len(keys) < batch:
                return
            start = keys[-1] + b"\0"

    def release_mapped(self) -> int:
        """Drop this process's mapping of the store's pages it has read (they stay in
        the kernel's page cache; the next read maps them again): a long-lived reader
        (a mount daemon) would otherwise count every chunk it ever read as resident.
        Returns the bytes of address space advised (0 where that is not possible)."""
        data = os.path.realpath(self.path / "data.mdb")
        self._live()
        advised = 0
        try:
            maps = Path("/proc/self/maps").read_text().splitlines()
        except OSError:
            return 0
        for line in maps:
            fields = line.split(maxsplit=5)
            if len(fields) < 6 or fields[5] != data:
                continue
            start, end = (int(x, 16) for x in fields[0].split("-"))
            if _LIBC.madvise(ctypes.c_void_p(start), ctypes.c_size_t(end - start), _DONTNEED):
                continue
            advised += end - start
        return advised

    @property
    def map_size(self) -> int:
        """Address space reserved for the store; the data file is smaller."""
        return int(self._live().env.info()["map_size"])

    @property
    def closed(self) -> bool:
        return self._shared is None

    def close(self) -> None:
        """Drop this handle; the environment closes with the last one."""
        shared, self._shared = self._shared, None
        if shared is None:
            return
        with _REGISTRY_LOCK:
            shared.refs -= 1
            if shared.refs > 0 or shared.pid != os.getpid():
                return
            if _REGISTRY.get(self._key) is shared:
                del _REGISTRY[self._key]
        shared.env.close()


# A write that fails with EIO while less than this is free is taken for a full disk:
# LMDB reports a short write (what a full file system gives) as EIO.
LOW_SPACE = 64 << 20


def _disk_full(root: Path, exc: lmdb.Error) -> bool:
    """Whether a failed write looks like a full disk (ENOSPC, EDQUOT, or EIO with
    little space left)."""
    text = str(exc)
    if "No space left" in text or "quota exceeded" in text:
        return True
    if "Input/output error" not in text:
        return False
    try:
        fs = os.statvfs(root)
    except OSError:
        return False
    return fs.f_bavail * fs.f_frsize < LOW_SPACE


def any_open() -> bool:
    """Whether this process has a store open (then it must not fork a store user)."""
    with _REGISTRY_LOCK:
        return bool(_REGISTRY)


def open_env(root: Path, *, map_size: int = DEFAULT_MAP_SIZE) -> Env:
    """Open (or share) the environment under ``root``, creating it if new.

    A second open of the same root in this process shares the first
    environment; its ``map_size`` is then ignored.
    """
    root = Path(root)
    try:
        (root / INGEST_DIR).mkdir(parents=True, exist_ok=True)
        (root / LMDB_DIR).mkdir(exist_ok=True)
    except OSError as exc:
        raise StoreError(f"cannot create store at {root}: {exc.strerror}") from exc
    key = os.path.realpath(root / LMDB_DIR)
    with _REGISTRY_LOCK:
        shared = _REGISTRY.get(key)
        if shared is None:
            shared = _open_shared(root, map_size)
            _REGISTRY[key] = shared
        elif shared.pid != os.getpid():
            # py-lmdb would refuse a second open too (it remembers the
            # parent's environments); say why.
            raise _forked(root)
        shared.refs += 1
    return Env(root, key, shared)


def _open_shared(root: Path, map_size: int) -> _Shared:
    path = root / LMDB_DIR
    try:
        env = lmdb.open(
            str(path),
            map_size=map_size,
            subdir=True,
            max_dbs=MAX_DBS,
            max_readers=MAX_READERS,
            # Values are whole chunks (up to 1 MiB of contiguous overflow pages) that are
            # always read entirely: without readahead each costs ~256 page faults. Measured
            # on a cold mount: a 1 GiB sequential read 8.1 s -> 2.6 s, 2000 random 4 KiB
            # reads 15.4 s -> 3.1 s.
            readahead=True,
        )
    except lmdb.Error as exc:
        raise StoreError(f"cannot open store at {root}: {exc}") from exc
    try:
        # Frees reader slots left by processes that were killed mid-read, so
        # they neither run the table full nor pin old pages forever.
        env.reader_check()
        with env.begin(write=True) as txn:
            dbs = {name: env.open_db(name, txn=txn, create=True) for name in DATABASES}
            ensure_schema(txn, dbs, where=str(root))
    except lmdb.Error as exc:
        env.close()
        raise StoreError(f"cannot open store at {root}: {exc}") from exc
    except BaseException:
        env.close()
        raise
    return _Shared(env=env, dbs=dbs, pid=os.getpid())
