"""Pull: copy an image's manifest and config into the store, and each layer's index and chunks.

Layers are stored the way every later read wants them (`fusesnap.pull.indexing`): a
layer index plus its files' chunks in the de-duplicated chunk store.

- A full pull (the default) makes every layer complete. A layer with no record is
  downloaded to a resumable ingest file, verified, indexed and dropped
  (`fusesnap.pull.indexsource.stream_layer`); a layer that has an index but lacks
  chunks (a lazy pull came first) gets only the missing chunks, by range
  (`fusesnap.lazy.fetcher`), unless its format has no random access (plain zstd).
- A lazy pull (``lazy=True``) stores each layer's *index* only, from the best source
  (`fusesnap.pull.indexsource.resolve_layer_index`: the store, an index artifact,
  an eStargz or zstd:chunked TOC, else a streaming build); chunks come later.

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
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import trio

from fusesnap.blocking import run_blocking
from fusesnap.digest import Digest
from fusesnap.errors import FusesnapError, LayerError, ManifestError, NotFoundError
from fusesnap.index import LayerIndex, Limits, decode
from fusesnap.lazy import AccessProfile, ChunkFetcher, FetchLimits, layout_of, open_chunk_fetcher
from fusesnap.lazy import profile as profiles
from fusesnap.oci import Descriptor, ImageConfig, Platform, chain_ids, layer_compression
from fusesnap.pull.artifact import ArtifactIndexes
from fusesnap.pull.artifactfind import find_index_artifact
from fusesnap.pull.indexsource import (
    FetchCounter,
    IndexSource,
    NoProgress,
    PullProgress,
    ResolvedIndex,
    layer_complete,
    resolve_layer_index,
    stream_layer,
    toc_source,
)
from fusesnap.reference import Reference
from fusesnap.registry import RegistryClient, Resolved
from fusesnap.store import COMMITTED, ImageRecord, Resource, Store
from fusesnap.termui import human_size

__all__ = ["LayerOutcome", "PullProgress", "PullResult", "image_name", "pull"]

log = logging.getLogger(__name__)

# Completing a lazily pulled layer fetches nearly all of it. Every gzip request starts at a
# checkpoint before its first chunk, so neighbouring requests overlap by up to a checkpoint
# span (4 MiB inflated): fewer, larger requests than a read's keep that small (Debian:
# 1.07x the blob bytes, against 1.23x with the read defaults), at some 100 MiB of memory
# per request in flight.
_COMPLETE_LIMITS = FetchLimits(
    max_parallel=4, prefetch_parallel=4, max_request=16 << 20, max_inflate=64 << 20
)


@dataclass(frozen=True, slots=True)
class LayerOutcome:
    """What a pull did for one layer (in manifest order).

    ``action``: for a lazy pull the index source (`IndexSource` values: ``store``,
    ``artifact``, ``estargz``, ``zstd:chunked``, ``built``); for a full pull
    ``complete`` (nothing to do), ``ranges`` (missing chunks fetched by range) or
    ``download`` (the blob streamed and indexed). ``text`` says it for people.
    """

    layer: Descriptor
    action: str
    text: str
    fetched_bytes: int = 0


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
    """
    progress = progress or NoProgress()
    lease = await run_blocking(
        lambda: store.leases.create(
            expires_in=24 * 3600, labels={"fusesnap/pull": str(ref)}, owner_pid=os.getpid()
        )
    )
    counter = FetchCounter()
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
        for layer, _ in layers:
            await protect(layer.digest)
            await run_blocking(store.leases.add_resource, lease.id, Resource("layer", layer.digest))

        job = _Job(store, client, ref, layers, progress, counter, limits, concurrency)
        cached = await run_blocking(_cached_chain, store, layers, not lazy)
        artifact = None
        if cached is not None:  # containerd's cache rule: nothing to fetch
            outcomes = tuple(LayerOutcome(layer, "complete" if not lazy else "store",
                                          f"committed snapshot {cached[i][7:19]}")
                             for i, (layer, _) in enumerate(layers))  # fmt: skip
        elif lazy:
            outcomes, artifact = await job.index_all(resolved.manifest)
        else:
            outcomes, artifact = await job.complete_all(), None

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
        chain = [(layer.digest, diff_id) for layer, diff_id in layers]
        await run_blocking(store.snapshots.commit_chain, chain, {"fusesnap.image": name})
    finally:
        with trio.CancelScope(shield=True):
            await run_blocking(store.leases.delete, lease.id)
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
) -> None:
    check([decode(store.layers.index(layer.digest)) for layer in layers])


def _random_access_index(store: Store, digest: Digest) -> LayerIndex | None:
    """(blocking) The stored index of a layer whose chunks can be fetched by range."""
    if not store.layers.exists(digest):
        return None
    index = decode(store.layers.index(digest))
    try:
        layout_of(index)
    except LayerError:
        return None  # plain zstd, or gzip without checkpoints: only the whole blob will do
    return index


