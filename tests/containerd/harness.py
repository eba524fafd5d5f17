"""What the containerd conformance tests drive: ``fusesnap snapshotter`` in a
subprocess (`serving`), a client that calls it as containerd does (`Snapshotter`), and
the mounts its answers describe, performed for real (`mounted`, `tree`); and what the
end-to-end tests with a real containerd look at (`fusesnap_snapshots`, `lower_mounts`,
`via_proxy`, `eventually`)."""

from __future__ import annotations

import errno
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import field_mask_pb2

from fusesnap.containerd import api
from fusesnap.containerd.service import NAMESPACE_KEY
from fusesnap.containerd.snapshots import SNAPSHOTS
from tests.e2e.cli import run
from tools.faultproxy import FaultProxy
from tools.images.catalog import PushedImage

STARTUP_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0
CALL_TIMEOUT = 30.0


# -- the client ----------------------------------------------------------------------------


class Snapshotter:
    """containerd's view of the service: each call carries ``namespace`` ("" sends no
    namespace metadata at all, as containerd's garbage collector does)."""

    def __init__(self, stub: Any, namespace: str) -> None:
        self.stub = stub
        self.namespace = namespace

    def in_namespace(self, namespace: str) -> Snapshotter:
        return Snapshotter(self.stub, namespace)

    def _call(self, method: str, request: Any) -> Any:
        metadata = ((NAMESPACE_KEY, self.namespace),) if self.namespace else ()
        return getattr(self.stub, method)(request, metadata=metadata, timeout=CALL_TIMEOUT)

    def prepare(
        self, key: str, parent: str = "", labels: Mapping[str, str] | None = None
    ) -> list[Any]:
        request = api.message("PrepareSnapshotRequest")(key=key, parent=parent, labels=labels)
        return list(self._call("Prepare", request).mounts)

    def view(
        self, key: str, parent: str = "", labels: Mapping[str, str] | None = None
    ) -> list[Any]:
        request = api.message("ViewSnapshotRequest")(key=key, parent=parent, labels=labels)
        return list(self._call("View", request).mounts)

    def mounts(self, key: str) -> list[Any]:
        return list(self._call("Mounts", api.message("MountsRequest")(key=key)).mounts)

    def commit(self, name: str, key: str, labels: Mapping[str, str] | None = None) -> None:
        self._call(
            "Commit", api.message("CommitSnapshotRequest")(name=name, key=key, labels=labels)
        )

    def remove(self, key: str) -> None:
        self._call("Remove", api.message("RemoveSnapshotRequest")(key=key))

    def stat(self, key: str) -> Any:
        return self._call("Stat", api.message("StatSnapshotRequest")(key=key)).info

    def update(self, info: Any, *paths: str) -> Any:
        request = api.message("UpdateSnapshotRequest")(info=info)
        if paths:
            request.update_mask.CopyFrom(field_mask_pb2.FieldMask(paths=paths))
        return self._call("Update", request).info

    def walk(self, *filters: str) -> list[Any]:
        """List: every snapshot (of the namespace) that passes any of ``filters``."""
        request = api.message("ListSnapshotsRequest")(filters=filters)
        return [info for reply in self._call("List", request) for info in reply.info]

    def names(self, *filters: str) -> list[str]:
        return sorted(info.name for info in self.walk(*filters))

    def usage(self, key: str) -> tuple[int, int]:
        reply = self._call("Usage", api.message("UsageRequest")(key=key))
        return reply.size, reply.inodes

    def cleanup(self) -> None:
        self._call("Cleanup", api.message("CleanupRequest")())


def code_of(call: Callable[[], object]) -> grpc.StatusCode:
    """The status code ``call`` fails with (the test fails if it succeeds)."""
    with pytest.raises(grpc.RpcError) as caught:
        call()
    code: grpc.StatusCode = caught.value.code()
    return code


# -- the daemon ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Daemon:
    root: Path  # the store directory
    stub: Any
    address: Path  # its socket
    process: SnapshotterProcess


def _answers(stub: Any) -> bool:
    try:
        replies = stub.List(
            api.message("ListSnapshotsRequest")(), metadata=((NAMESPACE_KEY, "probe"),), timeout=1
        )
        list(replies)
    except grpc.RpcError as exc:
        if exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
            return False
        raise
    return True


class SnapshotterProcess:
    """``fusesnap snapshotter`` on store ``root`` and socket ``sock``: `start` returns once
    a List answers; `stop` sends SIGTERM, after which it must exit 0 and take its socket
    away. It can be started again (a restart)."""

    def __init__(
        self,
        root: Path,
        sock: Path,
        log_path: Path,
        *,
        metrics: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.root, self.sock, self.log_path = root, sock, log_path
        self.metrics = metrics  # HOST:PORT for --metrics-address
        self.env = dict(env or {})  # on top of ours (DOCKER_CONFIG, ...)
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if k != "FUSESNAP_ROOT"} | self.env
        cmd = [sys.executable, "-m", "fusesnap", "--root", str(self.root), "snapshotter"]
        if self.metrics:
            cmd += ["--metrics-address", self.metrics]
        with self.log_path.open("a") as log:
            self.proc = subprocess.Popen(
                [*cmd, "--address", str(self.sock)], stdout=log, stderr=subprocess.STDOUT, env=env
            )
        proc = self.proc
        with grpc.insecure_channel(f"unix://{self.sock}") as channel:
            stub = api.Stub(channel)
            deadline = time.monotonic() + STARTUP_TIMEOUT
            while not (self.sock.exists() and _answers(stub)):
                if proc.poll() is not None:
                    pytest.fail(f"snapshotter exited {proc.returncode}:\n{self.log()}")
                if time.monotonic() > deadline:
                    self.stop(check=False)
                    pytest.fail(f"snapshotter did not answer:\n{self.log()}")
                time.sleep(0.1)

    def stop(self, *, check: bool = True) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if check and proc.returncode != 0:
            raise AssertionError(f"snapshotter exited {proc.returncode}:\n{self.log()}")
        if check and self.sock.exists():
            raise AssertionError(f"{self.sock}: the socket outlived the daemon")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@contextmanager
