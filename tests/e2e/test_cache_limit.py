"""A size-capped store and a full disk under a lazy Debian mount (real registry, real
FUSE), every byte checked against ``umoci unpack``; and a mount daemon's memory."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from fusesnap.lazy.writer import BATCH_BYTES
from fusesnap.mountd.memory import TRIM_INTERVAL
from fusesnap.store import open_store
from fusesnap.store.schema import CHUNKS
from tests.e2e.cli import mounted, run
from tools.images.catalog import PushedImage, build_and_push

pytestmark = pytest.mark.e2e

LIMIT = 40 * 1000 * 1000
MAX_RSS = 96 * 1000 * 1000


def files_of(rootfs: Path) -> dict[str, str]:
    """Every regular file of the unpacked image: its sha256."""
    out = {}
    for path in sorted(rootfs.rglob("*")):
        if path.is_file() and not path.is_symlink():
            out[str(path.relative_to(rootfs))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def read_and_forget(path: Path) -> str:
    """The file's sha256, read through the mount; then its pages leave the kernel's cache,
    so the next read asks the daemon again."""
    fd = os.open(path, os.O_RDONLY)
    try:
        digest = hashlib.sha256()
        while chunk := os.read(fd, 1 << 20):
            digest.update(chunk)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
    return digest.hexdigest()


def read_or_errno(path: Path) -> str | int:
    """`read_and_forget`, or the errno of its failure."""
    try:
        return read_and_forget(path)
    except OSError as exc:
        return exc.errno or -1


def memory(pid: int) -> dict[str, int]:
    """A process's resident memory in bytes, from /proc/PID/status: ``VmRSS``, and its
    parts ``RssAnon`` (the heap) and ``RssFile`` (mapped files: the store's LMDB map)."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "RssAnon", "RssFile"):
            out[key] = int(value.split()[0]) * 1024
    return out


def vm_rss(pid: int) -> int:
    return memory(pid)["VmRSS"]


def daemon_stats(root: Path, mnt: Path) -> dict:
    return json.loads(run(root, "stats", "--json", str(mnt)).stdout)


def chunk_bytes(root: Path) -> int:
    """The store's chunks as stored, counted (not the size the store keeps)."""
    with open_store(root) as store, store.env.txn(buffers=True) as txn:
        return sum(len(value) for _key, value in txn.cursor(db=store.env.db(CHUNKS)))


@contextmanager
def sampled(root: Path, every: float = 0.2) -> Iterator[list[int]]:
    """Samples of `chunk_bytes` taken in the background while the block runs."""
    samples: list[int] = []
    done = threading.Event()

    def sample() -> None:
        while not done.wait(every):
            samples.append(chunk_bytes(root))

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield samples
    finally:
        done.set()
        thread.join()
        samples.append(chunk_bytes(root))


@pytest.fixture(scope="module")
def debian_chunked(registry) -> PushedImage:
    return build_and_push("debian", registry, compression="zstd:chunked")


@pytest.mark.slow
def test_a_capped_store_serves_every_file_twice_within_its_limit(
    debian_chunked: PushedImage, tmp_path: Path
) -> None:
    img, root = debian_chunked, tmp_path / "store"
    want = files_of(img.unpack(tmp_path / "unpacked"))
    assert sum(1 for _ in want) > 3000
    run(root, "cache", "limit", "40MB")
    limit = int(run(root, "cache", "limit").stdout.split()[0])
    with (
        mounted(root, img.ref, tmp_path / "mnt", "--prefetch", "none") as mnt,
        sampled(root) as samples,
    ):
        for _ in range(2):
            for rel, sha in want.items():
                assert read_and_forget(mnt / rel) == sha, rel
        fetch = daemon_stats(root, mnt)["fetch"]
    print(f"capped store: limit {limit}, largest sample {max(samples)} of {len(samples)}; {fetch}")
    # The image's chunks do not fit: the store evicted, and stayed within a batch of it.
    assert fetch["evicted_chunks"] > 0, fetch
    assert fetch["bytes_fetched"] > sum(layer.size for layer in img.layers), fetch
    assert max(samples) <= limit + BATCH_BYTES, (max(samples), limit)
    assert len(samples) > 10
    shown = run(root, "cache").stdout
    assert "limit:" in shown
    assert "evictable:" in shown


@pytest.mark.slow
def test_a_mount_daemon_stays_small_after_reading_every_file(
    debian_chunked: PushedImage, tmp_path: Path
) -> None:
    img, root = debian_chunked, tmp_path / "store"
    want = files_of(img.unpack(tmp_path / "unpacked"))
    with mounted(root, img.ref, tmp_path / "mnt", "--prefetch", "none") as mnt:
        pid = daemon_stats(root, mnt)["pid"]
        at_start = memory(pid)
        for rel, sha in want.items():
            assert read_and_forget(mnt / rel) == sha, rel
        time.sleep(3 * TRIM_INTERVAL)  # it gives memory back after a burst of reads
        after = memory(pid)
        print(f"mount daemon memory: {at_start} at start, {after} after")
    assert after["VmRSS"] < MAX_RSS, (at_start, after)


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    where = tmp_path / "tmpfs"
    where.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=12m", "tmpfs", str(where)], check=True)
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


@pytest.mark.slow
def test_a_full_disk_under_a_lazy_mount_gives_right_bytes_or_eio(
    debian_chunked: PushedImage, small_tmpfs: Path, tmp_path: Path
) -> None:
    img, root = debian_chunked, small_tmpfs / "store"
    want = files_of(img.unpack(tmp_path / "unpacked"))
    run(root, "pull", "--lazy", img.ref, timeout=600)
    right = eio = 0
    with mounted(root, img.ref, tmp_path / "mnt", "--prefetch", "none") as mnt:
        pid = daemon_stats(root, mnt)["pid"]
        for rel, sha in want.items():
            got = read_or_errno(mnt / rel)
            if got == errno.EIO:
                eio += 1
                continue
            assert got == sha, rel
            right += 1
        # Still serving, the same daemon: the store filled up and it went on.
        assert read_and_forget(mnt / "usr/lib/os-release") == want["usr/lib/os-release"]
        assert daemon_stats(root, mnt)["pid"] == pid
        fetch = daemon_stats(root, mnt)["fetch"]
    log = "\n".join(p.read_text(errors="replace") for p in root.glob("mounts/*/daemon.log"))
    print(f"full disk: {right} right, {eio} EIO; {fetch}")
    print("\n".join(line for line in log.splitlines() if "WARNING" in line or "rror" in line))
    assert right > 0.9 * len(want), (right, eio)
    # The disk filled up, and the daemon made room by evicting what it can fetch again.
    assert fetch["evicted_chunks"] > 0, fetch
    assert "Traceback" not in log
