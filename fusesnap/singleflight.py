"""Single flight: concurrent requests for the same key share one piece of work.

The first task to `SingleFlight.claim` a key gets a new `Flight` and must
resolve it (`Flight.resolve` or `Flight.fail`); every later claim of that key,
until then, gets the same flight to `Flight.wait` on. A resolved flight leaves
the table at once, so nothing is cached here: the next claim starts afresh
(a failure is never remembered).

Concurrency: trio only, one event loop; a claim is synchronous, so checking
the table and joining or starting a flight cannot interleave with another task.
"""

from __future__ import annotations

import copy
from collections.abc import Hashable, Iterable
from typing import Generic, TypeVar

import trio

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

__all__ = ["Flight", "SingleFlight"]


class Flight(Generic[K, V]):
    """One piece of work in progress; any number of tasks may wait for its outcome."""

    __slots__ = ("_done", "_error", "_key", "_table", "_value")

    def __init__(self, table: dict[K, Flight[K, V]], key: K) -> None:
        self._table = table
        self._key = key
        self._done = trio.Event()
        self._value: V | None = None
        self._error: BaseException | None = None

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def resolve(self, value: V) -> None:
        """Hand ``value`` to every waiter (no-op if already resolved)."""
        if not self._done.is_set():
            self._value = value
            self._finish()

    def fail(self, error: BaseException) -> None:
        """Raise (a copy of) ``error`` in every waiter (no-op if already resolved)."""
        if not self._done.is_set():
            self._error = error
            self._finish()

    def _finish(self) -> None:
        if self._table.get(self._key) is self:
            del self._table[self._key]
        self._done.set()

    async def wait(self) -> V:
        """The value, or the flight's error raised anew (chained to the original).

        Cancellation: cancelling a waiter only stops it waiting; the flight goes on.
        """
        await self._done.wait()
        if self._error is not None:
            raise _fresh(self._error) from self._error
        return self._value  # type: ignore[return-value]


def _fresh(error: BaseException) -> BaseException:
    """A copy of ``error`` to raise in one more task (a raised exception collects a
    traceback, so one object must not be raised by many tasks at once)."""
    try:
        return copy.copy(error).with_traceback(None)
    except Exception:  # an exception class that does not copy: raise a plain one
        return RuntimeError(str(error))


class SingleFlight(Generic[K, V]):
    """The table of flights in progress, by key."""

    def __init__(self) -> None:
        self._flights: dict[K, Flight[K, V]] = {}

    def __len__(self) -> int:
        return len(self._flights)

    def __contains__(self, key: object) -> bool:
        return key in self._flights

    def get(self, key: K) -> Flight[K, V] | None:
        return self._flights.get(key)

    def claim(self, keys: Iterable[K]) -> tuple[dict[K, Flight[K, V]], dict[K, Flight[K, V]]]:
        """``(new, joined)``: flights this caller now owns and must resolve, and flights
        already in progress for the other keys."""
        new: dict[K, Flight[K, V]] = {}
        joined: dict[K, Flight[K, V]] = {}
        for key in keys:
            flight = self._flights.get(key)
            if flight is not None:
                if key not in new:
                    joined[key] = flight
                continue
            flight = Flight(self._flights, key)
            self._flights[key] = flight
            new[key] = flight
        return new, joined
