"""Prefetch on lazy mounts: eStargz landmark files and recorded access profiles arrive
in the background once the mount is ready, before anything reads them (a real registry
behind the counting proxy)."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

import pytest

from fusesnap.mountd import DaemonOptions, start_mount, unmount
from tests.e2e.cli import mounted, run
from tools.faultproxy import FaultProxy
from tools.images.catalog import build_and_push
from tools.images.estargz import build_and_push_estargz

pytestmark = pytest.mark.e2e

# Read by the "start" of the image: whatever the kernel asks for is what is recorded.
_FILES = ("etc/passwd", "etc/group", "bin/busybox")


def _stats(root: Path, mnt: Path) -> dict[str, Any]:
    stats: dict[str, Any] = json.loads(run(root, "stats", "--json", str(mnt)).stdout)
    return stats


def _wait_prefetched(root: Path, mnt: Path, timeout: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        prefetch: dict[str, Any] = _stats(root, mnt)["prefetch"]
        if prefetch["state"] == "done":
            return prefetch
        assert time.monotonic() < deadline, prefetch
        time.sleep(0.1)


def _settled(root: Path, mnt: Path, key: str, want: int, timeout: float = 120) -> dict[str, Any]:
    """The prefetch counters once ``key`` has reached ``want`` and background fetches
    have stopped (the fetch and prefetch counters unchanged for a second)."""
    deadline = time.monotonic() + timeout
    last: dict[str, Any] = {}
    while True:
        stats = _stats(root, mnt)
        now = {"prefetch": stats["prefetch"], "fetch": stats.get("fetch")}
        if now == last and now["prefetch"][key] >= want:
            return dict(now["prefetch"])
        assert time.monotonic() < deadline, now
        last = now
        time.sleep(1.0)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _read_all(mnt: Path, rootfs: Path) -> None:
    for rel in _FILES:
        assert _sha(mnt / rel) == _sha(rootfs / rel), rel


def test_recorded_profile_is_prefetched_before_it_is_read(
    registry: Any, faulty: FaultProxy, tmp_path: Path
) -> None:
    # Its own repository: the index artifact pushed here must not reach other tests' images.
    img = build_and_push("busybox", registry, repo="fusesnap-test/busybox-prefetch")
    run(tmp_path / "builder", "index", "--push", img.ref, timeout=600)
    ref = img.ref.replace(img.host, faulty.host)
    rootfs = img.unpack(tmp_path / "unpacked")
    root, mnt = tmp_path / "store", tmp_path / "mnt"

    # 1. A cold mount that records what is read; the profile is written at unmount.
    with mounted(root, ref, mnt, "--record"):
        faulty.reset()
        _read_all(mnt, rootfs)
        assert faulty.bytes_sent("blob") > 0  # lazily fetched as read
        assert _stats(root, mnt)["recording"] is True
    leases = run(root, "lease", "ls").stdout
    assert "fusesnap.profile" in leases, leases

    # 2. Forget the image and its chunks; the profile's lease keeps the profile.
    run(root, "rmi", ref)
    run(root, "gc")
    assert "fusesnap.profile" in run(root, "lease", "ls").stdout

    # 3. A cold mount again (default --prefetch auto): the profile's chunks arrive by
    # themselves; reading the same files afterwards moves no blob byte.
    with mounted(root, ref, mnt):
        prefetch = _wait_prefetched(root, mnt)
        assert prefetch["profile"] is True, prefetch
        assert prefetch["profile_chunks"] > 0, prefetch
        assert prefetch["fetched"] > 0, prefetch
        assert prefetch["failed"] == 0, prefetch
        faulty.reset()
        _read_all(mnt, rootfs)
        assert faulty.bytes_sent("blob") == 0, faulty.records

    # 4. --prefetch none: nothing ahead, even with a profile.
    run(root, "rmi", ref)
    run(root, "gc")
    with mounted(root, ref, mnt, "--prefetch", "none"):
        prefetch = _wait_prefetched(root, mnt)
        assert prefetch["fetched"] == 0, prefetch
        assert prefetch["profile_chunks"] == 0, prefetch
        faulty.reset()
        _read_all(mnt, rootfs)
        assert faulty.bytes_sent("blob") > 0

    # 5. The profile travels with the index artifact: pushed from this store, a cold mount
    # in another store prefetches it, and reading moves no blob byte.
    out = run(root, "index", "--push", ref, timeout=600).stdout
    assert "an access profile" in out, out
    other = tmp_path / "other"
    with mounted(other, ref, mnt):
        assert "fusesnap.profile" in run(other, "lease", "ls").stdout
        prefetch = _wait_prefetched(other, mnt)
        assert prefetch["profile"] is True, prefetch
        assert prefetch["profile_chunks"] > 0, prefetch
        faulty.reset()
        _read_all(mnt, rootfs)
        assert faulty.bytes_sent("blob") == 0, faulty.records


def test_estargz_landmark_files_are_prefetched(
    registry: Any, faulty: FaultProxy, tmp_path: Path
) -> None:
    img = build_and_push_estargz("busybox", registry, prioritized=["bin/busybox"])
    ref = img.ref.replace(img.host, faulty.host)
    rootfs = img.unpack(tmp_path / "unpacked")
    root = tmp_path / "store"
    with mounted(root, ref, tmp_path / "mnt") as mnt:
        prefetch = _wait_prefetched(root, mnt)
        assert prefetch["landmark_chunks"] > 0, prefetch
        assert prefetch["fetched"] > 0, prefetch
        assert prefetch["failed"] == 0, prefetch
        assert prefetch["profile"] is False, prefetch
        faulty.reset()
        assert _sha(mnt / "bin/busybox") == _sha(rootfs / "bin/busybox")
        assert faulty.bytes_sent("blob") == 0, faulty.records


def test_a_container_root_with_landmarks_still_brings_what_containerd_reads(
    registry: Any, faulty: FaultProxy, tmp_path: Path
) -> None:
    # Landmark files (as a profile would) replace the start-up guess, but not the two
    # files containerd reads through a mount of its own before the container exists.
    img = build_and_push_estargz("busybox", registry, prioritized=["bin/busybox"])
    ref = img.ref.replace(img.host, faulty.host)
    rootfs = img.unpack(tmp_path / "unpacked")
    root, mnt = tmp_path / "store", tmp_path / "mnt"
    mnt.mkdir()
    run(root, "pull", "--lazy", ref)
    start_mount(DaemonOptions(root, ref, mnt, startup_files=True))
    try:
        prefetch = _settled(root, mnt, "startup_files", 2)
        assert prefetch["startup_files"] == 2, prefetch  # passwd and group, not the shell
        assert prefetch["landmark_chunks"] > 0, prefetch
        faulty.reset()
        for rel in ("etc/passwd", "etc/group"):
            assert _sha(mnt / rel) == _sha(rootfs / rel), rel
        assert faulty.bytes_sent("blob") == 0, faulty.records
    finally:
        unmount(root, mnt)


def test_an_opened_file_is_fetched_whole_in_the_background(
    registry: Any, faulty: FaultProxy, tmp_path: Path
) -> None:
    img = build_and_push("busybox", registry, repo="fusesnap-test/busybox-open")
    run(tmp_path / "builder", "index", "--push", img.ref, timeout=600)
    ref = img.ref.replace(img.host, faulty.host)
    rootfs = img.unpack(tmp_path / "unpacked")
    root, mnt = tmp_path / "store", tmp_path / "mnt"
    big = "bin/busybox"  # more than one chunk
    assert (rootfs / big).stat().st_size > 1 << 20

    # Default prefetch: one byte read, the whole file arrives; reading it all moves nothing.
    with mounted(root, ref, mnt):
        with (mnt / big).open("rb") as f:
            assert f.read(1) == (rootfs / big).read_bytes()[:1]
        deadline = time.monotonic() + 60
        while _stats(root, mnt)["prefetch"]["opened_files"] < 1:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        faulty.reset()
        assert _sha(mnt / big) == _sha(rootfs / big)
        assert faulty.bytes_sent("blob") == 0, faulty.records

    # --prefetch none: only what is read travels.
    run(root, "rmi", ref)
    run(root, "gc")
    with mounted(root, ref, mnt, "--prefetch", "none"):
        with (mnt / big).open("rb") as f:
            f.read(1)
        time.sleep(0.5)
        assert _stats(root, mnt)["prefetch"]["opened_files"] == 0
        faulty.reset()
        assert _sha(mnt / big) == _sha(rootfs / big)
        assert faulty.bytes_sent("blob") > 0


def test_an_opened_program_brings_its_interpreter_and_libraries(
    registry: Any, faulty: FaultProxy, tmp_path: Path
) -> None:
    # The loader would open these one after another, each a round trip: they come at once;
    # and python3, a runtime fusesnap knows, brings what it reads before any user code.
    img = build_and_push_estargz("debian", registry)  # lazy: its TOCs are its index
    ref = img.ref.replace(img.host, faulty.host)
    rootfs = img.unpack(tmp_path / "unpacked")
    root, mnt = tmp_path / "store", tmp_path / "mnt"
    libs = (
        "etc/ld.so.cache",
        "usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2",
        "usr/lib/x86_64-linux-gnu/libc.so.6",
        "usr/lib/x86_64-linux-gnu/libz.so.1",
        "usr/lib/x86_64-linux-gnu/libexpat.so.1",
        "usr/lib/x86_64-linux-gnu/libm.so.6",
    )
    python = "usr/lib/python3.11"
    started = (
        "usr/lib/locale/C.utf8/LC_CTYPE",
        "usr/lib/x86_64-linux-gnu/gconv/gconv-modules.cache",
        f"{python}/encodings/__pycache__/__init__.cpython-311.pyc",
        f"{python}/encodings/__pycache__/aliases.cpython-311.pyc",
        f"{python}/encodings/__pycache__/utf_8.cpython-311.pyc",
        f"{python}/__pycache__/sitecustomize.cpython-311.pyc",
    )
    with mounted(root, ref, mnt):
        with (mnt / "usr/bin/python3").open("rb") as f:
            assert f.read(4) == b"\x7fELF"
        prefetch = _settled(root, mnt, "linked_files", len(libs))
        assert prefetch["linked_files"] == len(libs), prefetch  # libc's needs are no new ones
        assert prefetch["runtime_files"] == len(started), prefetch
        faulty.reset()
        for rel in (*libs, *started):
            assert _sha(mnt / rel) == _sha(rootfs / rel), rel
        assert faulty.bytes_sent("blob") == 0, faulty.records
        faulty.reset()
        assert _sha(mnt / "usr/lib/x86_64-linux-gnu/libbz2.so.1.0") == _sha(
            rootfs / "usr/lib/x86_64-linux-gnu/libbz2.so.1.0"
        )
        assert faulty.bytes_sent("blob") > 0  # not needed by python3: not fetched


def test_a_container_root_brings_what_every_start_reads(
    registry: Any, faulty: FaultProxy, tmp_path: Path
) -> None:
    # A container's root with no profile and no landmark (fusesnap run, the snapshotter's
    # lower mounts): containerd's /etc/passwd and /etc/group, and what the shell links,
    # arrive before anything asks; a plain `fusesnap mount` of the same image fetches none.
    img = build_and_push_estargz("debian", registry)  # no prioritized files: no landmark
    ref = img.ref.replace(img.host, faulty.host)
    rootfs = img.unpack(tmp_path / "unpacked")
    root, mnt = tmp_path / "store", tmp_path / "mnt"
    mnt.mkdir()
    run(root, "pull", "--lazy", ref)
    startup = (
        "etc/passwd",
        "etc/group",
        "usr/share/zoneinfo/Etc/UTC",  # /etc/localtime
        "usr/bin/dash",  # /bin/sh
        "etc/ld.so.cache",
        "usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2",
        "usr/lib/x86_64-linux-gnu/libc.so.6",
    )
    start_mount(DaemonOptions(root, ref, mnt, startup_files=True))
    try:
        prefetch = _settled(root, mnt, "opened_files", len(startup))
        assert prefetch["startup_files"] == 4, prefetch  # passwd, group, localtime, the shell
        assert prefetch["linked_files"] == 3, prefetch  # the loader, ld.so.cache, libc
        assert prefetch["failed"] == 0, prefetch
        faulty.reset()
        for rel in startup:
            assert _sha(mnt / rel) == _sha(rootfs / rel), rel
        assert faulty.bytes_sent("blob") == 0, faulty.records
        faulty.reset()
        lib = "usr/lib/x86_64-linux-gnu/libbz2.so.1.0"
        assert _sha(mnt / lib) == _sha(rootfs / lib)
        assert faulty.bytes_sent("blob") > 0  # nothing else came
    finally:
        unmount(root, mnt)

    run(root, "rmi", ref)
    run(root, "gc")
    with mounted(root, ref, mnt):
        time.sleep(1.0)
        prefetch = _stats(root, mnt)["prefetch"]
        assert prefetch["startup_files"] == 0, prefetch
        assert prefetch["opened_files"] == 0, prefetch
