"""A layer's own TOC (eStargz, zstd:chunked), read before its turn in a lazy pull.

`TocPrefetch` starts the TOCs' range reads as soon as the manifest is known, beside the
image config's fetch (`fetch_toc_early`: the bytes need only the layer's descriptor);
`read_toc_early` then checks and encodes them once the config gives the diff ID. A TOC is
a layer's best source after the store (`fusesnap.pull.indexsource`); the artifact
lookup (for the image's access profile and its other layers) runs beside these reads
(`fusesnap.pull.layers`). A failure is kept, not raised: the layer then goes to the
other sources."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from functools import partial

import trio

from fusesnap.blocking import run_blocking
from fusesnap.digest import Digest
from fusesnap.errors import DigestMismatchError, FusesnapError, LayerError, ManifestError
from fusesnap.index import TOC_DIGEST_ANNOTATION, EncodedToc, is_zstdchunked
from fusesnap.oci import Descriptor, layer_compression
from fusesnap.pull.tocs import (
    Fetch,
    TocBytes,
    encode_toc_bytes,
    fetch_estargz_toc,
    fetch_zstdchunked_toc,
)
from fusesnap.reference import Reference
from fusesnap.registry import RegistryClient

__all__ = [
    "EarlyToc",
    "FetchedToc",
    "TocPrefetch",
    "fetch_toc_early",
    "read_toc_early",
    "toc_source",
]


@dataclass(frozen=True, slots=True)
class EarlyToc:
    """A layer's TOC read before its turn: beside the image's artifact and SOCI lookups,
    which it would otherwise follow (`read_toc_early`). ``error``: why it is unusable."""

    source: str  # "estargz" or "zstd:chunked" (`IndexSource`'s values)
    index: EncodedToc | None
    error: FusesnapError | None
    nbytes: int
    requests: int

    @property
    def unusable(self) -> bool:
        """The TOC is there but cannot be used: the layer goes to its other sources (a
        registry failure is not that: it is raised as it is)."""
        return self.index is None and isinstance(self.error, (LayerError, DigestMismatchError))


@dataclass(frozen=True, slots=True)
class FetchedToc:
    """A layer's TOC bytes as `fetch_toc_early` read them (``error``: why it could not)."""

    source: str
    toc: TocBytes | None
    error: FusesnapError | None
    nbytes: int
    requests: int


async def fetch_toc_early(
    client: RegistryClient, ref: Reference, layer: Descriptor
) -> FetchedToc | None:
    """The bytes of the TOC ``layer``'s annotations promise (None if none is promised),
    read now; any failure is kept (`read_toc_early`)."""
    for source, applies, fetch_toc in _TOC_FETCHERS:
        if applies(layer):
            fetch = _CountedFetch(partial(client.read_range, ref, layer.digest))
            try:
                toc = await fetch_toc(fetch, layer=layer)
            except FusesnapError as exc:
                return FetchedToc(source, None, exc, fetch.nbytes, fetch.requests)
            return FetchedToc(source, toc, None, fetch.nbytes, fetch.requests)
    return None


async def read_toc_early(
    client: RegistryClient,
    ref: Reference,
    layer: Descriptor,
    diff_id: Digest,
    *,
    fetched: FetchedToc | None = None,
) -> EarlyToc | None:
    """The TOC ``layer``'s annotations promise, read now (or as ``fetched`` already was)
    and encoded (None if none is promised); any failure is kept for
    `resolve_layer_index`, which then tries the layer's other sources."""
    got = fetched if fetched is not None else await fetch_toc_early(client, ref, layer)
    if got is None:
        return None
    if got.toc is None:
        return EarlyToc(got.source, None, got.error, got.nbytes, got.requests)
    try:
        index = await run_blocking(encode_toc_bytes, got.toc, diff_id)
    except FusesnapError as exc:
        return EarlyToc(got.source, None, exc, got.nbytes, got.requests)
    return EarlyToc(got.source, index, None, got.nbytes, got.requests)


class TocPrefetch:
    """The TOCs a lazy pull's layers promise, read from the moment the manifest is known:
    beside the image config's fetch, which they would otherwise wait for (the config gives
    only what encoding a TOC needs, the diff IDs). `start` each layer's read in a nursery
    the pull keeps open; `get` waits for it (or reads it then, if none was started)."""

    def __init__(self, client: RegistryClient, ref: Reference) -> None:
        self.client = client
        self.ref = ref
        self._done: dict[Digest, trio.Event] = {}
        self._got: dict[Digest, FetchedToc | None] = {}

    def start(self, nursery: trio.Nursery, layers: Iterable[Descriptor]) -> None:
        for layer in layers:
            if toc_source(layer) is not None and layer.digest not in self._done:
                self._done[layer.digest] = trio.Event()
                nursery.start_soon(self._read, layer)

    async def _read(self, layer: Descriptor) -> None:
        try:
            self._got[layer.digest] = await fetch_toc_early(self.client, self.ref, layer)
        finally:
            self._done[layer.digest].set()

    async def get(self, layer: Descriptor) -> FetchedToc | None:
        done = self._done.get(layer.digest)
        if done is None:
            return await fetch_toc_early(self.client, self.ref, layer)
        await done.wait()
        return self._got.get(layer.digest)


def toc_source(layer: Descriptor) -> str | None:
    """The TOC source ``layer``'s annotations promise (eStargz, zstd:chunked), if any."""
    for source, applies, _fetch in _TOC_FETCHERS:
        if applies(layer):
            return source
    return None


def _has_estargz_toc(layer: Descriptor) -> bool:
    return TOC_DIGEST_ANNOTATION in layer.annotations and _compression(layer) == "gzip"


def _has_zstdchunked_toc(layer: Descriptor) -> bool:
    return is_zstdchunked(layer) and _compression(layer) == "zstd"


def _compression(layer: Descriptor) -> str:
    try:
        return layer_compression(layer.media_type)
    except ManifestError:  # pull refuses unknown layer types before resolving any
        return ""


_TocFetcher = Callable[..., Awaitable[TocBytes]]
_TOC_FETCHERS: tuple[tuple[str, Callable[[Descriptor], bool], _TocFetcher], ...] = (
    ("estargz", _has_estargz_toc, fetch_estargz_toc),
    ("zstd:chunked", _has_zstdchunked_toc, fetch_zstdchunked_toc),
)


class _CountedFetch:
    """A `Fetch` that counts requests and bytes."""

    def __init__(self, fetch: Fetch) -> None:
        self._fetch = fetch
        self.requests = 0
        self.nbytes = 0

    async def __call__(self, offset: int, length: int) -> bytes:
        data = await self._fetch(offset, length)
        self.requests += 1
        self.nbytes += len(data)
        return data
