"""``fusesnap mount`` as a real FUSE filesystem, judged by ``umoci unpack`` of the same image.

Every test runs the CLI in a subprocess against a real registry and a real
mount, and leaves no mount behind. What is compared for every path of the
tree (`tree_view`): type and mode bits, owner, link count, mtime with
nanoseconds, size and ``st_blocks`` of files and symlinks, symlink targets,
device numbers, extended attributes, content (sha256), hardlink groups
(same inode), and each directory's listing.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import random
import stat
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from fusesnap.mountd.mountpoint import FSTYPE, mount_info
from fusesnap.store import open_store
from tests.e2e.cli import run
from tools.images.catalog import PushedImage, build_and_push
from tools.images.tarutil import walk_sorted

pytestmark = pytest.mark.e2e

CRAFTED = [
    "crafted-whiteouts", "crafted-opaque", "crafted-hardlinks", "crafted-replace",
    "crafted-xattrs", "crafted-modes", "crafted-devices", "crafted-longnames", "crafted-misc",
]  # fmt: skip
BIG_SIZE = 300 * 1024 * 1024
MiB = 1 << 20


# -- helpers shared with test_mount_lifecycle -------------------------------------------------


def stats(root: Path, mountpoint: Path) -> dict[str, Any]:
    reply: dict[str, Any] = json.loads(run(root, "stats", "--json", str(mountpoint)).stdout)
    return reply


def force_unmount(mountpoint: Path) -> None:
    """Never leave a mount behind, whatever the test did to its daemon."""
    if mount_info(mountpoint) is not None:
        subprocess.run(["fusermount3", "-u", "-z", str(mountpoint)], check=False)
    if mount_info(mountpoint) is not None:
        subprocess.run(["umount", "-l", str(mountpoint)], check=False)


@contextmanager
def mounted(root: Path, ref: str, mountpoint: Path, *options: str) -> Iterator[Path]:
    mountpoint.mkdir(parents=True, exist_ok=True)
    out = run(root, "mount", *options, ref, str(mountpoint)).stdout
    assert f"at {mountpoint}" in out
    info = mount_info(mountpoint)
    assert info is not None
    assert info.fstype == FSTYPE
    try:
        yield mountpoint
    finally:
        if mount_info(mountpoint) is not None:
            run(root, "umount", str(mountpoint), check=False)
        force_unmount(mountpoint)


class Pulled:
    """Images pushed to the test registry and pulled into one store, once each."""

    def __init__(self, registry: Any, root: Path) -> None:
        self.registry = registry
        self.root = root
        self._images: dict[tuple[str, int], PushedImage] = {}

    def __call__(self, name: str, *, big_size: int = BIG_SIZE) -> PushedImage:
        key = (name, big_size)
        if key not in self._images:
            tag = f"big{big_size}" if name == "crafted-big" else None
            img = build_and_push(name, self.registry, big_size=big_size, tag=tag)
            run(self.root, "pull", img.ref)
            self._images[key] = img
        return self._images[key]


@pytest.fixture(scope="module")
def pulled(registry: Any, tmp_path_factory: pytest.TempPathFactory) -> Pulled:
    return Pulled(registry, tmp_path_factory.mktemp("store"))


@pytest.fixture(scope="module")
def unpacked(tmp_path_factory: pytest.TempPathFactory) -> Callable[[PushedImage], Path]:
    """umoci's rootfs of an image, unpacked once per module."""
    done: dict[str, Path] = {}

    def unpack(img: PushedImage) -> Path:
        if img.ref not in done:
            done[img.ref] = img.unpack(tmp_path_factory.mktemp("umoci") / "bundle")
        return done[img.ref]

    return unpack


# -- the oracle ---------------------------------------------------------------------------


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while piece := f.read(MiB):
            h.update(piece)
    return h.hexdigest()


