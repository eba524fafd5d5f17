"""Pull: copy an image's manifest and config into the store, and each layer's index and chunks.

Layers are stored the way every later read wants them (`fusesnap.pull.indexing`): a
layer index plus its files' chunks in the de-duplicated chunk store.

- A full pull (the default) makes every layer complete. A layer with no record is
  downloaded to a resumable ingest file, verified, indexed and dropped
  (`fusesnap.pull.indexsource.stream_layer`); a layer that has an index but lacks
  chunks (a lazy pull came first) gets only the missing chunks, by range
  (`fusesnap.lazy.fetcher`), unless its format has no random access (plain zstd).
- A lazy pull (``lazy=True``) stores each layer's *index* only, from the best source
  (`fusesnap.pull.indexsource.resolve_layer_index`: the store, an eStargz or
  zstd:chunked TOC, an index artifact, a SOCI zTOC, else a streaming build); chunks
  come later.

Ordering is what keeps a concurrent `gc` and a SIGKILL harmless (containerd's rule):
the pull holds a lease owned by this process; each blob (and each layer) is added to
the lease *before* it is downloaded or any chunk or record of it is written; the image
record is written *before* the lease is deleted. A killed pull leaves a lease whose
owner is dead (gc removes it) and partial ingest files that the next pull resumes.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import trio

from fusesnap.blocking import run_blocking
from fusesnap.digest import Digest
from fusesnap.errors import ManifestError, NotFoundError
from fusesnap.index import LayerIndex, Limits, decode
from fusesnap.oci import Descriptor, ImageConfig, Platform, chain_ids, layer_compression
from fusesnap.pull.earlytoc import TocPrefetch
from fusesnap.pull.indexsource import FetchCounter, NoProgress, PullProgress, layer_complete
from fusesnap.pull.layers import LayerJob, LayerOutcome
from fusesnap.reference import Reference
from fusesnap.registry import RegistryClient, Resolved
from fusesnap.store import COMMITTED, KEEP, ImageRecord, Resource, Store

__all__ = ["PullProgress", "PullResult", "image_name", "pull"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class PullResult:
    name: str
    target: Descriptor
    manifest: Descriptor
    platform: str
    layers: tuple[Descriptor, ...]
    fetched_blobs: int
    fetched_bytes: int
    outcomes: tuple[LayerOutcome, ...] = ()
    artifact: Digest | None = None  # the index artifact a lazy pull used
    cached: str | None = None  # the top chain ID, when its committed snapshots sufficed
    diff_ids: tuple[Digest, ...] = ()


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
    lazy: bool = False,
    build: bool = True,
    record: bool = True,
    lease_id: str | None = None,
    on_layers: Callable[[Descriptor, Sequence[tuple[Descriptor, Digest]]], None] | None = None,
) -> PullResult:
    """Pull ``ref`` into ``store`` and record it as an image; return what was done.

    ``lazy``: store each layer's index only (module docstring), streaming a layer
    only where no index exists anywhere. Otherwise every layer is made complete;
    what the store has is not fetched again, partial downloads are resumed. Every
    blob and chunk is verified against its digest before it is stored.

    ``check`` is called with the image's layer indexes (bottom first) before
    the image is recorded; an error it raises fails the pull, so that an image
    whose layers are each fine but do not stack (a hardlink to a file no layer
    has) never becomes visible. The caller passes the merged-tree builder.

    ``limits`` bound what one layer may unpack to (decompression bombs, entry
    counts); a layer beyond them fails the pull with a `LayerError`.

    Concurrency: layers are handled ``concurrency`` at a time. Cancellation
    leaves partial ingests for the next pull to resume and no image record.

    For the containerd snapshotter: ``build=False`` (with ``lazy``) builds no index by
    streaming a layer (its outcome is ``none``); ``record=False`` records neither the
    image nor its chain; ``lease_id``: protect what is pulled by that lease, which the
    caller keeps, instead of one of the pull's own; ``on_layers(manifest, [(layer,
    diff ID), ...])`` is called (on the pull's trio loop: it must not block) once the
    manifest and config are stored, before any layer is looked at.
    """
    progress = progress or NoProgress()
    if lease_id is None:
        own = await run_blocking(
            lambda: store.leases.create(
                expires_in=24 * 3600, labels={"fusesnap/pull": str(ref)}, owner_pid=os.getpid()
            )
        )
    lease = lease_id or own.id
    counter = FetchCounter()
    try:

        async def protect(digest: Digest) -> None:
            await run_blocking(store.leases.add_resource, lease, Resource("content", digest))

        resolved = await client.resolve(ref, platform=platform)
        manifest = resolved.parsed
        for layer in manifest.layers:
            layer_compression(layer.media_type)  # refuse unknown layer types before fetching
        # A lazy pull reads the TOCs the layers promise from now on, beside the config's
        # fetch (they need only the manifest); reads no layer came to need are cancelled.
        tocs = TocPrefetch(client, ref) if lazy else None
        async with trio.open_nursery() as early:
            if tocs is not None:
                have = await run_blocking(_indexed, store, manifest.layers)
                tocs.start(early, [layer for layer in manifest.layers if layer.digest not in have])
            for desc, data in _documents(resolved):
                await protect(desc.digest)
                await run_blocking(
                    lambda d=desc, b=data: store.content.put(
                        b, digest=d.digest, media_type=d.media_type
                    )
                )
            config = manifest.config
            await protect(config.digest)
            if not await run_blocking(store.content.exists, config.digest):
                data = await client.get_blob(ref, config)
                await run_blocking(
                    lambda: store.content.put(
                        data, digest=config.digest, media_type=config.media_type
                    )
                )
                counter.add(len(data))
            config_doc = ImageConfig.parse(
                await run_blocking(store.content.read, config.digest),
                what=f"image config {config.digest.short}",
            )
            if len(config_doc.diff_ids) != len(manifest.layers):
                raise ManifestError(
                    f"image {ref}: config lists {len(config_doc.diff_ids)} layers, "
                    f"manifest {len(manifest.layers)}"
                )
            layers = list(zip(manifest.layers, config_doc.diff_ids, strict=True))
            # One write (one disk sync) for all of them: on the way to the first layer byte.
            protected = [
                Resource(kind, layer.digest) for layer, _ in layers for kind in ("content", "layer")
            ]
            await run_blocking(store.leases.add_resources, lease, protected)
            if on_layers is not None:
                on_layers(resolved.manifest, layers)
            if not lazy:  # "keep it local": never evicted under a cache limit, from now on
                await run_blocking(store.cache.mark, [layer.digest for layer, _ in layers], KEEP)

            job = LayerJob(store, client, ref, layers, progress, counter, limits, concurrency, tocs)
            cached = await run_blocking(_cached_chain, store, layers, not lazy)
            artifact = None
            if cached is not None:  # containerd's cache rule: nothing to fetch
                outcomes = tuple(
                    LayerOutcome(
                        layer,
                        "complete" if not lazy else "store",
                        f"committed snapshot {cached[i][7:19]}",
                    )
                    for i, (layer, _) in enumerate(layers)
                )
            elif lazy:
                outcomes, artifact = await job.index_all(resolved, build=build)
            else:
                outcomes, artifact = await job.complete_all(), None
            early.cancel_scope.cancel()

        if check is not None:
            await run_blocking(_check_layers, store, manifest.layers, check, job.indexes)

        plat = resolved.manifest.platform or config_doc.platform
        name = image_name(ref)
        if record:
            now = time.time()
            image = ImageRecord(
                name=name,
                target_digest=resolved.target.digest,
                target_media_type=resolved.target.media_type,
                target_size=resolved.target.size,
                manifest_digest=resolved.manifest.digest,
                platform=str(plat),
                created=now,
                updated=now,
            )
            await run_blocking(store.images.put, image)
            chain = [(layer.digest, diff_id) for layer, diff_id in layers]
            await run_blocking(store.snapshots.commit_chain, chain, {"fusesnap.image": name})
    finally:
        if lease_id is None:
            with trio.CancelScope(shield=True):
                await run_blocking(store.leases.delete, own.id)
    return PullResult(
        name=name,
        target=resolved.target,
        manifest=resolved.manifest,
        platform=str(plat),
        layers=manifest.layers,
        fetched_blobs=counter.blobs,
        fetched_bytes=counter.bytes,
        outcomes=outcomes,
        artifact=artifact.digest if artifact is not None else None,
        cached=cached[-1] if cached else None,
        diff_ids=tuple(config_doc.diff_ids),
    )


def _documents(resolved: Resolved) -> Sequence[tuple[Descriptor, bytes]]:
    """The index (if the reference named one) and the platform's manifest."""
    docs = [(resolved.target, resolved.target_bytes)]
    if resolved.manifest.digest != resolved.target.digest:
        docs.append((resolved.manifest, resolved.manifest_bytes))
    return docs


def _cached_chain(
    store: Store, layers: Sequence[tuple[Descriptor, Digest]], complete: bool
) -> list[str] | None:
    """(blocking) The image's chain IDs if its committed snapshots are all there, of these
    layers, indexed (and with ``complete``, every chunk local); else None."""
    chains = chain_ids([diff_id for _, diff_id in layers])
    for chain, (layer, _) in zip(chains, layers, strict=True):
        try:
            record = store.snapshots.get(chain)
        except NotFoundError:
            return None
        if record.kind != COMMITTED or record.layer != layer.digest:
            return None
        if not store.layers.exists(layer.digest):
            return None
        if complete and not layer_complete(store, layer.digest):
            return None
    return chains


def _check_layers(
    store: Store,
    layers: Sequence[Descriptor],
    check: Callable[[Sequence[LayerIndex]], object],
    known: Mapping[Digest, LayerIndex],
) -> None:
    check([known.get(d.digest) or decode(store.layers.index(d.digest)) for d in layers])


def _indexed(store: Store, layers: Sequence[Descriptor]) -> set[Digest]:
    """(blocking) The layers whose index the store has."""
    return {layer.digest for layer in layers if store.layers.exists(layer.digest)}
