"""The one way blocking work (LMDB, zlib, zstd, file I/O) leaves the trio loop."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import trio

T = TypeVar("T")

_LIMITER: trio.lowlevel.RunVar[trio.CapacityLimiter] = trio.lowlevel.RunVar("fusesnap_blocking")


def _get_limiter() -> trio.CapacityLimiter:
    try:
        return _LIMITER.get()
    except LookupError:
        limiter = trio.CapacityLimiter(8)
        _LIMITER.set(limiter)
        return limiter


async def run_blocking(fn: Callable[..., T], *args: object) -> T:
    """Run ``fn(*args)`` in a worker thread, at most 8 at once.

    Cancellation: the trio side is not cancellable while ``fn`` runs (it would
    abandon a thread in the middle of an LMDB transaction); keep ``fn`` short.
    """
    return await trio.to_thread.run_sync(fn, *args, limiter=_get_limiter())
