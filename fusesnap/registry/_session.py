"""The HTTP side of the registry client: schemes, auth, status mapping, retries.

This module is the one place where httpx meets the rest of fusesnap. Every
request runs inside `RegistrySession.run`, which retries what is worth
retrying and turns every httpx exception into a `RegistryError` subclass::

    run(ref, what, attempt)          retries; httpx errors -> RegistryError
      attempt()                      one try of a whole operation
        open(ref, method, target)    scheme, Authorization, one 401 recovery,
                                     status -> exception (404, 401/403, 5xx/429, other)

Scheme rule: loopback registries speak plain HTTP; others HTTPS with
verification; an ``insecure`` registry HTTPS without verification, falling back
to plain HTTP (remembered per host) when the TLS connection cannot be made.
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
from fusesnap.registry._http import ERROR_BODY_LIMIT, error_summary, read_limited
from fusesnap.registry.auth import Authenticator, AuthScope
from fusesnap.registry.credentials import Credentials
from fusesnap.registry.retry import (
    RETRY_STATUSES,
    RetryableError,
    RetryPolicy,
    describe,
    parse_retry_after,
    with_retries,
)

log = logging.getLogger(__name__)

T = TypeVar("T")


class RegistrySession:
    """Sends requests to registries for `RegistryClient`; holds the auth state.

    ``target`` is either a ``/v2/…`` path on the reference's registry (the scheme
    is chosen here) or an absolute URL the registry handed out (an upload
    ``Location``, a pagination ``Link``). Authorization goes only to the
    registry's own host: redirects elsewhere (blob storage) lose it, which is
    httpx's rule for a different origin and is tested.
    """

    def __init__(
        self,
        client: httpx.AsyncClient,
        *,
        insecure_registries: Iterable[str],
        retry: RetryPolicy,
        credentials: Callable[[str], Credentials | None],
    ) -> None:
        self._client = client
        self._insecure = frozenset(h.lower() for h in insecure_registries)
        self._retry = retry
        self._load_credentials = credentials
        self._credentials: dict[str, Credentials | None] = {}
        self._schemes: dict[str, str] = {}  # insecure host -> the scheme that worked
        self.auth = Authenticator(client, self.credentials)

    async def credentials(self, registry: str) -> Credentials | None:
        """The credentials for ``registry``, loaded once (off the trio loop)."""
        if registry not in self._credentials:
            self._credentials[registry] = await run_blocking(self._load_credentials, registry)
        return self._credentials[registry]

    def is_insecure(self, ref: Reference) -> bool:
        names = {ref.registry.lower(), ref.api_host.lower()}
        return any(n in self._insecure or n.rsplit(":", 1)[0] in self._insecure for n in names)

    def scheme(self, ref: Reference) -> str:
        """``http`` or ``https`` for the reference's registry (see the module docstring)."""
        if is_loopback(ref.api_host):
            return "http"
        if self.is_insecure(ref):
            return self._schemes.get(ref.api_host, "https")
        return "https"

    def url(self, ref: Reference, path: str, scheme: str | None = None) -> str:
        return f"{scheme or self.scheme(ref)}://{ref.api_host}{path}"

    async def run(self, ref: Reference, what: str, attempt: Callable[[], Awaitable[T]]) -> T:
        """Run ``attempt`` under the retry policy; map httpx errors to `RegistryError`.

        Cancellation: cancelling stops the operation at its next checkpoint; the
        response in flight is closed by `open`'s context manager.
        """
        try:
            return await with_retries(self._retry, attempt, host=ref.registry, what=what)
        except (httpx.HTTPError, httpx.InvalidURL, httpx.StreamError) as exc:
            raise RegistryError(f"registry {ref.registry}: {what}: {describe(exc)}") from exc

    @asynccontextmanager
    async def open(
        self,
        ref: Reference,
        method: str,
        target: str,
        *,
        what: str,
        push: bool = False,
        headers: Mapping[str, str] | None = None,
        content: bytes | None = None,
        ok: tuple[int, ...] = (200,),
    ) -> AsyncIterator[httpx.Response]:
        """Send one request and yield the streaming response if its status is in ``ok``.

        Otherwise raise: 404 -> `RegistryNotFoundError` naming ``what``; 401/403
        (after one try with fresh authorization) -> `AuthenticationError`;
        429/5xx -> a retryable error; anything else -> `RegistryError`.
        """
        scope = AuthScope(
            ref.registry, ref.api_host, ref.repository, "pull,push" if push else "pull"
        )
        hdrs = dict(headers or {})
        own_host = target.startswith("/") or httpx.URL(target).netloc.decode() == ref.api_host
        if own_host:
            authorization = await self.auth.authorization(scope)
            if authorization:
                hdrs["Authorization"] = authorization
        response = await self._send(ref, method, target, hdrs, content)
        if response.status_code == 401 and own_host:
            await response.aclose()
            hdrs["Authorization"] = await self.auth.on_unauthorized(scope, response)
            response = await self._send(ref, method, target, hdrs, content)
        try:
            if response.status_code not in ok:
                await self._raise_for_status(ref, scope, response, what)
            yield response
        finally:
            await response.aclose()

    async def _send(
        self,
        ref: Reference,
        method: str,
        target: str,
        headers: dict[str, str],
        content: bytes | None,
    ) -> httpx.Response:
        if not target.startswith("/"):
            request = self._client.build_request(method, target, headers=headers, content=content)
            return await self._client.send(request, stream=True)
        scheme = self.scheme(ref)
        request = self._client.build_request(
            method, self.url(ref, target, scheme), headers=headers, content=content
        )
        host = ref.api_host
        fallback = scheme == "https" and self.is_insecure(ref) and host not in self._schemes
        try:
            response = await self._client.send(request, stream=True)
        except httpx.ConnectError as exc:
            if not fallback:
                raise
            log.debug("registry %s: HTTPS failed (%s); trying plain HTTP", host, describe(exc))
            request = self._client.build_request(
                method, self.url(ref, target, "http"), headers=headers, content=content
            )
            response = await self._client.send(request, stream=True)
            self._schemes[host] = "http"
            return response
        if fallback:
            self._schemes[host] = "https"
        return response

    async def _raise_for_status(
        self, ref: Reference, scope: AuthScope, response: httpx.Response, what: str
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
            raise RegistryNotFoundError(f"{what}: not found{suffix}")
        if status in (401, 403):
            detail = f"HTTP {status}: {summary}" if summary else f"HTTP {status}"
            raise await self.auth.failure(scope, detail)
        raise RegistryError(f"registry {ref.registry}: {what}: unexpected HTTP {status}{suffix}")
