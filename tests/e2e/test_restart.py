"""A mount daemon that dies (``kill -9``) while processes read: its holder starts a new
one that takes the FUSE connection over, and the readers see no error; a daemon that
cannot come back leaves reads failing with EIO, never hanging, until ``rm -f``/``umount``."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from fusesnap.mountd.control import query
from fusesnap.mountd.holder import MAX_RESTARTS
from fusesnap.mountd.mountpoint import MountError, mount_info
from fusesnap.mountd.state import CONTROL_SOCKET, MountState, failure, state_dir
from fusesnap.store import open_store
from tests.e2e.cli import mounted, run
from tools.images.catalog import build_and_push
from tools.images.estargz import build_and_push_estargz

pytestmark = pytest.mark.e2e

# Reads every file under the mount in a loop, each open and read going to the daemon
# (the page cache of the file is dropped after each read), checks the bytes against the
# first pass, and says "pass N" after each pass and "FAIL ..." for anything wrong.
_READER = r"""
import hashlib, os, sys
top, stop = sys.argv[1], sys.argv[2]
files = sorted(os.path.join(d, f) for d, _, fs in os.walk(top) for f in fs
               if os.path.isfile(os.path.join(d, f)) and not os.path.islink(os.path.join(d, f)))
seen = {}
n = 0
while not os.path.exists(stop):
    for path in files:
        try:
            fd = os.open(path, os.O_RDONLY)
            try:
                data = b"".join(iter(lambda: os.read(fd, 1 << 20), b""))
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)
            os.statvfs(top)
        except OSError as exc:
            print("FAIL", path, exc, flush=True)
            continue
        digest = hashlib.sha256(data).hexdigest()
        if seen.setdefault(path, digest) != digest:
            print("FAIL", path, "changed", flush=True)
    n += 1
    print("pass", n, len(files), flush=True)
"""


def mount_state(root: Path, mountpoint: Path) -> MountState:
    state = MountState.load(state_dir(root, mountpoint))
    assert state is not None, f"no mount.json for {mountpoint}"
    return state


def wait_for(what: str, check, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.05)
    raise AssertionError(f"{what}: not within {timeout:.0f}s")


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return False


def passes(log: Path) -> int:
    lines = [ln for ln in log.read_text().splitlines() if ln.startswith("pass ")]
    return int(lines[-1].split()[1]) if lines else 0


def failures(log: Path) -> list[str]:
    return [ln for ln in log.read_text().splitlines() if "FAIL" in ln]


def _replaced(root: Path, mountpoint: Path, old: int) -> MountState | None:
    """The new daemon's state once it serves (its control socket answers)."""
    directory = state_dir(root, mountpoint)
    state = MountState.load(directory)
    if state is None or state.pid == old or not state.daemon_alive():
        return None
    try:
        query(directory / CONTROL_SOCKET)
    except MountError:
        return None
    return state


def kill_and_wait_for_the_next(root: Path, mnt: Path) -> tuple[MountState, MountState]:
    before = mount_state(root, mnt)
    os.kill(before.pid, signal.SIGKILL)
    after = wait_for("a new daemon", lambda: _replaced(root, mnt, before.pid))
    return before, after


def test_killed_daemon_is_replaced_and_readers_see_no_error(registry, tmp_path) -> None:
    img = build_and_push("crafted-big", registry, big_size=24 << 20, tag="big24m")
    root = tmp_path / "store"
    run(root, "pull", "--lazy", img.ref)
    log, stop = tmp_path / "reader.log", tmp_path / "stop"
    with mounted(root, img.ref, tmp_path / "mnt", "--prefetch", "none") as mnt:
        with open(log, "w") as out:
            reader = subprocess.Popen(
                [sys.executable, "-c", _READER, str(mnt), str(stop)], stdout=out, stderr=out
            )
        try:
            wait_for("the reader's first pass", lambda: passes(log) >= 1, timeout=300)
            holder = mount_state(root, mnt).holder_pid
            for _ in range(3):  # each time while the reader is at it
                done = passes(log)
                before, after = kill_and_wait_for_the_next(root, mnt)
                assert after.holder_pid == holder == before.holder_pid
                wait_for("two more passes", lambda p=done: passes(log) >= p + 2)
        finally:
            stop.touch()
            reader.wait(timeout=120)
        assert failures(log) == [], log.read_text()[-2000:]
        stats = run(root, "stats", str(mnt)).stdout
        assert f"pid {after.pid} (holder {holder})" in stats, stats
        with open_store(root) as store:
            leases = store.leases.list()
        assert [le.owner_pid for le in leases] == [after.pid]  # the dead daemons' went
    assert mount_info(mnt) is None
    assert holder is not None
    assert not alive(holder)
    assert not alive(after.pid)