class _Job:
    """The layer part of one pull: the layers (in manifest order), once each."""

    def __init__(
        self,
        store: Store,
        client: RegistryClient,
        ref: Reference,
        layers: list[tuple[Descriptor, Digest]],
        progress: PullProgress,
        counter: FetchCounter,
        limits: Limits | None,
        concurrency: int,
    ) -> None:
        self.store = store
        self.client = client
        self.ref = ref
        self.layers = layers
        self.progress = progress
        self.counter = counter
        self.limits = limits
        self.limiter = trio.CapacityLimiter(max(1, concurrency))
        self.unique: dict[Digest, tuple[Descriptor, Digest]] = {}
        for layer, diff_id in layers:
            self.unique.setdefault(layer.digest, (layer, diff_id))
        self.done: dict[Digest, LayerOutcome] = {}

    def label(self, digest: Digest) -> str:
        n = next(i for i, (layer, _) in enumerate(self.layers) if layer.digest == digest)
        return f"layer {n + 1}/{len(self.layers)}"

    def outcomes(self) -> tuple[LayerOutcome, ...]:
        return tuple(self.done[layer.digest] for layer, _ in self.layers)

    # -- lazy: indexes only -------------------------------------------------------------------

    async def index_all(
        self, manifest: Descriptor
    ) -> tuple[tuple[LayerOutcome, ...], ArtifactIndexes | None]:
        have = {d for d in self.unique if await run_blocking(self.store.layers.exists, d)}
        wanted = [d for d in self.unique if d not in have]
        artifact = await self._find_artifact(manifest, wanted) if wanted else None
        found = artifact.indexes if artifact is not None else {}
        # What will be streamed, as far as can be told before trying the sources.
        streamed = sum(
            layer.size
            for d, (layer, _) in self.unique.items()
            if d not in have and d not in found and toc_source(layer) is None
        )
        self.progress.start(total_bytes=streamed, items=len(self.unique))

        async def one(layer: Descriptor, diff_id: Digest) -> None:
            async with self.limiter:
                label = self.label(layer.digest)
                got = await resolve_layer_index(
                    self.client, self.ref, layer, diff_id, self.store,
                    artifact=artifact, progress=self.progress, counter=self.counter,
                    limits=self.limits,
                    announce=lambda text: self.progress.note(f"{label}: {text}"),
                )  # fmt: skip
                self.done[layer.digest] = _lazy_outcome(layer, got)
                self.progress.item_done()

        async with trio.open_nursery() as nursery:
            for layer, diff_id in self.unique.values():
                nursery.start_soon(one, layer, diff_id)
        return self.outcomes(), artifact

    async def _find_artifact(
        self, manifest: Descriptor, layers: list[Digest]
    ) -> ArtifactIndexes | None:
        try:
            artifact = await find_index_artifact(self.client, self.ref, manifest.digest,
                                                 layers=layers)  # fmt: skip
        except FusesnapError as exc:
            # An optimization failing is no reason to fail the pull: the layers have other sources.
            log.warning("%s: looking for an index artifact failed: %s", self.ref, exc)
            return None
        if artifact is not None:
            self.counter.add(artifact.fetched_bytes)
            how = "referrers API" if artifact.discovery == "referrers" else "fallback tag"
            self.progress.note(
                f"index artifact {artifact.digest.short} (found through the {how}): "
                f"indexes for {len(artifact.indexes)} of {len(layers)} layers"
                + (", and an access profile" if artifact.profile is not None else "")
            )
            if artifact.profile is not None:
                await run_blocking(_keep_profile, self.store, artifact.profile)
        return artifact

    # -- full: every chunk --------------------------------------------------------------------

    async def complete_all(self) -> tuple[LayerOutcome, ...]:
        todo = []
        for digest, (layer, diff_id) in self.unique.items():
            if await run_blocking(layer_complete, self.store, digest):
                self.done[digest] = LayerOutcome(layer, "complete", "already in the store")
            else:
                todo.append((layer, diff_id))
        self.progress.start(total_bytes=sum(d.size for d, _ in todo), items=len(todo))
        if todo:

            async def fetch_range(digest: Digest, offset: int, length: int) -> bytes:
                data = await self.client.read_range(self.ref, digest, offset, length)
                self.counter.add(len(data))
                self.progress.advance(len(data))
                return data

            async with (
                open_chunk_fetcher(
                    fetch_range, self.store.chunks, limits=_COMPLETE_LIMITS
                ) as fetcher,
                trio.open_nursery() as nursery,
            ):
                for layer, diff_id in todo:
                    nursery.start_soon(self._complete, fetcher, layer, diff_id)
        return self.outcomes()

    async def _complete(self, fetcher: ChunkFetcher, layer: Descriptor, diff_id: Digest) -> None:
        async with self.limiter:
            index = await run_blocking(_random_access_index, self.store, layer.digest)
            before = self.counter.bytes
            if index is not None:
                await self._fetch_missing(fetcher, index, layer)
                action, text = "ranges", "missing chunks fetched by range"
            else:
                await stream_layer(
                    self.store, self.client, self.ref, layer, diff_id,
                    progress=self.progress, counter=self.counter, limits=self.limits,
                )  # fmt: skip
                action, text = "download", "downloaded and indexed"
            fetched = self.counter.bytes - before
            self.done[layer.digest] = LayerOutcome(layer, action, text, fetched)
            self.progress.item_done()

    async def _fetch_missing(
        self, fetcher: ChunkFetcher, index: LayerIndex, layer: Descriptor
    ) -> None:
        what = f"layer {layer.digest.short}"
        self.progress.note(f"{self.label(layer.digest)}: fetching missing chunks by range")
        result = await fetcher.prefetch(index, [e for e in index.entries if e.chunks])
        if result.failed:
            assert result.first_error is not None
            raise result.first_error
        if not await run_blocking(layer_complete, self.store, layer.digest):
            raise LayerError(f"{what}: chunks still missing after fetching them all")


def _keep_profile(store: Store, profile: AccessProfile) -> None:
    """(blocking) An artifact's access profile, unless the store has one of its own."""
    if profiles.load(store, profile.image) is None:
        profiles.save(store, profile)


def _lazy_outcome(layer: Descriptor, got: ResolvedIndex) -> LayerOutcome:
    text = got.describe()
    if got.source is IndexSource.BUILT:
        text = f"{text} ({human_size(got.fetched_bytes)})"
    if got.skipped:
        text += f"; passed over: {'; '.join(got.skipped)}"
    return LayerOutcome(layer, str(got.source), text, got.fetched_bytes)
