"""Where a layer's index comes from: the best source there is, kept as a layer record.

    found = await resolve_layer_index(client, ref, layer, diff_id, store, artifact=indexes)
    found.index        the `LayerIndex` (also stored: ``store.layers.get(layer.digest)``)
    found.source       which source gave it (`IndexSource`)
    found.describe()   "index from eStargz TOC" (for progress output)

Sources, best first:

    store          the layer is indexed here already                    nothing fetched
    estargz        the TOC that ``containerd.io/snapshot/stargz/toc.digest`` vouches for
                                                                         two range requests
    zstd:chunked   the TOC at ``(io.github.)containers.zstd-chunked.manifest-position``
                                                                         one range request
    artifact       a fusesnap index artifact of the image               found once per image
                   (`fusesnap.pull.artifact`), for this very layer       (one small blob a layer)
    soci           a zTOC in the image's SOCI index (v2, else v1;       found once per image
                   `fusesnap.pull.socifind`), for this very layer        (one blob a layer)
    built          none of these: stream the layer once and index it (`stream_layer`, the
                   path of a full pull); its chunks are kept too, as the bytes crossed the
                   network anyway

A TOC comes first where the layer's annotations promise one: it is the layer's own index,
its reads start with the manifest (`fusesnap.pull.earlytoc`), and an index artifact's index
of such a layer is that TOC's (``fusesnap index`` reads it), one more blob to fetch and
decode after the artifact's discovery. An artifact is still looked up for the image's
access profile and for its other layers (`fusesnap.pull.layers`).

A source that is there but unusable (an artifact index of another layer or diff ID, a TOC
that does not verify or parse) is passed over with a warning, never trusted: the next one
is tried, down to streaming the layer, whose index is computed from the bytes and checked
against the image config's diff ID.

A lazy source stores the layer record with every chunk digest of its index
(`LayerRecord.chunks`) and none of the chunks: `LayerStore.present_chunks` says how much
is local; reads and a full pull (`fusesnap.lazy.fetcher`) fetch the rest by range.

Leases: the caller holds a lease on ``("layer", digest)`` and ``("content", digest)`` (the
ingest file of a streamed layer) before calling, as `fusesnap.pull.image.pull` does, so
that gc spares the record and chunks written here before an image record points at them.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Protocol

import trio

from fusesnap.blocking import run_blocking
from fusesnap.digest import Digest
from fusesnap.errors import (
    AlreadyExistsError,
    DigestMismatchError,
    LayerError,
    NotFoundError,
    RegistryNotFoundError,
)
from fusesnap.index import EncodedToc, LayerIndex, Limits, decode
from fusesnap.lazy import check_random_access
from fusesnap.oci import Descriptor
from fusesnap.pull.artifact import ArtifactIndexes
from fusesnap.pull.earlytoc import EarlyToc, read_toc_early
from fusesnap.pull.indexing import store_encoded_toc, store_layer_index
from fusesnap.pull.socifind import SociIndex, read_soci_index
from fusesnap.pull.streaming import Restart, download_and_ingest
from fusesnap.reference import Reference
from fusesnap.registry import RegistryClient
from fusesnap.store import Store
from fusesnap.termui import human_size

__all__ = [
    "FetchCounter",
    "IndexSource",
    "NoProgress",
    "PullProgress",
    "ResolvedIndex",
    "describe_source",
    "layer_complete",
    "resolve_layer_index",
    "stream_layer",
]

log = logging.getLogger(__name__)

# Another process may be ingesting the same blob; wait for it this often.
_LOCKED_POLL = 0.5


class PullProgress(Protocol):
    """What a pull reports as it goes (`fusesnap.termui.ProgressLine` draws it)."""

    def start(self, *, total_bytes: int, items: int) -> None: ...
    def advance(self, nbytes: int) -> None: ...
    def item_done(self) -> None: ...
    def note(self, text: str) -> None: ...


class NoProgress:
    """A `PullProgress` that reports nothing."""

    def start(self, *, total_bytes: int, items: int) -> None:
        pass

    def advance(self, nbytes: int) -> None:
        pass

    def item_done(self) -> None:
        pass

    def note(self, text: str) -> None:
        pass


class FetchCounter:
    """Blobs (or ranges) and bytes received from the registry. One trio task tree only."""

    def __init__(self) -> None:
        self.blobs = 0
        self.bytes = 0

    def add(self, nbytes: int, *, blobs: int = 1) -> None:
        self.blobs += blobs
        self.bytes += nbytes


class IndexSource(enum.StrEnum):
    """Where a layer's index came from (module docstring); ``ResolvedIndex.source``."""

    STORE = "store"
    ARTIFACT = "artifact"
    SOCI = "soci"
    ESTARGZ = "estargz"
    ZSTD_CHUNKED = "zstd:chunked"
    BUILT = "built"


