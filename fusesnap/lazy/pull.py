"""Pull: copy an image's manifest and config into the store and every layer as an indexed layer.

Layers are stored the way every later read wants them (`fusesnap.lazy.ingest`):
a layer index plus its files' chunks in the de-duplicated chunk store; the
raw blob is downloaded to a resumable ingest file, verified, indexed, and
dropped.

Ordering is what keeps a concurrent `gc` and a SIGKILL harmless (containerd's
rule): the pull holds a lease owned by this process; each blob (and each layer) is
added to the lease *before* it is downloaded; the image record is written *before* the
lease is deleted. A killed pull leaves a lease whose owner is dead (gc removes
it) and partial ingest files that the next pull of the same blob resumes.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Protocol

import trio

from fusesnap.blocking import run_blocking
from fusesnap.digest import Digest
from fusesnap.errors import AlreadyExistsError, ManifestError
from fusesnap.lazy.ingest import ingest_layer_file
from fusesnap.lazy.layerindex import LayerIndex, decode
from fusesnap.lazy.registry import RegistryClient, Resolved
from fusesnap.lazy.tarindex import Limits
from fusesnap.oci import Descriptor, ImageConfig, Platform, layer_compression
from fusesnap.reference import Reference
from fusesnap.store import ImageRecord, Resource, Store

# Another process may be ingesting the same blob; wait for it this often.
_LOCKED_POLL = 0.5
# Writes to the ingest file are batched so that a thread hop is not paid per packet.
_FLUSH_SIZE = 1 << 20


class PullProgress(Protocol):
    def start(self, *, total_bytes: int, items: int) -> None: ...
    def advance(self, nbytes: int) -> None: ...
    def item_done(self) -> None: ...


class _NoProgress:
    def start(self, *, total_bytes: int, items: int) -> None:
        pass

    def advance(self, nbytes: int) -> None:
        pass

    def item_done(self) -> None:
        pass


@dataclass(frozen=True, slots=True)
class PullResult:
    name: str
    target: Descriptor
    manifest: Descriptor
    platform: str
    layers: tuple[Descriptor, ...]
    fetched_blobs: int
    fetched_bytes: int


def image_name(ref: Reference) -> str:
    """The name an image is stored under: the full reference, tag and/or digest."""
    return str(ref)


async def pull(
    store: Store,
    client: RegistryClient,
    ref: Reference,
    *,
    platform: Platform | None = None,
    progress: PullProgress | None = None,
    concurrency: int = 3,
    limits: Limits | None = None,
    check: Callable[[Sequence[LayerIndex]], object] | None = None,
) -> PullResult:
    """Pull ``ref`` into ``store`` and record it as an image; return what was done.

    Blobs already in the store are not fetched again; partial downloads left by
    a killed pull are resumed. Every blob is verified against its digest before
    it is stored.

    ``check`` is called with the image's layer indexes (bottom first) before
    the image is recorded; an error it raises fails the pull, so that an image
    whose layers are each fine but do not stack (a hardlink to a file no layer
    has) never becomes visible. The caller passes the merged-tree builder.

    ``limits`` bound what one layer may unpack to (decompression bombs, entry
    counts); a layer beyond them fails the pull with a `LayerError`.

    Concurrency: layers are fetched ``concurrency`` at a time. Cancellation
    leaves partial ingests for the next pull to resume and no image record.
    """
    progress = progress or _NoProgress()
    lease = await run_blocking(
        lambda: store.leases.create(
            expires_in=24 * 3600, labels={"fusesnap/pull": str(ref)}, owner_pid=os.getpid()
        )
    )
    fetched = _Counter()
    try:

        async def protect(digest: Digest) -> None:
            await run_blocking(store.leases.add_resource, lease.id, Resource("content", digest))

        resolved = await client.resolve(ref, platform=platform)
        manifest = resolved.parsed
        for desc, data in _documents(resolved):
            await protect(desc.digest)
            await run_blocking(
                lambda d=desc, b=data: store.content.put(
                    b, digest=d.digest, media_type=d.media_type
                )
            )
        for layer in manifest.layers:
            layer_compression(layer.media_type)  # refuse unknown layer types before fetching
        config = manifest.config
        await protect(config.digest)
        if not await run_blocking(store.content.exists, config.digest):
            data = await client.get_blob(ref, config)
            await run_blocking(
                lambda: store.content.put(data, digest=config.digest, media_type=config.media_type)
            )
            fetched.add(len(data))
        config_doc = ImageConfig.parse(
            await run_blocking(store.content.read, config.digest),
            what=f"image config {config.digest.short}",
        )
        if len(config_doc.diff_ids) != len(manifest.layers):
            raise ManifestError(
                f"image {ref}: config lists {len(config_doc.diff_ids)} layers, "
                f"manifest {len(manifest.layers)}"
            )

        missing: dict[Digest, tuple[Descriptor, Digest]] = {}
        for layer, diff_id in zip(manifest.layers, config_doc.diff_ids, strict=True):
            await protect(layer.digest)
            await run_blocking(store.leases.add_resource, lease.id, Resource("layer", layer.digest))
            if not await run_blocking(_layer_complete, store, layer.digest):
                missing.setdefault(layer.digest, (layer, diff_id))
        unique = list(missing.values())
        progress.start(total_bytes=sum(d.size for d, _ in unique), items=len(unique))
        limiter = trio.CapacityLimiter(max(1, concurrency))

        async def fetch(layer: Descriptor, diff_id: Digest) -> None:
            async with limiter:
                await _download(store, client, ref, layer, diff_id, progress, fetched, limits)
                progress.item_done()

        async with trio.open_nursery() as nursery:
            for layer, diff_id in unique:
                nursery.start_soon(fetch, layer, diff_id)

        if check is not None:
            await run_blocking(_check_layers, store, manifest.layers, check)

        plat = resolved.manifest.platform or config_doc.platform
        name = image_name(ref)
        now = time.time()
        record = ImageRecord(
            name=name,
            target_digest=resolved.target.digest,
            target_media_type=resolved.target.media_type,
            target_size=resolved.target.size,
            manifest_digest=resolved.manifest.digest,
            platform=str(plat),
            created=now,
            updated=now,
        )
        await run_blocking(store.images.put, record)
    finally:
        with trio.CancelScope(shield=True):
            await run_blocking(store.leases.delete, lease.id)
    return PullResult(
        name=name,
        target=resolved.target,
        manifest=resolved.manifest,
        platform=str(plat),
        layers=manifest.layers,
        fetched_blobs=fetched.blobs,
        fetched_bytes=fetched.bytes,
    )


def _documents(resolved: Resolved) -> Sequence[tuple[Descriptor, bytes]]:
    """The index (if the reference named one) and the platform's manifest."""
    docs = [(resolved.target, resolved.target_bytes)]
    if resolved.manifest.digest != resolved.target.digest:
        docs.append((resolved.manifest, resolved.manifest_bytes))
    return docs


