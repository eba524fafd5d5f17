"""Side tasks of a mount daemon, under one guard: a failing one is logged, never fatal.

The FUSE loop, the control socket, prefetch and opened-file fetches share one trio
nursery; an exception escaping any task there would cancel the FUSE loop and take
the mount down under a running container. Everything but the FUSE loop is started
through `SideTasks`, which logs the failure (with its traceback) and lets the mount
serve on without that task.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import trio

__all__ = ["SideTasks"]

log = logging.getLogger(__name__)


class SideTasks:
    """Start tasks in ``nursery`` so that an `Exception` from one is contained.

    Cancellation (and other `BaseException`) passes through, as trio needs.
    ``failures`` counts the tasks that failed (``fusesnap stats``: ``side_task_failures``).
    """

    def __init__(self, nursery: trio.Nursery) -> None:
        self._nursery = nursery
        self.failures = 0

    def start_soon(self, what: str, fn: Callable[..., Awaitable[object]], *args: Any) -> None:
        """Run ``fn(*args)`` in the background."""
        self._nursery.start_soon(self._guarded, what, fn, args)

    async def start(self, what: str, fn: Callable[..., Awaitable[object]], *args: Any) -> None:
        """Run ``fn(*args, task_status=...)`` and wait until it has started (or failed:
        then the daemon goes on without it)."""
        await self._nursery.start(self._guarded_start, what, fn, args)

    def _failed(self, what: str) -> None:
        """Log the exception being handled as the failure of side task ``what``."""
        self.failures += 1
        log.exception("%s failed; the mount keeps serving without it", what)

    async def _guarded(
        self, what: str, fn: Callable[..., Awaitable[object]], args: tuple[Any, ...]
    ) -> None:
        try:
            await fn(*args)
        except Exception:
            self._failed(what)

    async def _guarded_start(
        self,
        what: str,
        fn: Callable[..., Awaitable[object]],
        args: tuple[Any, ...],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        status = _Status(task_status)
        try:
            await fn(*args, task_status=status)
        except Exception:
            self._failed(what)
            if not status.done:
                task_status.started()


class _Status:
    """The task's `trio.TaskStatus`, remembering whether ``started`` was called."""

    def __init__(self, inner: trio.TaskStatus[None]) -> None:
        self._inner = inner
        self.done = False

    def started(self, value: None = None) -> None:
        self.done = True
        self._inner.started()
