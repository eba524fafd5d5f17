"""The HTTP side of the registry client: hosts, schemes, auth, status mapping, retries.

This module is the one place where httpx meets the rest of fusesnap. Every
request runs inside `RegistrySession.run`, which picks the registry's hosts
that may do the operation (mirrors from ``hosts.toml``, then the registry),
fails over and retries what is worth it (`fusesnap.registry.failover`) and
turns every httpx exception into a `RegistryError` subclass::

    run(ref, what, attempt, capability)    hosts, failover, retries; httpx -> RegistryError
      attempt(host)                        one try of a whole operation on one host
        open(ref, host, method, target)    URL, scheme, Authorization, one 401 recovery,
                                           status -> exception (404, 401/403, 5xx/429, other)

Scheme rule for a registry's own address: loopback registries speak plain HTTP;
others HTTPS with verification; an ``insecure`` registry HTTPS without
verification, falling back to plain HTTP (remembered per host) when the TLS
connection cannot be made. A host from ``hosts.toml`` speaks the scheme its URL
names. Each host has its own credentials (by its ``host[:port]``) and tokens.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from contextlib import asynccontextmanager
from typing import TypeVar

import httpx

from fusesnap.blocking import run_blocking
from fusesnap.errors import RegistryError, RegistryNotFoundError
from fusesnap.reference import Reference, is_loopback
from fusesnap.registry._clients import HttpClients
from fusesnap.registry._http import ERROR_BODY_LIMIT, error_summary, read_limited
from fusesnap.registry.auth import Authenticator, AuthScope
from fusesnap.registry.credentials import Credentials
from fusesnap.registry.failover import HostHealth, run_on_hosts
from fusesnap.registry.hosts import HostsConfig, RegistryHost, default_host
from fusesnap.registry.retry import (
    RETRY_STATUSES,
    RETRYABLE,
    RetryableError,
    RetryPolicy,
    describe,
    parse_retry_after,
)

log = logging.getLogger(__name__)

T = TypeVar("T")

# A mirror that stops answering is given up on well within a lazy read's own
# deadline (60 s), so that the read can still be served by the next host.
MIRROR_TIMEOUT = httpx.Timeout(20.0, connect=5.0)


def where(ref: Reference, host: RegistryHost) -> str:
    """How messages name the registry an operation went to: ``registry R`` or, on a
    mirror, ``registry R via MIRROR``."""
    return f"registry {ref.registry} via {host.name}" if host.mirror else f"registry {ref.registry}"


class RegistrySession:
    """Sends requests to registries for `RegistryClient`; holds the auth and host state.

    ``target`` is either a ``/v2/…`` path (sent to the host's API root, the scheme
    chosen here) or an absolute URL a host handed out (an upload ``Location``, a
    pagination ``Link``). Authorization goes only to the host itself: redirects
    elsewhere (blob storage) lose it, which is httpx's rule for a different origin
    and is tested.
    """

    def __init__(
        self,
        clients: HttpClients,
        *,
        insecure_registries: Iterable[str],
        retry: RetryPolicy,
        credentials: Callable[[str], Credentials | None],
        hosts: HostsConfig | None = None,
        health: HostHealth | None = None,
    ) -> None:
        self._clients = clients
        self._insecure = frozenset(h.lower() for h in insecure_registries)
        self._retry = retry
        self._load_credentials = credentials
        self._credentials: dict[str, Credentials | None] = {}
        self._schemes: dict[str, str] = {}  # insecure host -> the scheme that worked
        self._hosts = hosts
        self.health = health or HostHealth()
        self.auth = Authenticator(clients.main, self.credentials)

    async def credentials(self, registry: str) -> Credentials | None:
        """The credentials for ``registry``, loaded once (off the trio loop)."""
        if registry not in self._credentials:
            self._credentials[registry] = await run_blocking(self._load_credentials, registry)
        return self._credentials[registry]

    async def hosts(self, registry: str, capability: str) -> tuple[RegistryHost, ...]:
        """The hosts of ``registry`` that may do ``capability``, in the order to try."""
        if self._hosts is None:
            return (default_host(registry),)
        hosts = self._hosts.cached(registry)
        if hosts is None:
            hosts = await run_blocking(self._hosts.load, registry)
        usable = tuple(h for h in hosts if h.can(capability))
        if not usable:
            raise RegistryError(
                f"registry {registry}: no host in {hosts[-1].source} has the {capability!r}"
                " capability"
            )
        return usable

    def is_insecure(self, name: str) -> bool:
        name = name.lower()
        return name in self._insecure or name.rsplit(":", 1)[0] in self._insecure

    def scheme(self, ref: Reference, host: RegistryHost) -> str:
        """``http`` or ``https`` for ``host`` (see the module docstring)."""
        if host.scheme is not None:
            return host.scheme
        if is_loopback(host.host):
            return "http"
        if self._insecure_host(ref, host):
            return self._schemes.get(host.host, "https")
        return "https"

    def _insecure_host(self, ref: Reference, host: RegistryHost) -> bool:
        # The registry's own address is insecure under its name too (docker.io).
        return self.is_insecure(host.host) or (not host.mirror and self.is_insecure(ref.registry))

    def url(self, ref: Reference, host: RegistryHost, path: str, scheme: str | None = None) -> str:
        """The URL of API path ``path`` (``/v2/…``) on ``host``."""
        url = (
            f"{scheme or self.scheme(ref, host)}://{host.host}{host.path}{path.removeprefix('/v2')}"
        )
        if host.mirror:
            url += ("&" if "?" in url else "?") + f"ns={ref.registry}"
        return url

    async def run(
        self,
        ref: Reference,
        what: str,
        attempt: Callable[[RegistryHost], Awaitable[T]],
        *,
        capability: str = "pull",
    ) -> T:
        """Run ``attempt`` on the hosts of the reference's registry that may do
        ``capability`` (`run_on_hosts`: failover, retries); map httpx errors to
        `RegistryError`.

        Cancellation: cancelling stops the operation at its next checkpoint; the
        response in flight is closed by `open`'s context manager.
        """
        hosts = await self.hosts(ref.registry, capability)

        async def mapped(host: RegistryHost) -> T:
            try:
                return await attempt(host)
            except RETRYABLE:
                raise
            except (httpx.HTTPError, httpx.InvalidURL, httpx.StreamError) as exc:
                raise RegistryError(f"{where(ref, host)}: {what}: {describe(exc)}") from exc

        return await run_on_hosts(
            hosts, self.health, self._retry, mapped, registry=ref.registry, what=what
        )

    @asynccontextmanager
    async def open(
        self,
        ref: Reference,
        host: RegistryHost,
        method: str,
        target: str,
        *,
        what: str,
        push: bool = False,
        headers: Mapping[str, str] | None = None,
        content: bytes | None = None,
        ok: tuple[int, ...] = (200,),
    ) -> AsyncIterator[httpx.Response]:
        """Send one request to ``host`` and yield the streaming response if its status is
        in ``ok``.

        Otherwise raise: 404 -> `RegistryNotFoundError` naming ``what``; 401/403
        (after one try with fresh authorization) -> `AuthenticationError`;
        429/5xx -> a retryable error; anything else -> `RegistryError`.
        """
        # A mirror's credentials and tokens are its own, found under its host name.
        scope = AuthScope(
            host.host if host.mirror else ref.registry,
            host.host,
            ref.repository,
            "pull,push" if push else "pull",
        )
        hdrs = dict(host.headers)
        hdrs.update(headers or {})
        own_host = target.startswith("/") or httpx.URL(target).netloc.decode() == host.host
        if own_host:
            authorization = await self.auth.authorization(scope)
            if authorization:
                hdrs["Authorization"] = authorization
        response = await self._send(ref, host, method, target, hdrs, content)
        if response.status_code == 401 and own_host:
            await response.aclose()
            hdrs["Authorization"] = await self.auth.on_unauthorized(scope, response)
            response = await self._send(ref, host, method, target, hdrs, content)
        try:
            if response.status_code not in ok:
                await self._raise_for_status(ref, host, scope, response, what)
            yield response
        finally:
            await response.aclose()

    async def _send(
        self,
        ref: Reference,
        host: RegistryHost,
        method: str,
        target: str,
        headers: dict[str, str],
        content: bytes | None,
    ) -> httpx.Response:
        client = await self._clients.for_host(host)
        timeout = client.timeout if host.server else MIRROR_TIMEOUT
        if host.dial_timeout is not None:
            timeout = httpx.Timeout(
                connect=host.dial_timeout,
                read=timeout.read,
                write=timeout.write,
                pool=timeout.pool,
            )

        def build(url: str) -> httpx.Request:
            return client.build_request(
                method, url, headers=headers, content=content, timeout=timeout
            )

        if not target.startswith("/"):
            return await client.send(build(target), stream=True)
        scheme = self.scheme(ref, host)
        fallback = (
            host.scheme is None
            and scheme == "https"
            and self._insecure_host(ref, host)
            and host.host not in self._schemes
        )
        try:
            response = await client.send(build(self.url(ref, host, target, scheme)), stream=True)
        except httpx.ConnectError as exc:
            if not fallback:
                raise
            log.debug("registry %s: HTTPS failed (%s); trying plain HTTP", host.host, describe(exc))
            response = await client.send(build(self.url(ref, host, target, "http")), stream=True)
            self._schemes[host.host] = "http"
            return response
        if fallback:
            self._schemes[host.host] = "https"
        return response

    async def _raise_for_status(
        self,
        ref: Reference,
        host: RegistryHost,
        scope: AuthScope,
        response: httpx.Response,
        what: str,
    ) -> None:
        status = response.status_code
        body = await read_limited(response, ERROR_BODY_LIMIT)
        summary = error_summary(body)
        suffix = f" ({summary})" if summary else ""
        if status in RETRY_STATUSES:
            raise RetryableError(
                f"HTTP {status}{suffix}",
                retry_after=parse_retry_after(response.headers.get("retry-after")),
            )
        if status == 404:
            via = f" (on {host.name})" if host.mirror else ""
            raise RegistryNotFoundError(f"{what}: not found{via}{suffix}")
        if status in (401, 403):
            detail = f"HTTP {status}: {summary}" if summary else f"HTTP {status}"
            raise await self.auth.failure(scope, detail)
        raise RegistryError(f"{where(ref, host)}: {what}: unexpected HTTP {status}{suffix}")
