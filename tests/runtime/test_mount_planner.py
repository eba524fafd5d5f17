"""The snapshotter's lower mounts started while an image is resolved, and abandoned when
the resolve gives another chain: the order of the two background steps does not matter.
Against a fake `LowerMounts` (the real ones: tests/containerd/test_ctr.py)."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any, cast

from fusesnap.containerd.lowers import LowerMounts
from fusesnap.containerd.mounts import EARLY_WAIT, MountPlanner
from fusesnap.digest import Digest
from fusesnap.store import SnapshotRecord, SnapshotStore

CHAIN = "sha256:" + "c" * 64
MANIFEST = Digest("sha256:" + "a" * 64)


class FakeLowers:
    def __init__(self, live: bool = False) -> None:
        self.live = live
        self.ensured: list[tuple[str, int, float]] = []
        self.released: list[str] = []

    def is_live(self, chain: str) -> bool:
        return self.live

    def ensure(self, top: SnapshotRecord, depth: int, *, wait: float = 0.0) -> Path:
        self.ensured.append((top.key, depth, wait))
        return Path("/nonexistent")

    def release(self, chain: str) -> None:
        self.released.append(chain)


def planner(lowers: FakeLowers) -> MountPlanner:
    return MountPlanner(Path("/nonexistent"), cast(LowerMounts, lowers), cast(SnapshotStore, None))


def eventually(check: Any, what: str) -> None:
    deadline = time.monotonic() + 5
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.01)


def settle() -> None:
    """Let the planner's background threads finish."""
    eventually(
        lambda: not any(t.name.startswith(("warm ", "abandon ")) for t in threading.enumerate()),
        "the background steps to end",
    )


def test_a_started_mount_is_released_when_abandoned() -> None:
    lowers = FakeLowers()
    p = planner(lowers)
    p.start_early(CHAIN, "example.com/a:b", MANIFEST, 3)
    eventually(lambda: lowers.ensured, "the early start")
    assert lowers.ensured == [(CHAIN, 3, EARLY_WAIT)]
    p.abandon(CHAIN)
    eventually(lambda: lowers.released, "the release")
    assert lowers.released == [CHAIN]


def test_an_abandon_before_the_start_runs_stops_it() -> None:
    lowers = FakeLowers()
    p = planner(lowers)
    with p._lock:  # both background steps wait here, in either order
        p.start_early(CHAIN, "example.com/a:b", MANIFEST, 3)
        p.abandon(CHAIN)
    settle()
    assert lowers.ensured == []
    assert lowers.released == []


def test_a_mount_that_was_up_already_is_not_abandoned() -> None:
    lowers = FakeLowers(live=True)  # another image's chain, or adopted after a restart
    p = planner(lowers)
    p.start_early(CHAIN, "example.com/a:b", MANIFEST, 3)
    settle()
    p.abandon(CHAIN)
    settle()
    assert lowers.ensured == []
    assert lowers.released == []


def test_an_old_abandon_does_not_stop_a_later_start() -> None:
    lowers = FakeLowers()
    p = planner(lowers)
    p.abandon(CHAIN)  # nothing started: nothing released
    settle()
    p.start_early(CHAIN, "example.com/a:b", MANIFEST, 3)  # a later resolve of the image
    eventually(lambda: lowers.ensured, "the early start")
    assert lowers.released == []
