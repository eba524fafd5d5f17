"""The ``gz`` field of an encoded layer index: a gzip layer's checkpoints, column by column.

See `fusesnap.index.codec` for the whole format; this is its one nested record
with its own versions (windows inline in 1 and 2, named by digest in 3; in 3 a
tenth field, the concatenated span digests of a SOCI zTOC, when there are any).
"""

from __future__ import annotations

import hashlib
from typing import Any

from fusesnap.index.fields import Corrupt, Fields
from fusesnap.index.model import SHA256_SIZE, Checkpoint, GzipCheckpoints

__all__ = ["decode_checkpoints", "encode_checkpoints"]


def encode_checkpoints(cp: GzipCheckpoints) -> list[Any]:
    spans = [b"".join(cp.span_digests)] if cp.span_digests else []
    return [
        cp.spacing,
        cp.window_size,
        [p.coffset for p in cp.points],
        [p.bits for p in cp.points],
        [p.uoffset for p in cp.points],
        [p.window for p in cp.points],
        [p.digest for p in cp.points],
        [p.wclength for p in cp.points],
        None if cp.windows_blob is None else str(cp.windows_blob),
        *spans,
    ]


def decode_checkpoints(raw: Any, csize: int, usize: int, version: int) -> GzipCheckpoints:
    with_spans = version >= 3 and isinstance(raw, list) and len(raw) == 10
    f = Fields(raw, 6 if version < 3 else 10 if with_spans else 9, "checkpoints")
    spacing, window_size = f.uint(), f.uint()
    coffs, bits, uoffs, windows = f.array(), f.array(), f.array(), f.array()
    n = len(coffs)
    digests: list[Any] = [None] * n
    wclengths: list[Any] = [0] * n
    windows_blob = None
    if version >= 3:
        digests, wclengths, raw_blob = f.array(), f.array(), f.any()
        if raw_blob is not None:
            windows_blob = Fields([raw_blob], 1, "checkpoints windows blob").digest()
    spans: tuple[bytes, ...] = ()
    if with_spans:
        packed = f.blob()
        if len(packed) != SHA256_SIZE * len(coffs) or not packed:
            raise Corrupt("checkpoints: want one 32-byte span digest per point")
        spans = tuple(packed[i : i + SHA256_SIZE] for i in range(0, len(packed), SHA256_SIZE))
    if not n == len(bits) == len(uoffs) == len(windows) == len(digests) == len(wclengths):
        raise Corrupt("checkpoints: columns differ in length")
    points = []
    last_c, last_u = -1, -1
    for c, b, u, w, d, wl in zip(coffs, bits, uoffs, windows, digests, wclengths, strict=True):
        if not all(isinstance(x, int) and not isinstance(x, bool) for x in (c, b, u, wl)):
            raise Corrupt("checkpoints: non-integer offset")
        if not isinstance(w, bytes) or len(w) not in (0, window_size) or not 0 <= b <= 7:
            raise Corrupt("checkpoints: bad window or bit offset")
        if c < last_c or u <= last_u or c > csize or u > usize or wl < 0:
            raise Corrupt("checkpoints: offsets out of order or out of range")
        if d is None:  # versions 1, 2: windows inline
            d = hashlib.sha256(w).digest() if w else b""
        elif not isinstance(d, bytes) or len(d) not in (0, SHA256_SIZE):
            raise Corrupt("checkpoints: bad window digest")
        elif w and hashlib.sha256(w).digest() != d:
            raise Corrupt("checkpoints: inline window does not match its digest")
        if not d and (w or wl):
            raise Corrupt("checkpoints: window without a digest")
        last_c, last_u = c, u
        points.append(Checkpoint(c, b, u, w, d, wl))
    return GzipCheckpoints(
        csize, usize, spacing, window_size, tuple(points), windows_blob, span_digests=spans
    )
