"""Format version 3 of the encoded LayerIndex: gzip windows named by digest and located in a
windows blob instead of carried inline; versions 1 and 2 (inline windows) still decode."""

from __future__ import annotations

import dataclasses
import hashlib
import os

import pytest

from fusesnap.digest import Digest
from fusesnap.index.model import Checkpoint, GzipCheckpoints, LayerError, decode, encode
from tests.lazy.test_layerindex import sample_index
from tests.lazy.test_layerindex_v2 import body_of, rebuild

WINDOWS = Digest("sha256:" + "ef" * 32)


def windowed_index(*, external: bool):
    w1, w2 = os.urandom(32768), os.urandom(32768)
    points: tuple[Checkpoint, ...] = (
        Checkpoint(10, 0, 0, b""),
        Checkpoint(2000, 3, 4096, w1),
        Checkpoint(3000, 0, 8192, w2),
    )
    cp = GzipCheckpoints(5000, 20000, 4096, 32768, points)
    if external:
        points = tuple(
            dataclasses.replace(p, window=b"", wclength=100 + i) for i, p in enumerate(points)
        )
        points = (dataclasses.replace(points[0], wclength=0), *points[1:])
        cp = dataclasses.replace(cp, points=points, windows_blob=WINDOWS)
    idx = dataclasses.replace(sample_index(), checkpoints=cp, compressed_size=5000,
                              uncompressed_size=20000)  # fmt: skip
    return idx, (w1, w2)


def test_a_window_is_named_by_its_sha256() -> None:
    idx, (w1, _) = windowed_index(external=False)
    assert idx.checkpoints is not None
    assert idx.checkpoints.points[0].digest == b""  # a member start: no window
    assert idx.checkpoints.points[1].digest == hashlib.sha256(w1).digest()
    assert idx.window_digests() == {p.digest for p in idx.checkpoints.points[1:]}


def test_external_windows_round_trip_with_their_blob_ranges() -> None:
    idx, _ = windowed_index(external=True)
    got = decode(encode(idx))
    assert got == idx
    cp = got.checkpoints
    assert cp is not None
    assert cp.windows_blob == WINDOWS
    assert [cp.window_range(i) for i in range(3)] == [(0, 0), (0, 101), (101, 102)]
    assert len(encode(idx)) < 2000  # the windows are not in it


def test_without_windows_keeps_the_digests_only() -> None:
    idx, _ = windowed_index(external=False)
    stripped = idx.without_windows()
    assert stripped.checkpoints is not None
    assert not any(p.window for p in stripped.checkpoints.points)
    assert stripped.window_digests() == idx.window_digests()
    assert decode(encode(stripped)) == stripped
    assert len(encode(stripped)) * 10 < len(encode(idx))


def test_version_2_inline_windows_still_decode() -> None:
    idx, (w1, w2) = windowed_index(external=False)
    body = body_of(encode(idx))
    body[8] = body[8][:6]  # version 2: [spacing, window_size, coffs, bits, uoffs, windows]
    old = decode(rebuild(body, version=2))
    assert old.checkpoints is not None
    assert [p.window for p in old.checkpoints.points] == [b"", w1, w2]
    assert old.window_digests() == idx.window_digests()


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda gz: gz[6].__setitem__(1, b"short"), "bad window digest"),
        (lambda gz: gz[6].__setitem__(1, bytes(32)), "does not match its digest"),
        (lambda gz: gz[6].__setitem__(1, b""), "does not match its digest|without a digest"),
        (lambda gz: gz[7].__setitem__(1, -1), "out of range"),
        (lambda gz: gz[7].pop(), "columns differ"),
        (lambda gz: gz.__setitem__(8, "sha256:nothex"), "windows blob|digest"),
        (lambda gz: gz.pop(), "want an array of 9"),
    ],
)
def test_hostile_window_fields_are_refused(mutate, match: str) -> None:
    idx, _ = windowed_index(external=False)
    body = body_of(encode(idx))
    mutate(body[8])
    with pytest.raises(LayerError, match=match):
        decode(rebuild(body))
