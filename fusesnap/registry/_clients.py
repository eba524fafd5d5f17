"""The httpx clients of a registry session: one shared pool, and one per host whose
``hosts.toml`` sets TLS of its own (``ca``, ``client``, ``skip_verify``).

Built on first use (reading certificate files is blocking work, done off the
trio loop) and closed with the session.
"""

from __future__ import annotations

import functools
import os
import ssl
from collections.abc import Callable

import httpx

from fusesnap.blocking import run_blocking
from fusesnap.errors import RegistryError
from fusesnap.registry.hosts import RegistryHost

__all__ = ["HttpClients", "tls_context", "warm_up"]

ClientFactory = Callable[[ssl.SSLContext], httpx.AsyncClient]


def tls_context(
    *,
    ca: tuple[str, ...] = (),
    client: tuple[tuple[str, str], ...] = (),
    skip_verify: bool = False,
    ca_file: str | os.PathLike[str] | None = None,
    what: str = "",
) -> ssl.SSLContext:
    """(blocking) A client TLS context: the system CAs plus ``ca_file`` and ``ca``, the
    ``client`` certificates, no verification with ``skip_verify``."""
    if not ca and not client and not skip_verify and ca_file is None:
        return _system_context()
    prefix = f"{what}: " if what else ""
    context = httpx.create_ssl_context()
    for path in (*([os.fspath(ca_file)] if ca_file is not None else []), *ca):
        try:
            context.load_verify_locations(cafile=path)
        except (OSError, ssl.SSLError) as exc:
            raise RegistryError(f"{prefix}cannot load CA bundle {path}: {exc}") from exc
    for cert, key in client:
        try:
            context.load_cert_chain(cert, key or None)
        except (OSError, ssl.SSLError) as exc:
            raise RegistryError(f"{prefix}cannot load client certificate {cert}: {exc}") from exc
    if skip_verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


@functools.cache
def _system_context() -> ssl.SSLContext:
    """The context of the system CAs, built once per process (reading the bundle takes
    tens of milliseconds) and shared: it is not changed after it is built."""
    return httpx.create_ssl_context()


def warm_up() -> None:
    """(blocking) Load now what the first registry client of this process would load on
    its way to its first request: httpcore (httpx imports it when a transport is made)
    and the system CAs. For long-lived processes, before they fork their workers."""
    import httpcore  # noqa: F401

    _system_context()


class HttpClients:
    """``main`` for every host but those with TLS settings; ``factory`` makes their
    clients (None: use ``main`` for all, as tests with a mock transport do)."""

    def __init__(
        self,
        main: httpx.AsyncClient,
        factory: ClientFactory | None,
        *,
        ca_file: str | os.PathLike[str] | None = None,
    ) -> None:
        self.main = main
        self._factory = factory
        self._ca_file = ca_file
        self._own: dict[tuple[object, ...], httpx.AsyncClient] = {}

    async def for_host(self, host: RegistryHost) -> httpx.AsyncClient:
        if self._factory is None or not host.custom_tls:
            return self.main
        key = (host.ca, host.client, host.skip_verify)
        found = self._own.get(key)
        if found is None:
            context = await run_blocking(
                lambda: tls_context(
                    ca=host.ca,
                    client=host.client,
                    skip_verify=host.skip_verify,
                    ca_file=self._ca_file,
                    what=f"registry host {host.name} ({host.source})",
                )
            )
            made = self._factory(context)
            found = self._own.setdefault(key, made)
            if found is not made:  # another task made one meanwhile
                await made.aclose()
        return found

    async def aclose(self) -> None:
        own, self._own = list(self._own.values()), {}
        for client in own:
            await client.aclose()
