"""The layer part of a pull (`fusesnap.pull.image`): each layer indexed, or made complete.

A lazy pull (`LayerJob.index_all`) stores each layer's index from the best source
(`fusesnap.pull.indexsource`); a full pull (`LayerJob.complete_all`) fetches what a
layer's chunks lack by range, or streams the blob where the index has no random
access. Layers run ``concurrency`` at a time; each distinct layer once.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field

import trio

from fusesnap.blocking import run_blocking
from fusesnap.digest import Digest
from fusesnap.errors import FusesnapError, LayerError, ManifestError
from fusesnap.index import LayerIndex, Limits, decode
from fusesnap.lazy import (
    AccessProfile,
    ChunkFetcher,
    FetchLimits,
    check_random_access,
    open_chunk_fetcher,
)
from fusesnap.lazy import profile as profiles
from fusesnap.oci import Descriptor, layer_compression
from fusesnap.pull.artifact import ArtifactIndexes
from fusesnap.pull.artifactfind import find_index_artifact
from fusesnap.pull.earlytoc import EarlyToc, TocPrefetch, read_toc_early, toc_source
from fusesnap.pull.indexsource import (
    FetchCounter,
    IndexSource,
    NoIndexError,
    PullProgress,
    ResolvedIndex,
    layer_complete,
    resolve_layer_index,
    stream_layer,
)
from fusesnap.pull.socifind import SociIndex, find_soci_index
from fusesnap.reference import Reference
from fusesnap.registry import RegistryClient, Resolved
from fusesnap.store import REMOTE, Store
from fusesnap.termui import human_size

__all__ = ["LayerJob", "LayerOutcome"]

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


def _random_access_index(store: Store, digest: Digest) -> LayerIndex | None:
    """(blocking) The stored index of a layer whose chunks can be fetched by range."""
    if not store.layers.exists(digest):
        return None
    index = decode(store.layers.index(digest))
    if index.span_verified:
        return None  # a SOCI zTOC's: its chunks are not named by content, so never "complete"
    try:
        check_random_access(index)
    except LayerError:
        return None  # plain zstd, or gzip without checkpoints: only the whole blob will do
    return index


@dataclass(eq=False)
class LayerJob:
    """The layer part of one pull: the layers (in manifest order), once each."""

    store: Store
    client: RegistryClient
    ref: Reference
    layers: list[tuple[Descriptor, Digest]]
    progress: PullProgress
    counter: FetchCounter
    limits: Limits | None
    concurrency: int
    tocs: TocPrefetch | None = None  # TOC reads a lazy pull started with the manifest
    limiter: trio.CapacityLimiter = field(init=False)
    unique: dict[Digest, tuple[Descriptor, Digest]] = field(init=False)
    done: dict[Digest, LayerOutcome] = field(default_factory=dict, init=False)
    # The indexes of the layers streamed here, as stored (the check need not decode them).
    indexes: dict[Digest, LayerIndex] = field(default_factory=dict, init=False)

    def __post_init__(self) -> None:
        self.limiter = trio.CapacityLimiter(max(1, self.concurrency))
        self.unique = {}
        for layer, diff_id in self.layers:
            self.unique.setdefault(layer.digest, (layer, diff_id))

    def label(self, digest: Digest) -> str:
        n = next(i for i, (layer, _) in enumerate(self.layers) if layer.digest == digest)
        return f"layer {n + 1}/{len(self.layers)}"

    def outcomes(self) -> tuple[LayerOutcome, ...]:
        return tuple(self.done[layer.digest] for layer, _ in self.layers)

    # -- lazy: indexes only -------------------------------------------------------------------

    async def index_all(
        self, resolved: Resolved, *, build: bool = True
    ) -> tuple[tuple[LayerOutcome, ...], ArtifactIndexes | None]:
        """Each layer's index from its best source; ``build=False``: none is built by
        streaming a layer (its outcome is ``none``)."""
        have = {d for d in self.unique if await run_blocking(self.store.layers.exists, d)}
        wanted = [d for d in self.unique if d not in have]
        # A layer whose annotations promise a TOC is indexed from it, read from the manifest
        # on (`TocPrefetch`). Beside those reads, the lookups for the other layers: the index
        # artifact (also for the image's access profile) and the SOCI index. A TOC that turns
        # out unusable sends its layer to them after all.
        promised = [d for d in wanted if toc_source(self.unique[d][0]) is not None]
        early: dict[Digest, EarlyToc] = {}
        found = _Found()

        async def read_toc(digest: Digest) -> None:
            layer, diff_id = self.unique[digest]
            fetched = await self.tocs.get(layer) if self.tocs is not None else None
            got = await read_toc_early(self.client, self.ref, layer, diff_id, fetched=fetched)
            if got is not None:
                early[digest] = got
                self.counter.add(got.nbytes, blobs=got.requests)

        async with trio.open_nursery() as nursery:
            if wanted:
                others = [d for d in wanted if d not in promised]
                nursery.start_soon(self._look_up, resolved, others, found)
            for digest in promised:
                nursery.start_soon(read_toc, digest)
        unusable = [d for d in promised if d in early and early[d].unusable]
        if unusable and (found.artifact is not None or not found.soci_searched):
            await self._look_up(resolved, unusable, found)
        artifact, soci_index = found.artifact, found.soci
        indexed = set(artifact.indexes) if artifact is not None else set()
        if soci_index is not None:
            indexed.update(d for d in wanted if d in soci_index.ztocs)
        indexed.update(d for d in promised if d not in unusable)
        # What will be streamed, as far as can be told before trying the sources.
        streamed = build * sum(self.unique[d][0].size for d in wanted if d not in indexed)
        self.progress.start(total_bytes=streamed, items=len(self.unique))

        async def one(layer: Descriptor, diff_id: Digest) -> None:
            async with self.limiter:
                label = self.label(layer.digest)
                try:
                    got = await resolve_layer_index(
                        self.client,
                        self.ref,
                        layer,
                        diff_id,
                        self.store,
                        artifact=artifact,
                        soci_index=soci_index,
                        progress=self.progress,
                        counter=self.counter,
                        limits=self.limits,
                        announce=lambda text: self.progress.note(f"{label}: {text}"),
                        build=build,
                        early_toc=early.get(layer.digest),
                    )
                    await run_blocking(_mark_remote, self.store, layer.digest, got)
                    self.done[layer.digest] = _lazy_outcome(layer, got)
                except NoIndexError as exc:
                    self.done[layer.digest] = LayerOutcome(layer, "none", str(exc))
                self.progress.item_done()

        async with trio.open_nursery() as nursery:
            for layer, diff_id in self.unique.values():
                nursery.start_soon(one, layer, diff_id)
        return self.outcomes(), artifact

    async def _look_up(self, resolved: Resolved, layers: list[Digest], found: _Found) -> None:
        """The index artifact's indexes of ``layers`` and, if some are gzip and it was not
        yet looked for, the image's SOCI index, side by side (the round trips count at
        mount time), into ``found``. The artifact is looked for even with no ``layers``
        (its access profile), but not again once none was found."""
        gzipped = [d for d in layers if _is_gzip(self.unique[d][0])]

        async def artifact() -> None:
            more = await self._find_artifact(resolved.manifest, layers)
            found.artifact = _merged(found.artifact, more)

        async def soci() -> None:
            found.soci = await self._find_soci(resolved, gzipped)

        async with trio.open_nursery() as nursery:
            if not found.artifact_searched or found.artifact is not None:
                found.artifact_searched = True
                nursery.start_soon(artifact)
            if gzipped and not found.soci_searched:
                found.soci_searched = True
                nursery.start_soon(soci)

    async def _find_artifact(
        self, manifest: Descriptor, layers: list[Digest]
    ) -> ArtifactIndexes | None:
        try:
            artifact = await find_index_artifact(
                self.client, self.ref, manifest.digest, layers=layers
            )
        except FusesnapError as exc:
            # An optimization failing is no reason to fail the pull: the layers have other sources.
            log.warning("%s: looking for an index artifact failed: %s", self.ref, exc)
            return None
        if artifact is not None:
            self.counter.add(artifact.fetched_bytes)
            how = "referrers API" if artifact.discovery == "referrers" else "fallback tag"
            has = [f"indexes for {len(artifact.indexes)} of {len(layers)} layers"] if layers else []
            if artifact.profile is not None:
                has.append("an access profile")
            self.progress.note(
                f"index artifact {artifact.digest.short} (found through the {how}): "
                + (", and ".join(has) or "no layer needs its indexes")
            )
            if artifact.profile is not None:
                await run_blocking(_keep_profile, self.store, artifact.profile)
        return artifact

    async def _find_soci(self, resolved: Resolved, layers: list[Digest]) -> SociIndex | None:
        try:
            found = await find_soci_index(self.client, self.ref, resolved)
        except FusesnapError as exc:
            log.warning("%s: looking for a SOCI index failed: %s", self.ref, exc)
            return None
        if found is not None:
            self.counter.add(found.fetched_bytes)
            have = sum(1 for d in layers if d in found.ztocs)
            self.progress.note(f"{found.describe()}: zTOCs for {have} of {len(layers)} layers")
        return found

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
                self.indexes[layer.digest] = await stream_layer(
                    self.store,
                    self.client,
                    self.ref,
                    layer,
                    diff_id,
                    progress=self.progress,
                    counter=self.counter,
                    limits=self.limits,
                )
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


@dataclass(eq=False)
class _Found:
    """What `LayerJob.index_all`'s lookups found so far."""

    artifact: ArtifactIndexes | None = None
    soci: SociIndex | None = None
    artifact_searched: bool = False
    soci_searched: bool = False


def _merged(a: ArtifactIndexes | None, b: ArtifactIndexes | None) -> ArtifactIndexes | None:
    """``a`` with the indexes ``b`` (a second look at the artifact) adds."""
    if a is None or b is None:
        return a or b
    return dataclasses.replace(
        a,
        indexes={**a.indexes, **b.indexes},
        encoded={**a.encoded, **b.encoded},
        fetched_bytes=a.fetched_bytes + b.fetched_bytes,
    )


def _is_gzip(layer: Descriptor) -> bool:
    try:
        return layer_compression(layer.media_type) == "gzip"
    except ManifestError:
        return False


def _mark_remote(store: Store, digest: Digest, got: ResolvedIndex) -> None:
    """(blocking) A lazily pulled layer whose chunks can be fetched by range may lose
    them to the cache limit. Not one that was complete in the store with no mark (a full
    pull's, from before layers were marked): that may have been meant to stay."""
    if not got.random_access:
        return
    kept = got.source is IndexSource.STORE and not store.cache.evictable_layer(digest)
    if kept and layer_complete(store, digest):
        return
    store.cache.mark([digest], REMOTE)


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
