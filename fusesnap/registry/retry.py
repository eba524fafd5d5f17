"""Retrying registry requests: what is worth another attempt, and how long to wait.

One *attempt* is a whole operation (auth, request, reading the body), so a
download that drops mid-body resumes in the next attempt from wherever the
caller's sink got to. Worth retrying: connection/read/write errors, timeouts,
protocol errors from the server, HTTP 429 and 500/502/503/504. Everything else
(404, 401, a digest mismatch) fails at once.
"""

from __future__ import annotations

import email.utils
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

import httpx
import trio

from fusesnap.errors import RegistryUnavailableError

log = logging.getLogger(__name__)

T = TypeVar("T")

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})

# Failures on the way to the server or back; LocalProtocolError / UnsupportedProtocol
# are our own mistakes and would fail the same way again.
RETRY_EXCEPTIONS: tuple[type[BaseException], ...] = (
    httpx.TimeoutException,
    httpx.NetworkError,
    httpx.RemoteProtocolError,
)


class RetryableError(Exception):
    """An attempt failed in a way that another attempt may not (a 503, a short body).

    Internal to `fusesnap.lazy`: `with_retries` turns it into
    `RegistryUnavailableError` when the budget runs out.
    """

    def __init__(self, cause: str, *, retry_after: float | None = None) -> None:
        super().__init__(cause)
        self.cause = cause
        self.retry_after = retry_after


RETRYABLE: tuple[type[BaseException], ...] = (RetryableError, *RETRY_EXCEPTIONS)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How often and how patiently to retry.

    ``attempts`` counts every try, the first included. The wait before try n+1
    is ``backoff * 2**(n-1)`` capped at ``max_backoff``, or the server's
    ``Retry-After`` capped at ``max_retry_after``. ``sleep`` is the wait itself
    (`trio.sleep`); tests substitute a recorder.
    """

    attempts: int = 5
    backoff: float = 0.2
    max_backoff: float = 5.0
    max_retry_after: float = 30.0
    sleep: Callable[[float], Awaitable[None]] = field(default=trio.sleep, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError("RetryPolicy.attempts must be at least 1")

    def delay(self, failures: int, retry_after: float | None = None) -> float:
        """Seconds to wait after the ``failures``-th failed attempt."""
        if retry_after is not None:
            return max(0.0, min(retry_after, self.max_retry_after))
        return min(self.backoff * 2 ** (failures - 1), self.max_backoff)


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or an HTTP-date), or None."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def describe(exc: BaseException) -> str:
    """One line naming a failure, for messages (httpx messages carry no credentials)."""
    if isinstance(exc, RetryableError):
        return exc.cause
    name = type(exc).__name__
    # httpx's ConnectError for a failed TLS handshake has no text; the reason
    # (``[SSL: WRONG_VERSION_NUMBER] …``) is further down the cause chain.
    inner: BaseException | None = exc
    for _ in range(5):
        if inner is None or str(inner).strip():
            break
        inner = inner.__cause__ or inner.__context__
    if inner is None or not str(inner).strip():
        return name
    text = " ".join(str(inner).split())
    return f"{name}: {text}" if inner is exc else f"{name}: {type(inner).__name__}: {text}"


async def with_retries(
    policy: RetryPolicy, attempt: Callable[[], Awaitable[T]], *, host: str, what: str
) -> T:
    """Run ``attempt()`` until it succeeds, fails for good, or the budget runs out.

    Raises `RegistryUnavailableError` (from the last failure) naming ``host`` and
    ``what`` once ``policy.attempts`` tries have failed in retryable ways; any other
    exception from ``attempt`` propagates at once.

    Cancellation: the waits between attempts are `trio` checkpoints; a cancelled
    operation stops there or inside the attempt, never retried.
    """
    failures = 0
    while True:
        try:
            return await attempt()
        except RETRYABLE as exc:
            failures += 1
            cause = describe(exc)
            if failures >= policy.attempts:
                raise RegistryUnavailableError(
                    f"registry {host}: {what}: giving up after {failures} attempts ({cause})"
                ) from exc
            retry_after = exc.retry_after if isinstance(exc, RetryableError) else None
            delay = policy.delay(failures, retry_after)
            log.debug(
                "registry %s: %s: attempt %d failed (%s); retrying in %.2fs",
                host,
                what,
                failures,
                cause,
                delay,
            )
            await policy.sleep(delay)