def test_a_read_in_flight_when_the_daemon_dies_completes(registry, faulty, tmp_path) -> None:
    """The daemon has read the request and waits on the registry when it is killed: the
    kernel re-sends the request to the new daemon, and the reader gets the right bytes."""
    img = build_and_push_estargz("busybox", registry)  # lazily: only the TOC is local
    truth = (img.unpack(tmp_path / "bundle") / "bin" / "busybox").read_bytes()
    ref = img.ref.replace(img.host, faulty.host)
    root = tmp_path / "store"
    run(root, "pull", "--lazy", ref)
    got: list[bytes] = []
    with mounted(root, ref, tmp_path / "mnt", "--prefetch", "none") as mnt:
        state = mount_state(root, mnt)
        faulty.delay(3.0)  # each registry request waits: the read stays in flight
        fetches = faulty.count("blob")

        def read() -> None:
            got.append((mnt / "bin" / "busybox").read_bytes())

        reader = threading.Thread(target=read)
        reader.start()
        wait_for("a fetch in flight", lambda: faulty.count("blob") > fetches)
        assert reader.is_alive()
        os.kill(state.pid, signal.SIGKILL)
        faulty.delay(0)
        reader.join(timeout=120)
        assert not reader.is_alive()
        assert mount_state(root, mnt).pid != state.pid
    assert got == [truth]


def test_remount_hands_the_mount_to_a_fresh_daemon(pulled_busybox, tmp_path) -> None:
    root, ref = pulled_busybox
    with mounted(root, ref, tmp_path / "mnt") as mnt:
        before = mount_state(root, mnt)
        out = run(root, "remount", str(mnt)).stdout
        after = mount_state(root, mnt)
        assert after.pid != before.pid
        assert str(after.pid) in out
        assert not alive(before.pid)
        assert (mnt / "bin").is_dir()


def test_a_daemon_that_cannot_come_back_makes_reads_fail_with_eio(pulled_busybox, tmp_path) -> None:
    root, ref = pulled_busybox
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    run(root, "mount", ref, str(mnt))
    state = mount_state(root, mnt)
    run(root, "rmi", ref)  # a new daemon finds no image to serve
    os.kill(state.pid, signal.SIGKILL)
    reason = wait_for("the holder to give up", lambda: failure(state_dir(root, mnt)))
    assert "no daemon could take the mount over" in reason
    with pytest.raises(OSError, match="Input/output error") as info:
        (mnt / "bin" / "busybox").read_bytes()
    assert info.value.errno == errno.EIO
    assert "cleared" in run(root, "umount", str(mnt)).stdout
    assert mount_info(mnt) is None
    assert state.holder_pid is not None
    assert not alive(state.holder_pid)
    assert failure(state_dir(root, mnt)) is None


@pytest.fixture
def pulled_busybox(busybox, tmp_path) -> tuple[Path, str]:
    root = tmp_path / "store"
    run(root, "pull", busybox.ref)
    return root, busybox.ref


def test_a_daemon_that_took_over_unmounts_on_sigterm(pulled_busybox, tmp_path) -> None:
    root, ref = pulled_busybox
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    run(root, "mount", ref, str(mnt))
    _, after = kill_and_wait_for_the_next(root, mnt)
    holder = after.holder_pid
    assert holder is not None
    os.kill(after.pid, signal.SIGTERM)
    wait_for("the daemon to exit", lambda: not alive(after.pid))
    wait_for("the holder to exit", lambda: not alive(holder))
    assert mount_info(mnt) is None  # not left stale


def test_a_daemon_killed_as_soon_as_it_is_ready_is_taken_over(pulled_busybox, tmp_path) -> None:
    # "ready" means the kernel's INIT is answered: a daemon killed before that leaves
    # a connection no new daemon can initialise (every request: ECONNREFUSED).
    root, ref = pulled_busybox
    for attempt in range(3):
        with mounted(root, ref, tmp_path / f"mnt{attempt}") as mnt:
            kill_and_wait_for_the_next(root, mnt)
            assert "busybox" in os.listdir(mnt / "bin")


def test_a_daemon_that_keeps_dying_is_given_up_on(pulled_busybox, tmp_path) -> None:
    root, ref = pulled_busybox
    with mounted(root, ref, tmp_path / "mnt") as mnt:
        for _ in range(MAX_RESTARTS):
            kill_and_wait_for_the_next(root, mnt)
        last = mount_state(root, mnt)
        os.kill(last.pid, signal.SIGKILL)
        reason = wait_for("the holder to give up", lambda: failure(state_dir(root, mnt)))
        assert f"died {MAX_RESTARTS + 1} times" in reason
        with pytest.raises(OSError, match="Input/output error"):
            os.listdir(mnt / "bin")
    assert mount_info(mnt) is None
    assert last.holder_pid is not None
    assert not alive(last.holder_pid)
