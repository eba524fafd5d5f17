"""What a chunk fetcher may spend (`FetchLimits`, `Pace`) and what it did (`FetchStats`,
`PrefetchResult`)."""

from __future__ import annotations

from dataclasses import dataclass

import trio

__all__ = ["FetchLimits", "FetchStats", "Pace", "PrefetchResult", "Tally"]


@dataclass(frozen=True, slots=True)
class FetchLimits:
    """How the fetcher may use the registry.

    ``max_parallel`` requests at once; a merged request spans at most
    ``max_request`` blob bytes, bridges holes of at most ``max_gap`` bytes and
    (gzip) inflates at most ``max_inflate`` bytes; each request (with its
    decoding) must finish within ``timeout`` seconds. `ChunkFetcher.prefetch`
    uses at most ``prefetch_parallel`` of the request slots, so reads always
    find some free.
    """

    max_parallel: int = 8
    max_request: int = 8 << 20
    max_gap: int = 256 << 10
    max_inflate: int = 32 << 20
    timeout: float = 60.0
    prefetch_parallel: int = 4

    def __post_init__(self) -> None:
        if min(self.max_parallel, self.max_request, self.prefetch_parallel) < 1:
            raise ValueError("FetchLimits: max_parallel, max_request, prefetch_parallel >= 1")
        if self.max_gap < 0 or self.timeout <= 0:
            raise ValueError("FetchLimits: max_gap >= 0 and timeout > 0")


@dataclass(slots=True)
class FetchStats:
    """Counters since the fetcher opened (``fusesnap stats``)."""

    requests: int = 0  # range requests issued
    bytes_fetched: int = 0  # blob (compressed) bytes received
    chunks_fetched: int = 0  # chunks asked for, fetched and verified
    chunks_extra: int = 0  # neighbours verified from the same requests, unasked
    windows_fetched: int = 0  # gzip windows fetched from a windows blob
    chunks_from_store: int = 0  # chunks asked for that the store already had
    spans_from_store: int = 0  # zTOC spans (SOCI layers) read from the store, not fetched
    single_flight_waits: int = 0  # chunks asked for while already on their way
    verify_failures: int = 0  # chunks whose bytes did not match their digest
    failures: int = 0  # requests that failed or timed out
    chunks_stored: int = 0  # fetched chunks written to the store (in the background)
    store_batches: int = 0  # the write transactions that took them
    store_failures: int = 0  # fetched chunks that could not be stored (fetched again later)
    store_skipped: int = 0  # fetched chunks not stored: no room under the cache limit
    evicted_chunks: int = 0  # chunks evicted to make room (cache limit, full disk)
    evicted_bytes: int = 0  # their stored bytes


@dataclass(frozen=True, slots=True)
class PrefetchResult:
    """What a `ChunkFetcher.prefetch` did: of ``chunks`` (distinct) asked for, how many
    were stored before, how many are stored now (``fetched``: by this prefetch or by a
    fetch it joined) and how many failed (``first_error``: one of the failures)."""

    chunks: int
    already_stored: int
    fetched: int
    failed: int
    first_error: Exception | None = None


@dataclass(slots=True)
class Tally:
    """What a prefetch has done so far."""

    fetched: int = 0
    failed: int = 0
    first_error: Exception | None = None


class Pace:
    """Start requests no faster than ``rate`` bytes a second (None: at once)."""

    def __init__(self, rate: float | None) -> None:
        if rate is not None and rate <= 0:
            raise ValueError("rate_limit_bytes_per_s must be positive")
        self._rate = rate
        self._start = trio.current_time()
        self._sent = 0

    async def wait(self, nbytes: int) -> None:
        if self._rate is not None:
            await trio.sleep_until(self._start + self._sent / self._rate)
        self._sent += nbytes