_DESCRIPTIONS = {
    IndexSource.STORE: "index in the local store",
    IndexSource.ARTIFACT: "index from the index artifact",
    IndexSource.SOCI: "index from SOCI zTOC",
    IndexSource.ESTARGZ: "index from eStargz TOC",
    IndexSource.ZSTD_CHUNKED: "index from zstd:chunked TOC",
    IndexSource.BUILT: "index built by streaming the layer",
}


@dataclass(frozen=True, slots=True)
class ResolvedIndex:
    """A layer's index and where it came from.

    ``fetched_bytes`` is what the registry sent for it here (TOC ranges, the streamed
    blob; an artifact's blobs are counted where the artifact is found). ``skipped``
    says why better sources were passed over (also logged as warnings).
    """

    found: LayerIndex | EncodedToc
    source: IndexSource
    fetched_bytes: int = 0
    skipped: tuple[str, ...] = ()
    _decoded: LayerIndex | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def index(self) -> LayerIndex:
        """The index's records: one read from a TOC is decoded on first use (a containerd
        Prepare needs none, `fusesnap.index.tocrows`)."""
        if isinstance(self.found, LayerIndex):
            return self.found
        if self._decoded is None:
            object.__setattr__(self, "_decoded", self.found.index())
        assert self._decoded is not None
        return self._decoded

    @property
    def random_access(self) -> bool:
        """Whether the layer's chunks can be fetched by range (a TOC's always can)."""
        if isinstance(self.found, EncodedToc):
            return True
        try:
            check_random_access(self.found)
        except LayerError:
            return False
        return True

    def describe(self) -> str:
        return _DESCRIPTIONS[self.source]


Announce = Callable[[str], None]


async def resolve_layer_index(
    client: RegistryClient,
    ref: Reference,
    layer: Descriptor,
    diff_id: Digest,
    store: Store,
    *,
    artifact: ArtifactIndexes | None,
    soci_index: SociIndex | None = None,
    progress: PullProgress | None = None,
    counter: FetchCounter | None = None,
    limits: Limits | None = None,
    announce: Announce | None = None,
    build: bool = True,
    early_toc: EarlyToc | None = None,
) -> ResolvedIndex:
    """The index of ``layer`` from the best source (see the module docstring), stored;
    with ``build=False``, `NoIndexError` where the only source left is streaming it.

    ``artifact``: the indexes of an index artifact found for the image, if any;
    ``soci_index``: its SOCI index, if any; ``early_toc``: the layer's TOC as
    `read_toc_early` read it (its bytes are the caller's to count), else it is read
    here if needed.
    ``progress``, ``counter`` and ``limits`` are for the streaming build (bytes
    received, bounds on what the layer may unpack to). ``announce(text)`` is called
    once the source is known, before a streaming build starts ("building index:
    streaming 70.9 MB").

    Raise what the last resort raises: `RegistryError` when the registry fails,
    `DigestMismatchError` when the layer does not match its digest or diff ID,
    `LayerError` for a layer that cannot be indexed. The caller holds the leases
    (module docstring).

    Cancellation: a streaming build leaves a partial ingest that the next call resumes.
    """
    counter = counter or FetchCounter()
    say = announce or (lambda text: None)
    if await run_blocking(store.layers.exists, layer.digest):
        index = await run_blocking(_stored_index, store, layer.digest)
        found = ResolvedIndex(index, IndexSource.STORE)
        say(found.describe())
        return found
    skipped: list[str] = []
    what = f"layer {layer.digest.short}"
    toc = early_toc
    if toc is None:
        toc = await read_toc_early(client, ref, layer, diff_id)
        if toc is not None:
            counter.add(toc.nbytes, blobs=toc.requests)
    if toc is not None:
        if toc.index is not None:
            await run_blocking(store_encoded_toc, store, layer, toc.index, toc.source)
            found = ResolvedIndex(toc.index, IndexSource(toc.source), toc.nbytes)
            say(found.describe())
            return found
        if not toc.unusable:
            assert toc.error is not None
            raise toc.error  # the registry failing: not a TOC to pass over
        skipped.append(f"{toc.source} TOC: {toc.error}")
        log.warning("%s: cannot use its %s TOC: %s", what, toc.source, toc.error)
    if artifact is not None and layer.digest in artifact.indexes:
        index = artifact.indexes[layer.digest]
        problem = _artifact_problem(index, layer, diff_id)
        if problem is None:
            encoded = artifact.encoded.get(layer.digest)
            index = await run_blocking(
                partial(store_layer_index, store, layer, index, "artifact", encoded=encoded)
            )
            found = ResolvedIndex(index, IndexSource.ARTIFACT, 0, tuple(skipped))
            say(found.describe())
            return found
        skipped.append(f"index artifact {artifact.digest.short}: {problem}")
        log.warning("%s: ignoring the index artifact's index: %s", what, problem)
    ztoc = soci_index.ztocs.get(layer.digest) if soci_index is not None else None
    if ztoc is not None:
        try:
            index, nbytes = await read_soci_index(client, ref, ztoc, layer, diff_id)
        except (LayerError, DigestMismatchError, RegistryNotFoundError) as exc:
            skipped.append(f"SOCI zTOC {ztoc.digest.short}: {exc}")
            log.warning("cannot use the SOCI zTOC of %s: %s", what, exc)
        else:
            counter.add(nbytes)
            index = await run_blocking(store_layer_index, store, layer, index, "soci")
            found = ResolvedIndex(index, IndexSource.SOCI, nbytes, tuple(skipped))
            say(found.describe())
            return found
    if not build:
        raise NoIndexError(
            f"{what}: no index in the store, a TOC, an index artifact or a SOCI zTOC"
        )
    say(f"building index: streaming {human_size(layer.size)}")
    before = counter.bytes
    index = await stream_layer(
        store, client, ref, layer, diff_id, progress=progress, counter=counter, limits=limits
    )
    return ResolvedIndex(index, IndexSource.BUILT, counter.bytes - before, tuple(skipped))


