"""Reading a layer's own table of contents (eStargz, zstd:chunked) with range reads.

The formats' parsing is pure (`fusesnap.index.estargz`, `fusesnap.index.zstdchunked`);
here are the reads around it: the footer or TOC ranges through ``fetch``, and the
parse in a worker thread.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from fusesnap.blocking import run_blocking
from fusesnap.digest import Digest
from fusesnap.errors import LayerError
from fusesnap.index import MAX_TOC_SIZE, LayerIndex, estargz, zstdchunked
from fusesnap.index.tocrows import EncodedToc
from fusesnap.oci import Descriptor

__all__ = [
    "Fetch",
    "fetch_exact",
    "read_estargz_index",
    "read_estargz_toc",
    "read_zstdchunked_index",
    "read_zstdchunked_toc",
]

Fetch = Callable[[int, int], Awaitable[bytes]]
"""``fetch(offset, length)``: exactly those bytes of the layer blob (an HTTP range read)."""


async def fetch_exact(fetch: Fetch, offset: int, length: int, *, what: str) -> bytes:
    """``fetch(offset, length)``, refusing a short or long answer with `LayerError`."""
    data = await fetch(offset, length)
    if len(data) != length:
        raise LayerError(f"{what}: read {len(data)} bytes at offset {offset}, wanted {length}")
    return data


async def read_estargz_index(
    fetch: Fetch,
    *,
    layer: Descriptor,
    diff_id: Digest,
    max_toc: int = MAX_TOC_SIZE,
) -> LayerIndex:
    """`read_estargz_toc`, as records."""
    toc = await read_estargz_toc(fetch, layer=layer, diff_id=diff_id, max_toc=max_toc)
    return await run_blocking(toc.index)


async def read_estargz_toc(
    fetch: Fetch,
    *,
    layer: Descriptor,
    diff_id: Digest,
    max_toc: int = MAX_TOC_SIZE,
) -> EncodedToc:
    """The index of eStargz layer ``layer`` from its footer and TOC, in its stored form.

    ``fetch(offset, length)`` reads a range of the blob (e.g.
    ``functools.partial(client.read_range, ref, layer.digest)``); it is
    called twice. ``diff_id`` is taken as given (from the image config).
    ``max_toc`` bounds the TOC, compressed and inflated.

    Raise `DigestMismatchError` if the TOC does not match the layer's
    ``toc.digest`` annotation, `LayerError` if the blob is not eStargz or its
    TOC is unusable (no footer, TOC too large, bad entries). Errors of
    ``fetch`` pass through.

    Concurrency: inflating, checking and encoding the TOC run in a worker thread.
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
    return await run_blocking(
        estargz.encode_toc_member, member, toc_offset, layer, diff_id, max_toc
    )


async def read_zstdchunked_index(
    fetch: Fetch,
    *,
    layer: Descriptor,
    diff_id: Digest,
    max_toc: int = MAX_TOC_SIZE,
) -> LayerIndex:
    """`read_zstdchunked_toc`, as records."""
    toc = await read_zstdchunked_toc(fetch, layer=layer, diff_id=diff_id, max_toc=max_toc)
    return await run_blocking(toc.index)


async def read_zstdchunked_toc(
    fetch: Fetch,
    *,
    layer: Descriptor,
    diff_id: Digest,
    max_toc: int = MAX_TOC_SIZE,
) -> EncodedToc:
    """The index of zstd:chunked layer ``layer`` from its TOC, in its stored form.

    ``fetch(offset, length)`` reads a range of the blob; it is called once.
    ``diff_id`` is taken as given (from the image config). ``max_toc`` bounds
    the TOC, compressed and decompressed.

    Raise `DigestMismatchError` if the TOC does not match the layer's
    checksum annotation, `LayerError` if the layer has no manifest-position
    annotation or its TOC is unusable. Errors of ``fetch`` pass through.

    Concurrency: decompressing, checking and encoding the TOC run in a worker thread.
    """
    what = f"layer {layer.digest.short}"
    offset, length, ulength = zstdchunked.toc_position(layer, max_toc, what)
    start = max(offset - zstdchunked.SKIPPABLE_HEADER, 0)
    data = await fetch_exact(fetch, start, offset + length - start, what=what)
    head, frame = data[: offset - start], data[offset - start :]
    # File data ends where the skippable frame around the TOC begins.
    data_end = start if zstdchunked.is_skippable_header(head, length) else offset
    return await run_blocking(
        zstdchunked.encode_toc_frame, frame, ulength, data_end, layer, diff_id
    )
