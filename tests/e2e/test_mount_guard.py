"""A bug in a side task of the mount daemon never takes the mount down.

Each background task (control answers, the control socket itself, the cache's
read-ahead, the memory trim, the prefetch, the fetch of opened files) is made to fail in this
process; `start_mount` forks the daemon from it, so the daemon carries the same
failures. The lazy mount must still serve every byte right, and its log must
say what failed.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest
import trio

from fusesnap.fuse import ChunkCache
from fusesnap.mountd import DaemonOptions, MountError, mount_stats, start_mount, unmount
from fusesnap.mountd import daemon as daemon_module
from fusesnap.mountd import openfetch as openfetch_module
from fusesnap.mountd.state import CONTROL_SOCKET, DAEMON_LOG, state_dir
from fusesnap.process import process_start_time
from tests.e2e.cli import run
from tools.images.estargz import build_and_push_estargz
from tools.registry import Registry

pytestmark = pytest.mark.e2e


CONTROL_LIFETIME = 2.0  # seconds the control socket answers before its planted failure


class Injected(RuntimeError):
    """The bug planted in a side task."""


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _plant_failures(monkeypatch: pytest.MonkeyPatch) -> None:
    def stats(self: Any) -> dict[str, Any]:
        raise Injected("stats answer")

    real_serve_control = daemon_module.serve_control

    async def serve_control(*args: Any, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        with trio.move_on_after(CONTROL_LIFETIME):
            await real_serve_control(*args, task_status=task_status)
        raise Injected("control socket, after it served a while")

    async def run_prefetch(self: Any, **kwargs: Any) -> None:
        raise Injected("read-ahead")

    async def prefetch(*args: Any) -> None:
        raise Injected("prefetch")

    async def opened(*args: Any) -> None:
        raise Injected("opened file fetch")

    async def trim(*args: Any, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        raise Injected("memory trim")

    monkeypatch.setattr(daemon_module._Mounted, "stats", stats)
    monkeypatch.setattr(daemon_module, "serve_control", serve_control)
    monkeypatch.setattr(ChunkCache, "run_prefetch", run_prefetch)
    monkeypatch.setattr(openfetch_module, "run_prefetch", prefetch)
    monkeypatch.setattr(openfetch_module.OpenedFiles, "_run", opened)
    monkeypatch.setattr(daemon_module, "run_trim", trim)


def test_failing_side_tasks_leave_the_mount_serving(
    registry: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    busybox = build_and_push_estargz("busybox", registry)  # lazy: its TOC is its index
    root, mnt = tmp_path / "store", tmp_path / "mnt"
    mnt.mkdir()
    run(root, "pull", "--lazy", busybox.ref)
    rootfs = busybox.unpack(tmp_path / "unpacked")
    _plant_failures(monkeypatch)
    state = start_mount(DaemonOptions(root, busybox.ref, mnt))
    try:
        # The stats answer fails: the control socket says so in one line and stays up.
        for _ in range(2):
            with pytest.raises(MountError, match="stats: Injected: stats answer"):
                mount_stats(root, mnt)
        files = [p for p in sorted(rootfs.rglob("*")) if p.is_file() and not p.is_symlink()]
        assert files
        for path in files:  # opened (a fetch that fails), read lazily, verified
            rel = path.relative_to(rootfs)
            assert _sha(mnt / rel) == _sha(path), rel
        trio.run(trio.sleep, CONTROL_LIFETIME)  # the control socket has failed now
        assert not (state_dir(root, mnt) / CONTROL_SOCKET).exists()
        for path in files[:5]:
            assert _sha(mnt / path.relative_to(rootfs)) == _sha(path)
    finally:
        unmount(root, mnt)
    log = (state_dir(root, mnt) / DAEMON_LOG).read_text()
    failed = [line for line in log.splitlines() if "the mount keeps serving without it" in line]
    for what in (
        "the control socket",
        "read-ahead",
        "memory trim",
        "prefetch",
        "fetching opened file",
    ):
        assert any(f" {what}" in line for line in failed), (what, log)
    assert "control command 'stats' failed" in log, log
    assert "Traceback" in log  # the bug is logged with where it happened
    assert process_start_time(state.pid) is None  # the daemon exited at unmount