def tree_view(top: Path) -> dict[str, dict[str, object]]:
    """What a reader sees of every path under ``top`` (module docstring)."""
    view: dict[str, dict[str, object]] = {}
    groups: dict[int, str] = {}
    for rel in ["", *walk_sorted(top)]:
        path = top / rel if rel else top
        st = path.lstat()
        mode = st.st_mode
        rec: dict[str, object] = {
            "mode": oct(mode), "uid": st.st_uid, "gid": st.st_gid, "nlink": st.st_nlink,
            "mtime_ns": st.st_mtime_ns,
        }  # fmt: skip
        if stat.S_ISREG(mode):
            rec.update(size=st.st_size, blocks=st.st_blocks, sha256=_sha256(path),
                       group=groups.setdefault(st.st_ino, rel))  # fmt: skip
            assert st.st_blocks * 512 >= st.st_size
        elif stat.S_ISLNK(mode):
            rec.update(target=os.readlink(path), size=st.st_size, blocks=st.st_blocks)
        elif stat.S_ISDIR(mode):
            rec.update(listing=sorted(os.listdir(path)))
        elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
            rec.update(rdev=(os.major(st.st_rdev), os.minor(st.st_rdev)))
        if not stat.S_ISLNK(mode):
            rec["xattrs"] = {
                n: os.getxattr(path, n, follow_symlinks=False)
                for n in sorted(os.listxattr(path, follow_symlinks=False))
            }
        view[rel] = rec
    return view


def differences(got: dict[str, Any], want: dict[str, Any]) -> list[str]:
    out = [f"only in umoci: {p}" for p in sorted(want.keys() - got.keys())]
    out += [f"only in the mount: {p}" for p in sorted(got.keys() - want.keys())]
    for p in sorted(got.keys() & want.keys()):
        for field in sorted(got[p].keys() | want[p].keys()):
            if got[p].get(field) != want[p].get(field):
                out.append(f"{p or '/'}: {field}: mount {got[p].get(field)!r}, "
                           f"umoci {want[p].get(field)!r}")  # fmt: skip
    return out


@pytest.mark.parametrize("name", [*CRAFTED, "busybox", "debian"])
def test_mount_matches_umoci_unpack(pulled: Pulled, unpacked, tmp_path: Path, name: str) -> None:
    img = pulled(name)
    want = tree_view(unpacked(img))
    with mounted(pulled.root, img.ref, tmp_path / "mnt") as mnt:
        got = tree_view(mnt)
        listing = subprocess.run(["ls", "-a1", str(mnt)], capture_output=True, text=True,
                                 check=True).stdout.split()  # fmt: skip
    assert listing[:2] == [".", ".."]
    diff = differences(got, want)
    assert not diff, "\n".join(diff[:50])


def test_whiteouts_are_never_visible(pulled: Pulled, tmp_path: Path) -> None:
    img = pulled("crafted-whiteouts")
    with mounted(pulled.root, img.ref, tmp_path / "mnt") as mnt:
        names = [p for p in walk_sorted(mnt) if ".wh." in p]
        assert names == []
        assert not (mnt / "a" / "gone.txt").exists()
        assert not (mnt / "a" / ".wh.gone.txt").exists()
        assert (mnt / "a" / "keep").read_text() == "keep\n"


# -- big files: full reads, kernel cache, 32 concurrent readers --------------------------------


@pytest.mark.slow
def test_big_file_reads_fully_with_one_load_per_chunk(
    pulled: Pulled, unpacked, tmp_path: Path
) -> None:
    img = pulled("crafted-big")
    truth = unpacked(img) / "big" / "random.bin"
    with mounted(pulled.root, img.ref, tmp_path / "mnt") as mnt:
        assert _sha256(mnt / "big" / "random.bin") == _sha256(truth)
        first = stats(pulled.root, mnt)
        reads = first["requests"]["read"]
        cache = first["cache"]
        distinct = BIG_SIZE // MiB - (BIG_SIZE // MiB) // 4 + 1  # every 4th MiB repeats
        # Kernel requests are much smaller than 1 MiB chunks: each chunk is loaded (its
        # frames decompressed) once, later requests for it are memory hits; the first chunk
        # may take two loads (the first read is not known to be sequential yet).
        assert cache["loaded"] <= distinct + 1
        assert reads > 2 * cache["loaded"]
        assert cache["hits"] + cache["joined"] >= reads - cache["loaded"]
        assert first["bytes_read"] >= BIG_SIZE

        assert _sha256(mnt / "big" / "random.bin") == _sha256(truth)
        second = stats(pulled.root, mnt)
        # The kernel's page cache served the second read (all but the odd page it evicted
        # under memory pressure from other work on the machine).
        assert second["requests"]["read"] - reads < reads // 20
        assert second["requests"].get("open", 0) == first["requests"].get("open", 0) + 1