def serving(
    base: Path, *, metrics: str | None = None, env: Mapping[str, str] | None = None
) -> Iterator[Daemon]:
    """``fusesnap snapshotter`` on a fresh store under ``base`` (`SnapshotterProcess`),
    stopped after the block; then no lower mount of its may be left, and none is."""
    root = base / "store"
    # A unix socket path must fit in sun_path (108 bytes); tmp_path may not.
    sock_dir = Path(tempfile.mkdtemp(prefix="fs-", dir="/tmp"))
    sock = sock_dir / "snap.sock"
    process = SnapshotterProcess(root, sock, base / "snapshotter.log", metrics=metrics, env=env)
    with ExitStack() as stack:
        stack.callback(shutil.rmtree, sock_dir, ignore_errors=True)
        stack.callback(_take_down_lowers, root)
        process.start()
        stack.callback(process.stop)
        channel = stack.enter_context(grpc.insecure_channel(f"unix://{sock}"))
        yield Daemon(root, api.Stub(channel), sock, process)


def _take_down_lowers(root: Path) -> None:
    """Unmount lower mounts the snapshotter leaves up on purpose (they outlive it)."""
    for mountpoint in reversed(mount_points_under(root)):
        subprocess.run(["umount", "-l", mountpoint], check=False, capture_output=True)


def snapshot_dirs(daemon: Daemon) -> set[str]:
    """The snapshot directories in the daemon's store (every namespace's)."""
    base = daemon.root / SNAPSHOTS
    return {p.name for p in base.iterdir()} if base.is_dir() else set()


# -- a snapshotter under a real containerd ------------------------------------------------


def fusesnap_snapshots(root: Path, namespace: str) -> dict[str, str]:
    """A containerd namespace's snapshots in store ``root``, as ``fusesnap snapshot ls``
    lists them: key -> kind (``committed (remote)``, ``active``...)."""
    out = run(root, "snapshot", "ls", "-n", namespace).stdout.splitlines()[1:]
    return {row.split()[1]: " ".join(row.split()[2:-4]) for row in out}


def lower_mounts(root: Path) -> list[str]:
    """The snapshotter's lower mounts (one per image chain a container stands on)."""
    return [p for p in mount_points_under(root) if "/containerd/lowers/" in p]


def via_proxy(img: PushedImage, proxy: FaultProxy) -> tuple[str, int]:
    """``img``'s reference through ``proxy``, and the size of its layers."""
    return img.ref.replace(img.host, proxy.host), sum(layer.size for layer in img.layers)


def eventually(check: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.2)


# -- mounts and trees ----------------------------------------------------------------------


def mount_points_under(top: Path) -> list[str]:
    prefix = str(top.resolve()) + "/"
    with open("/proc/self/mountinfo") as f:
        points = [line.split()[4] for line in f]
    return [p for p in points if p.startswith(prefix)]


@contextmanager
def mounted(mounts: Sequence[Any], target: Path) -> Iterator[Path]:
    """Perform ``mounts`` on ``target`` (as containerd's ``mount.All``); unmount after."""
    if not mounts:
        raise AssertionError("a snapshot with no mounts")
    target.mkdir(parents=True, exist_ok=True)
    done = 0
    try:
        for m in mounts:
            cmd = ["mount", "-t", m.type, "-o", ",".join(m.options), m.source, str(target)]
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if proc.returncode != 0:
                raise AssertionError(f"{' '.join(cmd)}: {proc.stderr}")
            done += 1
        yield target
    finally:
        for _ in range(done):
            subprocess.run(["umount", str(target)], check=True)


Tree = dict[str, tuple[int, int, int, int, bytes | str | None]]


def tree(top: Path) -> Tree:
    """Everything under ``top`` (not ``top`` itself): type, mode, owner, contents."""
    out: Tree = {}
    for dirpath, dirnames, filenames in os.walk(top):
        for name in (*dirnames, *filenames):
            path = Path(dirpath, name)
            st = path.lstat()
            data: bytes | str | None = None
            if stat.S_ISLNK(st.st_mode):
                data = os.readlink(path)
            elif stat.S_ISREG(st.st_mode):
                data = path.read_bytes()
            kind, mode = stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode)
            out[str(path.relative_to(top))] = (kind, mode, st.st_uid, st.st_gid, data)
    return out


def write(path: Path, data: bytes, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    path.chmod(mode)


def assert_read_only(mnt: Path) -> None:
    with pytest.raises(OSError, match="Read-only file system") as caught:
        (mnt / "testfile").write_bytes(b"testcontent")
    if caught.value.errno != errno.EROFS or (mnt / "testfile").exists():
        raise AssertionError(f"{mnt}: a write was not refused with EROFS: {caught.value}")
