"""The two worker pools: reads a request waits for are never queued behind bulk work."""

from __future__ import annotations

import threading

import trio
import trio.testing

from fusesnap.blocking import WORK_THREADS, read_limiter, run_blocking, run_read, work_limiter


async def test_a_read_finds_a_thread_while_bulk_work_fills_its_pool() -> None:
    release = threading.Event()
    finished: list[str] = []

    def bulk() -> None:
        assert release.wait(10)

    async def one_bulk() -> None:
        await run_blocking(bulk)
        finished.append("bulk")

    async with trio.open_nursery() as nursery:
        for _ in range(WORK_THREADS + 3):  # a full pool and a queue behind it
            nursery.start_soon(one_bulk)
        await trio.testing.wait_all_tasks_blocked()
        assert work_limiter().borrowed_tokens == WORK_THREADS
        assert work_limiter().statistics().tasks_waiting == 3
        assert await run_read(lambda: "read") == "read"
        finished.append("read")
        assert read_limiter().borrowed_tokens == 0
        release.set()
    assert finished[0] == "read"
    assert finished.count("bulk") == WORK_THREADS + 3


async def test_reads_and_bulk_work_have_a_pool_each() -> None:
    assert work_limiter() is work_limiter()
    assert read_limiter() is not work_limiter()