def test_32_random_readers_get_exact_bytes_while_ls_answers(
    pulled: Pulled, unpacked, tmp_path: Path
) -> None:
    img = pulled("crafted-big")
    truth = unpacked(img) / "big" / "random.bin"
    size = truth.stat().st_size
    failures: list[str] = []
    stop = threading.Event()

    def reader(seed: int, path: Path) -> int:
        rng = random.Random(seed)
        done = 0
        with open(path, "rb", buffering=0) as f, open(truth, "rb", buffering=0) as t:
            for _ in range(40):
                # Drop the kernel's copy so that every read reaches the daemon.
                os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
                off = rng.randrange(size)
                n = rng.randint(1, 2 * MiB)
                got, want = os.pread(f.fileno(), n, off), os.pread(t.fileno(), n, off)
                if got != want:
                    failures.append(f"reader {seed}: {n} bytes at {off}: wrong bytes")
                done += len(got)
                if stop.is_set():
                    break
        return done

    # A small cache: chunks are evicted and loaded again while others wait for them.
    with mounted(pulled.root, img.ref, tmp_path / "mnt", "--cache-size", "32M") as mnt:
        target = mnt / "big" / "random.bin"
        latencies = []
        with ThreadPoolExecutor(32) as pool:
            futures = [pool.submit(reader, seed, target) for seed in range(32)]
            while not all(f.done() for f in futures):
                started = time.monotonic()
                subprocess.run(["ls", "-la", str(mnt), str(mnt / "big")], check=True,
                               capture_output=True)  # fmt: skip
                os.statvfs(mnt)  # never cached by the kernel: always a daemon round trip
                latencies.append(time.monotonic() - started)
                time.sleep(0.05)
            total = sum(f.result() for f in futures)
        s = stats(pulled.root, mnt)
    assert not failures, failures[:10]
    assert total > 32 * 40 * 100_000
    assert latencies
    assert max(latencies) < 2.0, f"ls/statfs took up to {max(latencies):.2f}s during reads"
    assert s["cache"]["evictions"] > 0
    assert s["cache"]["hits"] > 0  # kernel requests are smaller than chunks
    assert s["errors"] == {}


def test_a_chunk_rotten_on_disk_gives_eio_never_wrong_bytes(
    pulled: Pulled, unpacked, tmp_path: Path
) -> None:
    img = pulled("busybox")
    truth = unpacked(img)
    files = [p for p in truth.rglob("*") if p.is_file() and not p.is_symlink()]
    victim = max(files, key=lambda p: p.stat().st_size)
    other = next(p for p in files if p != victim and 0 < p.stat().st_size < MiB)
    data = victim.read_bytes()
    key = hashlib.sha256(data[:MiB]).digest()
    with mounted(pulled.root, img.ref, tmp_path / "mnt") as mnt, open_store(pulled.root) as store:
        db = store.env.db(b"chunks")
        with store.env.txn() as txn:
            value = bytes(txn.get(key, b"", db=db))
        assert value, "the victim's first chunk is in the store"
        rotten = bytearray(value)
        rotten[len(value) // 2] ^= 0x08  # one bit, inside a frame
        with store.env.txn(write=True) as txn:
            txn.put(key, bytes(rotten), db=db)
        try:
            with pytest.raises(OSError, match="Input/output error") as info:
                (mnt / victim.relative_to(truth)).read_bytes()
            assert info.value.errno == errno.EIO
            assert (mnt / other.relative_to(truth)).read_bytes() == other.read_bytes()
        finally:
            with store.env.txn(write=True) as txn:
                txn.put(key, value, db=db)
        # A failed load is not remembered: the repaired chunk is served.
        assert (mnt / victim.relative_to(truth)).read_bytes() == data
        assert set(stats(pulled.root, mnt)["errors"]) == {"read:EIO"}