class NoIndexError(NotFoundError):
    """A layer has no index but the one a streaming build would make."""


def describe_source(source: str) -> str:
    """What a layer record's ``source`` means, for people ("index from SOCI zTOC")."""
    try:
        return _DESCRIPTIONS[IndexSource(source)]
    except ValueError:
        return f"index from {source}"


def _artifact_problem(index: LayerIndex, layer: Descriptor, diff_id: Digest) -> str | None:
    """Why an index artifact's ``index`` cannot stand for ``layer`` (None: it can)."""
    if index.layer_digest != layer.digest:
        return f"it is the index of layer {index.layer_digest.short}"
    if index.diff_id != diff_id:
        return f"its diff ID {index.diff_id.short} is not the image config's {diff_id.short}"
    if index.compressed_size not in (0, layer.size):
        return f"it is for a blob of {index.compressed_size} bytes, not {layer.size}"
    return None


def _stored_index(store: Store, digest: Digest) -> LayerIndex:
    return decode(store.layers.index(digest))


# -- the streaming build (also a full pull's download) ----------------------------------------


def layer_complete(store: Store, digest: Digest) -> bool:
    """(blocking) Is the layer indexed, with every chunk of it in the store?"""
    if not store.layers.exists(digest):
        return False
    presence = store.layers.present_chunks(digest)
    return presence.present == presence.total


async def stream_layer(
    store: Store,
    client: RegistryClient,
    ref: Reference,
    layer: Descriptor,
    diff_id: Digest,
    *,
    progress: PullProgress | None = None,
    counter: FetchCounter | None = None,
    limits: Limits | None = None,
) -> LayerIndex:
    """Download ``layer`` to a resumable ingest file and index it and store its chunks
    and record as it arrives (source ``built``; `fusesnap.pull.streaming`); return its
    index.

    A layer already complete in the store is not fetched. If another process is
    ingesting the same blob, wait for it. The caller holds the leases (module docstring).
    """
    progress = progress or NoProgress()
    counter = counter or FetchCounter()
    while True:
        if await run_blocking(layer_complete, store, layer.digest):
            return await run_blocking(_stored_index, store, layer.digest)
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
            index, received = await download_and_ingest(
                store,
                client,
                ref,
                layer,
                diff_id,
                writer,
                on_bytes=progress.advance,
                limits=limits,
            )
            counter.add(received)
            return index
        except Restart as exc:
            log.info("layer %s: %s", layer.digest.short, exc)
        finally:
            with trio.CancelScope(shield=True):
                await run_blocking(writer.close)
