"""Reading a layer's own table of contents (eStargz, zstd:chunked) with range reads.

The formats' parsing is pure (`fusesnap.index.estargz`, `fusesnap.index.zstdchunked`);
here are the reads around it: the footer or TOC ranges through ``fetch`` (`fetch_*_toc`,
which need only the layer's descriptor: a lazy pull starts them as soon as it has the
manifest), and the TOC's checks and encoding in a worker thread (`encode_toc_bytes`,
which also needs the layer's diff ID, from the image config).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from fusesnap.blocking import run_blocking
from fusesnap.digest import Digest
from fusesnap.errors import LayerError
from fusesnap.index import MAX_TOC_SIZE, EncodedToc, LayerIndex, estargz, zstdchunked
from fusesnap.oci import Descriptor

__all__ = [
    "Fetch",
    "TocBytes",
    "encode_toc_bytes",
    "fetch_estargz_toc",
    "fetch_exact",
    "fetch_zstdchunked_toc",
    "read_estargz_index",
    "read_zstdchunked_index",
]

Fetch = Callable[[int, int], Awaitable[bytes]]
"""``fetch(offset, length)``: exactly those bytes of the layer blob (an HTTP range read)."""


async def fetch_exact(fetch: Fetch, offset: int, length: int, *, what: str) -> bytes:
    """``fetch(offset, length)``, refusing a short or long answer with `LayerError`."""
    data = await fetch(offset, length)
    if len(data) != length:
        raise LayerError(f"{what}: read {len(data)} bytes at offset {offset}, wanted {length}")
    return data


@dataclass(frozen=True, slots=True)
class TocBytes:
    """A layer's TOC as read from its blob, not yet checked: all `encode_toc_bytes` needs
    but the layer's diff ID (so it can be read before the image config is known).

    ``data``: eStargz, the TOC's gzip member, which starts at ``data_end``; zstd:chunked,
    the TOC's zstd frame, ``ulength`` bytes decompressed, file data ending at ``data_end``.
    """

    layer: Descriptor
    compression: str  # "estargz" or "zstd:chunked"
    data: bytes
    data_end: int
    ulength: int = 0
    max_toc: int = MAX_TOC_SIZE


def encode_toc_bytes(toc: TocBytes, diff_id: Digest) -> EncodedToc:
    """(blocking) The stored index of ``toc``'s layer: `DigestMismatchError` if the TOC
    does not match its annotation, `LayerError` if it is unusable."""
    if toc.compression == "estargz":
        return estargz.encode_toc_member(toc.data, toc.data_end, toc.layer, diff_id, toc.max_toc)
    return zstdchunked.encode_toc_frame(toc.data, toc.ulength, toc.data_end, toc.layer, diff_id)


async def fetch_estargz_toc(
    fetch: Fetch, *, layer: Descriptor, max_toc: int = MAX_TOC_SIZE
) -> TocBytes:
    """The TOC member of eStargz layer ``layer``, found through its footer.

    ``fetch(offset, length)`` reads a range of the blob (e.g.
    ``functools.partial(client.read_range, ref, layer.digest)``); it is
    called twice. ``max_toc`` bounds the TOC, compressed and inflated.

    Raise `LayerError` if the blob is not eStargz or its TOC is too large
    (`encode_toc_bytes` checks the rest: the TOC's digest, its entries).
    Errors of ``fetch`` pass through.
    """
    what = f"layer {layer.digest.short}"
    if layer.size < estargz.LEGACY_FOOTER_SIZE:
        raise LayerError(f"{what}: {layer.size} bytes is too small for an eStargz footer")
    n = min(estargz.FOOTER_SIZE, layer.size)
    tail = await fetch_exact(fetch, layer.size - n, n, what=what)
    toc_offset, footer_size = estargz.parse_footer(tail, what=what)
    toc_end = layer.size - footer_size
    if not 0 <= toc_offset < toc_end:
        raise LayerError(f"{what}: eStargz footer points outside the blob ({toc_offset})")
    if toc_end - toc_offset > max_toc:
        raise LayerError(
            f"{what}: eStargz TOC of {toc_end - toc_offset} bytes exceeds the limit of {max_toc}"
        )
    member = await fetch_exact(fetch, toc_offset, toc_end - toc_offset, what=what)
    return TocBytes(layer, "estargz", member, toc_offset, max_toc=max_toc)


async def fetch_zstdchunked_toc(
    fetch: Fetch, *, layer: Descriptor, max_toc: int = MAX_TOC_SIZE
) -> TocBytes:
    """The TOC frame of zstd:chunked layer ``layer``, where its annotations place it.

    ``fetch(offset, length)`` reads a range of the blob; it is called once.
    ``max_toc`` bounds the TOC, compressed and decompressed.

    Raise `LayerError` if the layer has no manifest-position annotation
    (`encode_toc_bytes` checks the rest: the TOC's checksum, its entries).
    Errors of ``fetch`` pass through.
    """
    what = f"layer {layer.digest.short}"
    offset, length, ulength = zstdchunked.toc_position(layer, max_toc, what)
    start = max(offset - zstdchunked.SKIPPABLE_HEADER, 0)
    data = await fetch_exact(fetch, start, offset + length - start, what=what)
    head, frame = data[: offset - start], data[offset - start :]
    # File data ends where the skippable frame around the TOC begins.
    data_end = start if zstdchunked.is_skippable_header(head, length) else offset
    return TocBytes(layer, "zstd:chunked", frame, data_end, ulength, max_toc)


async def read_estargz_index(
    fetch: Fetch, *, layer: Descriptor, diff_id: Digest, max_toc: int = MAX_TOC_SIZE
) -> LayerIndex:
    """The `LayerIndex` of eStargz layer ``layer``: `fetch_estargz_toc`, then (in a worker
    thread) `encode_toc_bytes` and the rows decoded."""
    toc = await fetch_estargz_toc(fetch, layer=layer, max_toc=max_toc)
    return await run_blocking(_records, toc, diff_id)


async def read_zstdchunked_index(
    fetch: Fetch, *, layer: Descriptor, diff_id: Digest, max_toc: int = MAX_TOC_SIZE
) -> LayerIndex:
    """The `LayerIndex` of zstd:chunked layer ``layer``: `fetch_zstdchunked_toc`, then
    (in a worker thread) `encode_toc_bytes` and the rows decoded."""
    toc = await fetch_zstdchunked_toc(fetch, layer=layer, max_toc=max_toc)
    return await run_blocking(_records, toc, diff_id)


def _records(toc: TocBytes, diff_id: Digest) -> LayerIndex:
    return encode_toc_bytes(toc, diff_id).index()
