"""Which host an operation goes to: mirrors first, the next on failure, the server last.

One operation (a manifest, a blob, a range) runs against a registry's hosts
(`fusesnap.registry.hosts`) that have the capability it needs, in their
configured order, except that hosts which failed lately are put last::

    run_on_hosts(hosts, health, retry, attempt)
      host = the first host up and not refused; all down: the least tried
      attempt(host)            ok            -> health.succeeded(host); the result
                               unavailable   -> health.failed(host): skipped for a while
                               (connect/reset, timeout, 5xx, 429, a short body)
                                             -> the next host at once; once every host
                                                is down, wait as the retry policy says
                               refused by a mirror (404, 401/403, a digest that does not
                               match, a bad manifest, an unexpected status)
                                             -> the next host; all but a 404 also skip
                                                the mirror (it is not trusted)
                               refused by the last host (the server) -> raised

A host that failed is skipped for `HostHealth.backoff` seconds, doubled each
time it fails again when tried after that, up to ``max_backoff``; then one
operation tries it again while the others go on skipping it; a success makes
it first again. With one host (no hosts.toml) this is `with_retries` exactly.
What the attempt checks (digests) decides what counts as a refusal; range
bytes are verified by the caller, whichever host sent them.

Concurrency: `HostHealth` is shared by every task of one client (trio: no locks).
Cancellation passes through; a cancelled attempt marks nothing and gives back
its claim on the host.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from fusesnap.errors import FusesnapError, RegistryNotFoundError, RegistryUnavailableError
from fusesnap.registry.hosts import RegistryHost
from fusesnap.registry.retry import RETRYABLE, RetryableError, RetryPolicy, describe, with_retries

log = logging.getLogger(__name__)

T = TypeVar("T")

__all__ = ["HostHealth", "run_on_hosts"]


@dataclass(slots=True)
class _Down:
    until: float
    failures: int
    probing: bool = False  # one operation is trying it again; the others still skip it


class HostHealth:
    """Hosts that failed lately, and until when each is skipped.

    ``backoff`` seconds after the first failure, doubling with each further one
    in a row, at most ``max_backoff``. When that runs out, one operation tries the
    host again (`claim`) while the others go on skipping it: a host that hangs
    stalls one operation per round, not every one. ``clock`` is monotonic seconds
    (tests pass their own).
    """

    def __init__(
        self,
        *,
        backoff: float = 10.0,
        max_backoff: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.backoff = backoff
        self.max_backoff = max_backoff
        self._clock = clock
        self._down: dict[RegistryHost, _Down] = {}

    def is_up(self, host: RegistryHost) -> bool:
        down = self._down.get(host)
        return down is None or (down.until <= self._clock() and not down.probing)

    def claim(self, host: RegistryHost) -> bool:
        """Before an attempt on ``host``: True if it is the one that tries a host whose
        skip ran out (give it back with `release` however the attempt ends)."""
        down = self._down.get(host)
        if down is None or down.probing or down.until > self._clock():
            return False
        down.probing = True
        return True

    def release(self, host: RegistryHost) -> None:
        down = self._down.get(host)
        if down is not None:
            down.probing = False

    def order(self, hosts: Sequence[RegistryHost]) -> list[RegistryHost]:
        """``hosts`` as configured, those being skipped moved last (soonest back first)."""
        up = [h for h in hosts if self.is_up(h)]
        down = sorted((h for h in hosts if not self.is_up(h)), key=lambda h: self._down[h].until)
        return up + down

    def failed(self, host: RegistryHost, cause: str) -> None:
        """Skip ``host`` for a while; say so once per outage. Requests that were in flight
        when it went down fail too: while it is skipped, they change nothing."""
        now = self._clock()
        previous = self._down.get(host)
        if previous is not None and previous.until > now:
            return
        failures = previous.failures + 1 if previous else 1
        delay = min(self.backoff * 2 ** (failures - 1), self.max_backoff)
        log.warning("registry host %s failed (%s); skipping it for %g s", host.name, cause, delay)
        self._down[host] = _Down(until=now + delay, failures=failures)

    def succeeded(self, host: RegistryHost) -> None:
        if self._down.pop(host, None) is not None:
            log.warning("registry host %s answers again", host.name)

    def skipped(self) -> list[str]:
        """The hosts being skipped now (for stats and messages)."""
        return [h.name for h in self._down if not self.is_up(h)]


async def run_on_hosts(
    hosts: Sequence[RegistryHost],
    health: HostHealth,
    policy: RetryPolicy,
    attempt: Callable[[RegistryHost], Awaitable[T]],
    *,
    registry: str,
    what: str,
) -> T:
    """``attempt(host)`` on the first host that does it (module docstring).

    Raises what the last host (the server) raised, or `RegistryUnavailableError`
    once ``policy.attempts + len(hosts) - 1`` attempts failed as unavailable.
    """
    if len(hosts) == 1:
        only = hosts[0]
        return await with_retries(policy, lambda: attempt(only), host=registry, what=what)
    last = hosts[-1]
    budget = policy.attempts + len(hosts) - 1
    refused: set[RegistryHost] = set()
    tries: dict[RegistryHost, int] = dict.fromkeys(hosts, 0)
    failures = 0
    error: FusesnapError | None = None

    def pick() -> RegistryHost | None:
        """The first host up; with all down, the least tried in this operation."""
        candidates = [h for h in health.order(hosts) if h not in refused]
        up = [h for h in candidates if health.is_up(h)]
        return up[0] if up else min(candidates, key=tries.__getitem__, default=None)

    host = pick()
    while host is not None:
        tries[host] += 1
        probe = host if health.claim(host) else None
        try:
            result = await attempt(host)
        except RETRYABLE as exc:
            cause = describe(exc)
            health.failed(host, cause)
            failures += 1
            if failures >= budget:
                raise RegistryUnavailableError(
                    f"registry {registry}: {what}: giving up after {failures} attempts"
                    f" on {len(hosts)} hosts ({host.name}: {cause})"
                ) from exc
            host = pick()
            if host is not None and not health.is_up(host):
                retry_after = exc.retry_after if isinstance(exc, RetryableError) else None
                await policy.sleep(policy.delay(failures, retry_after))
            continue
        except FusesnapError as exc:
            if host == last:
                raise
            if not isinstance(exc, RegistryNotFoundError):
                health.failed(host, str(exc))  # a mirror that lies or refuses us stays out
            log.debug("registry %s: %s: host %s refused (%s)", registry, what, host.name, exc)
            refused.add(host)
            error = exc
            host = pick()
            continue
        finally:
            if probe is not None:  # after failed(), succeeded() or a cancellation alike
                health.release(probe)
        health.succeeded(host)
        return result
    assert error is not None  # every host refused: the last refusal says why
    raise error
