"""Access profiles: encoding, recording order, and the store lease that keeps them."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from fusesnap.lazy import profile as profiles
from fusesnap.lazy.profile import AccessProfile, ProfileError, Recorder
from fusesnap.store import collect_garbage, open_store

IMAGE = "sha256:" + "ab" * 32


def _d(n: int) -> bytes:
    return hashlib.sha256(str(n).encode()).digest()


def test_encode_decode_round_trip() -> None:
    p = AccessProfile(image=IMAGE, chunks=((0, _d(1)), (2, _d(2)), (0, _d(3))))
    data = profiles.encode(p)
    doc = json.loads(data)
    assert doc == {"v": 1, "image": IMAGE, "chunks": [[0, _d(1).hex()], [2, _d(2).hex()],
                                                      [0, _d(3).hex()]]}  # fmt: skip
    assert profiles.decode(data) == p
    assert profiles.encode(profiles.decode(data)) == data  # canonical


@pytest.mark.parametrize(
    "doc",
    [
        {"v": 2, "image": IMAGE, "chunks": []},
        {"v": 1, "image": 3, "chunks": []},
        {"v": 1, "image": IMAGE, "chunks": [[-1, "00" * 32]]},
        {"v": 1, "image": IMAGE, "chunks": [[0, "00"]]},
        {"v": 1, "image": IMAGE, "chunks": [[0, "zz" * 32]]},
        {"v": 1, "image": IMAGE},
        [1, 2],
    ],
)
def test_decode_rejects_bad_profiles(doc: object) -> None:
    with pytest.raises(ProfileError):
        profiles.decode(json.dumps(doc).encode())
    with pytest.raises(ProfileError):
        profiles.decode(b"not json")


def test_recorder_keeps_first_access_order() -> None:
    rec = Recorder()
    for n in (3, 1, 3, 2, 1):
        rec.note(_d(n))
    assert len(rec) == 3

    class _Ref:
        def __init__(self, digest: bytes) -> None:
            self.digest = digest

    class _Entry:
        def __init__(self, *ns: int) -> None:
            self.chunks = [_Ref(_d(n)) for n in ns]

    class _Index:
        def __init__(self, *entries: _Entry) -> None:
            self.entries = entries

    indexes = [_Index(_Entry(1, 2)), _Index(_Entry(2, 3))]
    p = rec.profile(IMAGE, indexes)  # type: ignore[arg-type]
    assert p.chunks == ((1, _d(3)), (0, _d(1)), (0, _d(2)))


def test_save_and_load_through_a_lease(tmp_path: Path) -> None:
    with open_store(tmp_path / "store") as store:
        assert profiles.load(store, IMAGE) is None
        first = AccessProfile(image=IMAGE, chunks=((0, _d(1)),))
        d1 = profiles.save(store, first)
        assert store.content.info(d1).media_type == profiles.MEDIA_TYPE
        assert profiles.load(store, IMAGE) == first
        second = AccessProfile(image=IMAGE, chunks=((0, _d(2)), (0, _d(1))))
        d2 = profiles.save(store, second)
        assert profiles.load(store, IMAGE) == second
        held = [le for le in store.leases.list() if le.labels.get(profiles.LABEL) == IMAGE]
        assert len(held) == 1  # the new profile replaced the old lease
        assert held[0].expires is None
        assert held[0].owner_pid is None
        collect_garbage(store)
        assert store.content.exists(d2)  # the lease keeps it
        assert not store.content.exists(d1)  # the replaced one is gc's
        assert profiles.load(store, "sha256:" + "cd" * 32) is None
