"""The one way blocking work (LMDB, zlib, zstd, file I/O) leaves the trio loop.

Two pools of worker threads, so that one kind of work cannot queue the other:

- `run_read`: a read a FUSE request waits for (a chunk range from the local
  store: an LMDB lookup and one or two 64 KiB frames decoded). Short, and
  latency is everything.
- `run_blocking`: everything else (inflating fetched spans, hashing, compressing
  and writing chunks, index builds, metadata). A burst of cold spans fills this
  pool; warm reads still find a free thread in theirs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import trio

T = TypeVar("T")

WORK_THREADS = 8
READ_THREADS = 8

_WORK: trio.lowlevel.RunVar[trio.CapacityLimiter] = trio.lowlevel.RunVar("fusesnap_blocking")
_READS: trio.lowlevel.RunVar[trio.CapacityLimiter] = trio.lowlevel.RunVar("fusesnap_reads")


def _limiter(var: trio.lowlevel.RunVar[trio.CapacityLimiter], size: int) -> trio.CapacityLimiter:
    try:
        return var.get()
    except LookupError:
        limiter = trio.CapacityLimiter(size)
        var.set(limiter)
        return limiter


def work_limiter() -> trio.CapacityLimiter:
    """The pool `run_blocking` uses (this trio run's)."""
    return _limiter(_WORK, WORK_THREADS)


def read_limiter() -> trio.CapacityLimiter:
    """The pool `run_read` uses (this trio run's)."""
    return _limiter(_READS, READ_THREADS)


async def run_blocking(fn: Callable[..., T], *args: object) -> T:
    """Run ``fn(*args)`` in a worker thread, at most `WORK_THREADS` at once.

    Cancellation: the trio side is not cancellable while ``fn`` runs (it would
    abandon a thread in the middle of an LMDB transaction); keep ``fn`` short.
    """
    return await trio.to_thread.run_sync(fn, *args, limiter=work_limiter())


async def run_read(fn: Callable[..., T], *args: object) -> T:
    """Run a short read a request waits for (``fn(*args)``) in a worker thread of its own
    pool, at most `READ_THREADS` at once, never queued behind `run_blocking` work.

    Cancellation: as `run_blocking`.
    """
    return await trio.to_thread.run_sync(fn, *args, limiter=read_limiter())