class _Counter:
    def __init__(self) -> None:
        self.blobs = 0
        self.bytes = 0

    def add(self, n: int) -> None:
        self.blobs += 1
        self.bytes += n


class _IngestSink:
    """Adapts the store's (blocking) ingest writer to the client's `BlobSink`."""

    def __init__(self, writer: object, progress: PullProgress, counter: _Counter) -> None:
        self._writer = writer
        self._buffer = bytearray()
        self._progress = progress
        self._counter = counter
        self.received = 0

    @property
    def offset(self) -> int:
        return int(self._writer.offset) + len(self._buffer)  # type: ignore[attr-defined]

    async def write(self, data: bytes) -> None:
        self._buffer += data
        self.received += len(data)
        self._progress.advance(len(data))
        if len(self._buffer) >= _FLUSH_SIZE:
            await self.flush()

    async def flush(self) -> None:
        if self._buffer:
            data, self._buffer = bytes(self._buffer), bytearray()
            await run_blocking(self._writer.write, data)  # type: ignore[attr-defined]

    async def reset(self) -> None:
        self._buffer.clear()
        await run_blocking(self._writer.reset)  # type: ignore[attr-defined]


def _check_layers(
    store: Store,
    layers: Sequence[Descriptor],
    check: Callable[[Sequence[LayerIndex]], object],
) -> None:
    check([decode(store.layers.index(layer.digest)) for layer in layers])


def _layer_complete(store: Store, digest: Digest) -> bool:
    """Is the layer indexed, with every chunk of it in the store?"""
    if not store.layers.exists(digest):
        return False
    presence = store.layers.present_chunks(digest)
    return presence.present == presence.total


async def _download(
    store: Store,
    client: RegistryClient,
    ref: Reference,
    layer: Descriptor,
    diff_id: Digest,
    progress: PullProgress,
    counter: _Counter,
    limits: Limits | None,
) -> None:
    while True:
        if await run_blocking(_layer_complete, store, layer.digest):
            return
        try:
            writer = await run_blocking(
                lambda: store.content.writer(
                    layer.digest, size=layer.size, media_type=layer.media_type
                )
            )
        except AlreadyExistsError:
            # Another pull is ingesting this blob; it will commit or give up.
            await trio.sleep(_LOCKED_POLL)
            continue
        try:
            if writer.offset:
                progress.advance(writer.offset)
            sink = _IngestSink(writer, progress, counter)
            await client.download_blob(ref, layer, sink)
            await sink.flush()
            path = await run_blocking(writer.verified_path)
            counter.add(sink.received)
            await run_blocking(
                partial(ingest_layer_file, store, path, layer, diff_id=diff_id, limits=limits)
            )
            await run_blocking(writer.abort)
            return
        finally:
            with trio.CancelScope(shield=True):
                await run_blocking(writer.close)
