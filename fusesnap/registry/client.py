"""The registry client: the OCI Distribution API that fusesnap uses.

``open_registry_client()`` opens one pooled httpx client (on trio, through
anyio) and yields a `RegistryClient`::

    async with open_registry_client(insecure_registries=["myreg:5000"]) as registry:
        resolved = await registry.resolve(Reference.parse("debian:12"), platform=None)
        config = await registry.get_blob(ref, resolved.parsed.config)

Everything fetched by digest is verified here (manifests, small blobs), except
streamed layer downloads, whose sink verifies at the end, and range reads, whose
callers verify the chunks they cut. Failures are `fusesnap.errors.RegistryError`
subclasses, `DigestMismatchError` or `ManifestError`; no httpx exception leaves
this package (see `fusesnap.registry._session`).
"""

from __future__ import annotations

import json
import logging
import os
import re
import ssl
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from urllib.parse import quote

import httpx

from fusesnap import __version__
from fusesnap.blocking import run_blocking
from fusesnap.digest import Digest
from fusesnap.errors import (
    DigestMismatchError,
    InvalidReferenceError,
    ManifestError,
    PlatformNotFoundError,
    RegistryError,
    RegistryNotFoundError,
)
from fusesnap.oci import (
    ACCEPT_MANIFESTS,
    MAX_MANIFEST_SIZE,
    OCI_INDEX,
    Descriptor,
    Index,
    Manifest,
    Platform,
    detect_media_type,
    parse_manifest,
)
from fusesnap.reference import Reference
from fusesnap.registry import transfer as blobs
from fusesnap.registry._clients import HttpClients, tls_context
from fusesnap.registry._http import content_type, next_link, read_limited
from fusesnap.registry._session import RegistrySession, where
from fusesnap.registry.credentials import Credentials, load_credentials
from fusesnap.registry.failover import HostHealth
from fusesnap.registry.hosts import DEFAULT_HOSTS_DIRS, HostsConfig, RegistryHost
from fusesnap.registry.retry import RetryPolicy
from fusesnap.registry.transfer import BlobSink

log = logging.getLogger(__name__)

USER_AGENT = f"fusesnap/{__version__}"
DEFAULT_TIMEOUT = httpx.Timeout(60.0, connect=10.0)
DEFAULT_LIMITS = httpx.Limits(max_connections=32, max_keepalive_connections=16)
DEFAULT_RETRY = RetryPolicy()
# A tag list or referrers page is JSON of the same order as a manifest.
MAX_PAGE_SIZE = MAX_MANIFEST_SIZE
MAX_PAGES = 1000
_TAG = re.compile(r"^[\w][\w.-]{0,127}$")


@dataclass(frozen=True, slots=True)
class Resolved:
    """What a reference resolves to.

    ``target`` is what the reference names (an index or a manifest); ``manifest``
    is the image manifest for the chosen platform (the same as ``target`` when the
    reference names a manifest); ``index`` is the parsed index, if there was one.
    """

    target: Descriptor
    target_bytes: bytes = field(repr=False)
    manifest: Descriptor
    manifest_bytes: bytes = field(repr=False)
    parsed: Manifest
    index: Index | None = None


