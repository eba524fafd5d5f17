"""A mount's life: read-only, stats and the kernel cache, stale mounts, signals, leases, gc,
and the errors a user sees."""

from __future__ import annotations

import errno
import hashlib
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from fusesnap.mountd.mountpoint import FSTYPE, mount_info
from fusesnap.mountd.state import MountState, state_dir
from fusesnap.store import open_store
from tests.e2e.cli import fusesnap_cmd, run
from tests.e2e.test_mount import Pulled, differences, force_unmount, mounted, stats, tree_view
from tools.images.catalog import build_and_push

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def pulled(registry: Any, tmp_path_factory: pytest.TempPathFactory) -> Pulled:
    return Pulled(registry, tmp_path_factory.mktemp("store"))


def daemon_pid(root: Path, mountpoint: Path) -> int:
    state = MountState.load(state_dir(root, mountpoint))
    assert state is not None
    return state.pid


def holder_pid(root: Path, mountpoint: Path) -> int:
    state = MountState.load(state_dir(root, mountpoint))
    assert state is not None
    assert state.holder_pid is not None
    return state.holder_pid


def wait_gone(pid: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rpartition(")")[2].split()[0] == "Z":
                    return
        except OSError:
            return
        time.sleep(0.05)
    assert not os.path.exists(f"/proc/{pid}"), f"process {pid} still runs"


def leases(root: Path) -> list[str]:
    with open_store(root) as store:
        return [le.id for le in store.leases.list()]


def test_every_change_is_erofs(pulled: Pulled, tmp_path: Path) -> None:
    img = pulled("crafted-xattrs")
    with mounted(pulled.root, img.ref, tmp_path / "mnt") as mnt:
        target = mnt / "x" / "file"
        attempts = {
            "write": lambda: open(target, "ab").close(),
            "open O_RDWR": lambda: os.close(os.open(target, os.O_RDWR)),
            "truncate": lambda: os.truncate(target, 0),
            "create": lambda: open(mnt / "new", "wb").close(),
            "mkdir": lambda: os.mkdir(mnt / "d"),
            "unlink": lambda: os.unlink(target),
            "rmdir": lambda: os.rmdir(mnt / "x"),
            "rename": lambda: os.rename(target, mnt / "x" / "moved"),
            "symlink": lambda: os.symlink("t", mnt / "s"),
            "link": lambda: os.link(target, mnt / "x" / "hard"),
            "chmod": lambda: os.chmod(target, 0o777),
            "chown": lambda: os.chown(target, 1, 1),
            "utime": lambda: os.utime(target, (1, 1)),
            "setxattr": lambda: os.setxattr(target, "user.new", b"v"),
            "removexattr": lambda: os.removexattr(target, "user.foo"),
            "mknod": lambda: os.mkfifo(mnt / "fifo"),
        }
        for what, attempt in attempts.items():
            with pytest.raises(OSError, match="Read-only file system") as info:
                attempt()
            assert info.value.errno == errno.EROFS, what
        assert target.read_text() == "with xattrs\n"
        assert os.getxattr(target, "user.foo") == b"bar"


def test_stats_and_the_kernel_cache(pulled: Pulled, tmp_path: Path) -> None:
    img = pulled("busybox")
    with mounted(pulled.root, img.ref, tmp_path / "mnt") as mnt:
        busybox = mnt / "bin" / "busybox"
        first = hashlib.sha256(busybox.read_bytes()).hexdigest()
        s1 = stats(pulled.root, mnt)
        assert s1["requests"]["read"] > 0
        assert s1["bytes_read"] == busybox.stat().st_size
        assert s1["cache"]["misses"] >= 1
        assert s1["cache"]["loaded"] == s1["cache"]["misses"] + s1["cache"]["prefetched"]
        assert s1["cache"]["hits"] > 0  # the kernel reads less than a chunk at a time
        assert subprocess.run(["cat", str(busybox)], capture_output=True, check=True).stdout
        assert hashlib.sha256(busybox.read_bytes()).hexdigest() == first
        s2 = stats(pulled.root, mnt)
        assert s2["requests"]["read"] == s1["requests"]["read"]  # page cache: no new reads
        assert s2["bytes_read"] == s1["bytes_read"]

        def ls_lr() -> str:
            return subprocess.run(["ls", "-lR", str(mnt)], capture_output=True, text=True,
                                  check=True).stdout  # fmt: skip

        listing = ls_lr()
        s3 = stats(pulled.root, mnt)
        assert ls_lr() == listing
        s4 = stats(pulled.root, mnt)
        # Cached by the kernel. Not readlink: pyfuse3 does not ask for FUSE_CAP_CACHE_SYMLINKS.
        for op in ("lookup", "getattr", "getxattr", "listxattr"):
            assert s4["requests"].get(op, 0) == s3["requests"].get(op, 0), op
        assert s4["errors"] == {}

        human = run(pulled.root, "stats", str(mnt)).stdout
        assert "requests:" in human
        assert "hits" in human


def test_stale_mount_is_cleared_by_umount_and_by_mount(pulled: Pulled, tmp_path: Path) -> None:
    img = pulled("crafted-misc")
    mnt = tmp_path / "mnt"
    try:
        for clear in ("umount", "mount"):
            mnt.mkdir(exist_ok=True)
            run(pulled.root, "mount", img.ref, str(mnt))
            # The holder first (else it starts a new daemon), then the daemon.
            for pid in (holder_pid(pulled.root, mnt), daemon_pid(pulled.root, mnt)):
                os.kill(pid, signal.SIGKILL)
                wait_gone(pid)
            with pytest.raises(OSError, match=r"not connected|connection abort") as info:
                os.listdir(mnt)
            # A dead FUSE daemon: ENOTCONN, or ECONNABORTED when the kernel was mid-request.
            assert info.value.errno in (errno.ENOTCONN, errno.ECONNABORTED)
            if clear == "umount":
                out = run(pulled.root, "umount", str(mnt)).stdout
                assert "stale" in out
                assert mount_info(mnt) is None
                assert os.listdir(mnt) == []
                assert leases(pulled.root) == []  # the dead daemon's lease went too
            else:
                run(pulled.root, "mount", img.ref, str(mnt))  # mounts over the stale one
                assert sorted(os.listdir(mnt)) == ["empty", "names"]
                assert len(leases(pulled.root)) == 1
                run(pulled.root, "umount", str(mnt))
                assert mount_info(mnt) is None
                assert leases(pulled.root) == []
    finally:
        force_unmount(mnt)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signals_unmount_cleanly(pulled: Pulled, tmp_path: Path, sig: signal.Signals) -> None:
    img = pulled("crafted-hardlinks")
    with mounted(pulled.root, img.ref, tmp_path / "mnt") as mnt:
        pid = daemon_pid(pulled.root, mnt)
        assert len(leases(pulled.root)) == 1
        os.kill(pid, sig)
        wait_gone(pid)
        assert mount_info(mnt) is None
        assert leases(pulled.root) == []
        assert MountState.load(state_dir(pulled.root, mnt)) is None
        log = (state_dir(pulled.root, mnt) / "daemon.log").read_text()
        assert f"{sig.name}, unmounting" in log


def test_foreground_stays_attached_until_interrupted(pulled: Pulled, tmp_path: Path) -> None:
    img = pulled("crafted-opaque")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "FUSESNAP_ROOT"}
    proc = subprocess.Popen(
        fusesnap_cmd(pulled.root, "mount", "--foreground", img.ref, str(mnt)),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert proc.stdout is not None
        assert "mounted" in proc.stdout.readline()
        info = mount_info(mnt)
        assert info is not None
        assert info.fstype == FSTYPE
        assert (mnt / "opq" / "new.txt").read_text() == "new\n"
        proc.send_signal(signal.SIGINT)
        assert proc.wait(20) == 0, proc.stderr.read() if proc.stderr else ""
        assert mount_info(mnt) is None
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        force_unmount(mnt)


def test_gc_spares_what_a_mount_serves(
    registry: Any, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    img = build_and_push("crafted-replace", registry)
    root = tmp_path / "store"
    run(root, "pull", img.ref)
    want = tree_view(img.unpack(tmp_path_factory.mktemp("umoci") / "bundle"))
    with mounted(root, img.ref, tmp_path / "mnt") as mnt:
        (lease,) = leases(root)
        with open_store(root) as store:
            held = {str(r.key) for r in store.leases.get(lease).resources}
        assert img.manifest_digest in held
        assert {layer.digest for layer in img.layers} <= held

        run(root, "rmi", img.ref)
        out = run(root, "gc").stdout
        assert "removed 0 blobs, 0 layers, 0 chunks" in out, out
        diff = differences(tree_view(mnt), want)  # every byte still there
        assert not diff, diff
        run(root, "umount", str(mnt))
        assert leases(root) == []
    out = run(root, "gc").stdout
    assert "removed 0 blobs" not in out  # now nothing holds the image


def test_errors_users_see(pulled: Pulled, tmp_path: Path) -> None:
    img = pulled("crafted-modes")
    mnt = tmp_path / "mnt"
    mnt.mkdir()

    missing = run(pulled.root, "mount", "127.0.0.1:1/not/pulled:1", str(mnt), check=False)
    assert missing.returncode == 1
    assert missing.stderr.count("\n") == 1
    # Not in the store: mount pulls it lazily first, and says in one line why it cannot.
    assert "127.0.0.1:1" in missing.stderr
    assert mount_info(mnt) is None

    nodir = run(pulled.root, "mount", img.ref, str(tmp_path / "absent"), check=False)
    assert nodir.returncode == 1
    assert "not a directory" in nodir.stderr

    notmounted = run(pulled.root, "umount", str(mnt), check=False)
    assert notmounted.returncode == 1
    assert "not mounted" in notmounted.stderr
    assert run(pulled.root, "stats", str(mnt), check=False).returncode == 1

    with mounted(pulled.root, img.ref, mnt):
        again = run(pulled.root, "mount", img.ref, str(mnt), check=False)
        assert again.returncode == 1
        assert "already mounted" in again.stderr
        assert "Traceback" not in again.stderr
        # default_permissions: the kernel enforces the image's modes (root bypasses reads,
        # but not a missing execute bit).
        with pytest.raises(PermissionError):
            subprocess.run([str(mnt / "none")], check=False)
    assert mount_info(mnt) is None
