"""A mount daemon's memory: the kernel's page cache is the cache.

Files are opened with ``keep_cache``, so the kernel keeps what was read and a read it
can answer never reaches the daemon; the daemon's own chunk LRU is small
(`fusesnap.fuse.cache.DEFAULT_MAX_BYTES`). What would still grow with every byte ever
read is given back after each burst of reads (`run_trim`): the pages of the store's
LMDB map the daemon has touched (they stay in the page cache, unmapped from the
daemon), and the heap that fetches and decodes freed but glibc kept (``malloc_trim``,
over at most `ARENAS` heaps).
"""

from __future__ import annotations

import ctypes
import logging
from collections.abc import Callable

import trio

from fusesnap.blocking import run_blocking
from fusesnap.store import Store

__all__ = ["TRIM_INTERVAL", "limit_arenas", "run_trim", "trim"]

log = logging.getLogger(__name__)

TRIM_INTERVAL = 5.0
ARENAS = 2
_M_ARENA_MAX = -8

_LIBC = ctypes.CDLL(None, use_errno=True)


def limit_arenas() -> None:
    """At most `ARENAS` glibc heaps however many worker threads there are (glibc's
    default is eight per core, each keeping what it freed): call before any thread."""
    mallopt = getattr(_LIBC, "mallopt", None)  # glibc only
    if mallopt is not None:
        mallopt(_M_ARENA_MAX, ARENAS)


def trim(store: Store) -> None:
    """(blocking) Give back mapped store pages and the heap's free memory."""
    store.env.release_mapped()
    malloc_trim = getattr(_LIBC, "malloc_trim", None)  # glibc only
    if malloc_trim is not None:
        malloc_trim(0)


async def run_trim(
    store: Store,
    activity: Callable[[], int],
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """`trim` once after each burst of reads: when ``activity()`` has not changed for
    `TRIM_INTERVAL` seconds, and changed since the last trim. Never during a burst
    (``malloc_trim`` holds the heap's lock), never again while idle."""
    task_status.started()
    last = trimmed = activity()
    while True:
        await trio.sleep(TRIM_INTERVAL)
        now = activity()
        if now == last and now != trimmed:
            trimmed = now
            await run_blocking(trim, store)
        last = now