class RegistryClient:
    """The Distribution API calls fusesnap makes. Build it with `open_registry_client`.

    Arguments named ``ref`` give the registry and repository; tags and digests
    come from other arguments where a method takes them.

    Concurrency: methods may run concurrently from many trio tasks; they share one
    connection pool and one token cache.
    """

    def __init__(self, session: RegistrySession, *, platform: Platform | None = None) -> None:
        self._session = session
        self._platform = platform

    async def get_manifest(
        self, ref: Reference, obj: str | Digest | None = None
    ) -> tuple[Descriptor, bytes]:
        """Fetch a manifest or index by tag or digest (default: the reference's own).

        By digest, the body must hash to it; by tag, the descriptor's digest is the
        body's sha256 and must agree with a ``Docker-Content-Digest`` header.
        """
        if obj is None:
            obj = ref.object
        digest = Digest(obj) if ":" in obj else None
        if digest is None and not _TAG.match(obj):
            raise InvalidReferenceError(f"invalid tag {obj!r}")
        what = f"manifest {ref.name}@{digest}" if digest else f"manifest {ref.name}:{obj}"

        async def attempt(host: RegistryHost) -> tuple[bytes, Digest, str]:
            async with self._session.open(
                ref,
                host,
                "GET",
                f"/v2/{ref.repository}/manifests/{obj}",
                what=what,
                headers={"Accept": ACCEPT_MANIFESTS},
            ) as r:
                length = r.headers.get("content-length", "")
                if length.isdigit() and int(length) > MAX_MANIFEST_SIZE:
                    raise ManifestError(f"{what}: too large ({length} bytes)")
                body = await read_limited(r, MAX_MANIFEST_SIZE)
                if len(body) > MAX_MANIFEST_SIZE:
                    raise ManifestError(f"{what}: larger than {MAX_MANIFEST_SIZE} bytes")
                declared, header = content_type(r), r.headers.get("docker-content-digest")
            # Checked inside the attempt: a mirror that sends other bytes is passed over.
            if digest is not None:
                digest.verify(body, what=f"manifest {ref.name}")
            got = digest or Digest.of(body)
            if header:
                self._check_header_digest(header, got, body, what)
            return body, got, detect_media_type(body, declared or None, what=what)

        # A tag is trust (containerd's "resolve"); a digest is checked, any "pull" host will do.
        capability = "pull" if digest is not None else "resolve"
        body, found, media_type = await self._session.run(ref, what, attempt, capability=capability)
        return Descriptor(media_type=media_type, digest=found, size=len(body)), body

    @staticmethod
    def _check_header_digest(header: str, digest: Digest, body: bytes, what: str) -> None:
        try:
            claimed = Digest(header.strip())
        except ValueError:
            raise RegistryError(f"{what}: invalid Docker-Content-Digest header") from None
        if claimed.algorithm != digest.algorithm:
            claimed.verify(body, what=what)
        elif claimed != digest:
            raise DigestMismatchError(
                f"{what}: Docker-Content-Digest {claimed.short} does not match the body "
                f"({digest.short})"
            )

    async def resolve(self, ref: Reference, *, platform: Platform | None = None) -> Resolved:
        """Fetch what ``ref`` names; from an index, pick and fetch the platform's manifest.

        ``platform`` defaults to the client's, else `Platform.host()`. Raises
        `PlatformNotFoundError` (listing what the index has) if none matches.
        """
        target, target_bytes = await self.get_manifest(ref)
        parsed = parse_manifest(target_bytes, target.media_type, what=f"manifest {ref}")
        if isinstance(parsed, Manifest):
            return Resolved(target, target_bytes, target, target_bytes, parsed, None)
        want = platform or self._platform or Platform.host()
        try:
            chosen = parsed.select(want)
        except PlatformNotFoundError as exc:
            raise PlatformNotFoundError(f"{ref}: {exc}") from None
        desc, body = await self.get_manifest(ref, chosen.digest)
        if desc.size != chosen.size:
            raise DigestMismatchError(
                f"manifest {ref.name}@{chosen.digest.short}: size mismatch "
                f"(got {desc.size}, index says {chosen.size})"
            )
        what = f"manifest {ref.name}@{chosen.digest}"
        child = parse_manifest(body, desc.media_type, what=what)
        if not isinstance(child, Manifest):
            raise ManifestError(f"{what}: index entry for {want} is not an image manifest")
        manifest = Descriptor(
            media_type=desc.media_type,
            digest=chosen.digest,
            size=desc.size,
            platform=chosen.platform,
            annotations=dict(chosen.annotations),
        )
        return Resolved(target, target_bytes, manifest, body, child, parsed)

    async def get_blob(self, ref: Reference, desc: Descriptor) -> bytes:
        """Fetch a small blob (a config) whole, verified against ``desc`` digest and size.

        Reads at most ``desc.size + 1`` bytes: a longer body is a mismatch, not a
        memory problem.
        """
        return await blobs.get_blob(self._session, ref, desc)

    async def download_blob(
        self,
        ref: Reference,
        desc: Descriptor,
        sink: BlobSink,
        *,
        progress: Callable[[int], None] | None = None,
    ) -> None:
        """Stream a blob into ``sink``, resuming from ``sink.offset``.

        Resumes with ``Range: bytes=<offset>-``; a server that answers 200 instead
        of 206 gets ``sink.reset()`` and sends the whole blob. A connection dropped
        mid-body is retried (under the retry policy) from the sink's new offset.
        Never writes past ``desc.size``. The sink verifies the digest at the end.
        ``progress(n)`` is called after each chunk of ``n`` bytes is written.

        Cancellation: the sink keeps what it was given; a later call resumes.
        """
        await blobs.download_blob(self._session, ref, desc, sink, progress)

    async def read_range(self, ref: Reference, digest: Digest, offset: int, length: int) -> bytes:
        """Exactly ``length`` bytes of blob ``digest`` from ``offset`` (unverified).

        Wants a 206; a 200 (Range ignored) is read up to the range and sliced.
        """
        return await blobs.read_range(self._session, ref, digest, offset, length)

    async def blob_exists(self, ref: Reference, digest: Digest) -> bool:
        """True if the repository has blob ``digest`` (HEAD)."""
        return await blobs.blob_exists(self._session, ref, digest)

    async def put_blob(self, ref: Reference, data: bytes, digest: Digest) -> None:
        """Upload ``data`` as blob ``digest`` (one POST, one monolithic PUT)."""
        await blobs.put_blob(self._session, ref, data, digest)

    async def put_manifest(
        self, ref: Reference, data: bytes, media_type: str, *, tag: str | None
    ) -> Digest:
        """Push a manifest under ``tag`` (or by digest when ``tag`` is None); return its digest."""
        digest = Digest.of(data)
        if tag is not None and not _TAG.match(tag):
            raise InvalidReferenceError(f"invalid tag {tag!r}")
        obj = tag or str(digest)
        what = f"manifest {ref.name}:{tag}" if tag else f"manifest {ref.name}@{digest}"

        async def attempt(host: RegistryHost) -> str | None:
            async with self._session.open(
                ref,
                host,
                "PUT",
                f"/v2/{ref.repository}/manifests/{obj}",
                what=what,
                push=True,
                content=data,
                headers={"Content-Type": media_type},
                ok=(201, 204),
            ) as r:
                return r.headers.get("docker-content-digest")

        header = await self._session.run(ref, what, attempt, capability="push")
        if header:
            self._check_header_digest(header, digest, data, what)
        return digest

    async def get_referrers(
        self, ref: Reference, digest: Digest, artifact_type: str | None = None
    ) -> Index | None:
        """The OCI 1.1 referrers of ``digest`` (all pages), or None without the API (404)."""
        what = f"referrers of {ref.name}@{digest}"
        target = f"/v2/{ref.repository}/referrers/{digest}"
        if artifact_type:
            target += f"?artifactType={quote(artifact_type, safe='')}"
        found: list[Descriptor] = []
        for page in range(MAX_PAGES):
            body, filtered, target_next = await self._page(
                ref, target, what, OCI_INDEX, missing_ok=True
            )
            if body is None:
                return None if page == 0 else Index(OCI_INDEX, tuple(found))
            parsed = parse_manifest(body, OCI_INDEX, what=what)
            if not isinstance(parsed, Index):
                raise ManifestError(f"{what}: response is not an image index")
            for d in parsed.manifests:
                if not artifact_type or filtered or d.artifact_type == artifact_type:
                    found.append(d)
            if target_next is None:
                break
            target = target_next
        return Index(OCI_INDEX, tuple(found))

    async def list_tags(self, ref: Reference) -> list[str]:
        """Every tag of the repository (following pagination)."""
        what = f"tags of {ref.name}"
        target: str | None = f"/v2/{ref.repository}/tags/list"
        tags: list[str] = []
        for _ in range(MAX_PAGES):
            if target is None:
                break
            body, _filtered, target = await self._page(
                ref, target, what, "application/json", missing_ok=False
            )
            assert body is not None
            tags.extend(_parse_tags(body, what))
        return tags

    async def _page(
        self, ref: Reference, target: str, what: str, accept: str, *, missing_ok: bool
    ) -> tuple[bytes | None, bool, str | None]:
        """One page of a paginated listing: (body or None on 404, filters applied, next)."""
        ok = (200, 404) if missing_ok else (200,)

        async def attempt(host: RegistryHost) -> tuple[bytes | None, bool, str | None]:
            async with self._session.open(
                ref, host, "GET", target, what=what, headers={"Accept": accept}, ok=ok
            ) as r:
                if r.status_code == 404:
                    if not host.server:
                        # A mirror without the API (a Distribution pull-through cache)
                        # says nothing of the origin's: ask the next host.
                        raise RegistryNotFoundError(f"{what}: not found on {host.name}")
                    return None, False, None
                body = await read_limited(r, MAX_PAGE_SIZE)
                if len(body) > MAX_PAGE_SIZE:
                    raise RegistryError(f"{where(ref, host)}: {what}: response too large")
                filtered = "artifacttype" in r.headers.get("oci-filters-applied", "").lower()
                return body, filtered, next_link(r)

        # Listings name no digest to check them by: only hosts trusted to resolve.
        return await self._session.run(ref, what, attempt, capability="resolve")


def _parse_tags(body: bytes, what: str) -> list[str]:
    try:
        doc = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise RegistryError(f"{what}: response is not JSON") from None
    tags = doc.get("tags") if isinstance(doc, dict) else None
    if tags is None and isinstance(doc, dict):
        return []
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        raise RegistryError(f"{what}: response has no tag list")
    return list(tags)


@dataclass(frozen=True, slots=True)
class RegistryOptions:
    """How to reach registries: the global ``--insecure-registry``, ``--ca-file`` and
    ``--hosts-dir`` options, passed to `open_registry_client` by everything that opens
    one later (the pull, a mount daemon, the containerd snapshotter)."""

    insecure_registries: tuple[str, ...] = ()
    ca_file: str | None = None
    hosts_dirs: tuple[str, ...] = DEFAULT_HOSTS_DIRS


@asynccontextmanager
async def open_registry_client(
    *,
    insecure_registries: Iterable[str] = (),
    ca_file: str | os.PathLike[str] | None = None,
    hosts_dirs: Iterable[str | os.PathLike[str]] = DEFAULT_HOSTS_DIRS,
    platform: Platform | None = None,
    retry: RetryPolicy = DEFAULT_RETRY,
    health: HostHealth | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
    # The pool's per-phase timeouts (connect 10 s, read 60 s), not an operation deadline.
    timeout: httpx.Timeout = DEFAULT_TIMEOUT,  # noqa: ASYNC109
    credentials: Callable[[str], Credentials | None] = load_credentials,
) -> AsyncIterator[RegistryClient]:
    """Open a `RegistryClient` with one connection pool; close it on exit.

    ``insecure_registries``: ``host[:port]`` names spoken to over HTTPS without
    verification, or plain HTTP if TLS fails (loopback hosts are always plain
    HTTP). ``ca_file`` adds a CA bundle to the verified trust store.
    ``hosts_dirs``: where ``HOST/hosts.toml`` files name each registry's mirrors
    (`fusesnap.registry.hosts`; empty: none). ``platform`` is the default for
    `RegistryClient.resolve`. ``health``: which hosts failed lately (tests pass one
    with their own clock). ``transport`` replaces the network (tests pass an
    ``httpx.MockTransport``). ``credentials`` maps a registry name to its
    credentials (default: the docker config).
    """
    insecure = tuple(insecure_registries)
    headers = {"User-Agent": USER_AGENT}
    factory = None
    if transport is not None:
        client = httpx.AsyncClient(
            transport=transport, headers=headers, timeout=timeout, follow_redirects=True
        )
    else:
        context = await run_blocking(lambda: tls_context(ca_file=ca_file))
        mounts: dict[str, httpx.AsyncBaseTransport | None] = {
            f"https://{host}": httpx.AsyncHTTPTransport(verify=False, limits=DEFAULT_LIMITS)
            for host in insecure
        }
        client = httpx.AsyncClient(
            verify=context,
            limits=DEFAULT_LIMITS,
            mounts=mounts,
            headers=headers,
            timeout=timeout,
            follow_redirects=True,
        )

        def factory(context: ssl.SSLContext) -> httpx.AsyncClient:
            return httpx.AsyncClient(
                verify=context,
                limits=DEFAULT_LIMITS,
                headers=headers,
                timeout=timeout,
                follow_redirects=True,
            )

    async with client:
        clients = HttpClients(client, factory, ca_file=ca_file)
        try:
            session = RegistrySession(
                clients,
                insecure_registries=insecure,
                retry=retry,
                credentials=credentials,
                hosts=HostsConfig(tuple(hosts_dirs)),
                health=health,
            )
            yield RegistryClient(session, platform=platform)
        finally:
            await clients.aclose()
