"""Mount bookkeeping without a mount: state files, the control socket, the mount table."""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path

import pytest
import trio

from fusesnap.mountd.control import query, serve_control
from fusesnap.mountd.holder import wait_serving
from fusesnap.mountd.mountpoint import MountError, absolute_path, detach, is_stale, mount_info
from fusesnap.mountd.state import MountState, state_dir
from fusesnap.process import process_start_time


def test_state_dir_is_a_function_of_the_absolute_path(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "m").mkdir()
    assert state_dir(tmp_path, "m") == state_dir(tmp_path, tmp_path / "m")
    assert state_dir(tmp_path, "m") == state_dir(tmp_path, f"{tmp_path}/./m")
    assert state_dir(tmp_path, "m") != state_dir(tmp_path, "n")
    assert state_dir(tmp_path, "m").parent == tmp_path / "mounts"


def test_state_round_trip_and_liveness(tmp_path: Path) -> None:
    state = MountState(
        mountpoint="/m", image="img", manifest_digest="sha256:" + "0" * 64, pid=os.getpid(),
        pid_start=process_start_time(os.getpid()), lease_id="lease-1", started=time.time(),
    )  # fmt: skip
    assert MountState.load(tmp_path) is None
    state.save(tmp_path)
    assert MountState.load(tmp_path) == state
    assert state.daemon_alive()
    reused = dataclasses.replace(state, pid_start=1)
    assert not reused.daemon_alive()  # same pid, another start time: another process
    MountState.remove(tmp_path)
    assert MountState.load(tmp_path) is None
    (tmp_path / "mount.json").write_text("{not json")
    assert MountState.load(tmp_path) is None


def test_process_start_time() -> None:
    assert process_start_time(os.getpid()) is not None
    assert process_start_time(2**22 + 12345) is None


def test_mount_table() -> None:
    assert mount_info("/proc") is not None
    assert mount_info("/proc").fstype == "proc"  # type: ignore[union-attr]
    assert absolute_path("/proc/") == "/proc"


def test_a_plain_directory_is_neither_mounted_nor_stale(tmp_path: Path) -> None:
    assert mount_info(tmp_path) is None
    assert not is_stale(tmp_path)
    detach(tmp_path)  # nothing mounted afterwards: done


async def test_control_socket_round_trip_on_a_long_path(tmp_path: Path) -> None:
    deep = tmp_path.joinpath(*(["d" * 40] * 4))  # past the 107-byte sun_path limit
    deep.mkdir(parents=True)
    sock = deep / "control.sock"
    calls = []

    def stats() -> dict[str, object]:
        calls.append(1)
        return {"requests": {"read": 3}}

    async with trio.open_nursery() as nursery:
        await nursery.start(serve_control, sock, {"stats": stats})
        assert await trio.to_thread.run_sync(query, sock) == {"requests": {"read": 3}}
        with pytest.raises(MountError, match="unknown command"):
            await trio.to_thread.run_sync(query, sock, "nope")
        nursery.cancel_scope.cancel()
    assert calls == [1]
    assert not sock.exists()
    with pytest.raises(MountError, match="no fusesnap daemon"):
        query(sock)


def test_a_failed_mount_is_reported_to_the_starter(monkeypatch, tmp_path: Path) -> None:
    from contextlib import contextmanager

    from fusesnap.mountd import daemon

    @contextmanager
    def refuse(*args: object, **kwargs: object):
        raise RuntimeError("fuse_session_mount failed")
        yield

    monkeypatch.setattr(daemon, "fuse_session", refuse)
    told: list[str] = []
    with (
        pytest.raises(MountError, match="mount failed"),
        daemon._mounted(
            None,  # type: ignore[arg-type]
            tmp_path,
            allow_other=False,
            on_ready=told.append,
        ),
    ):
        pass
    assert len(told) == 1
    assert told[0].startswith("error: ")
    assert "mount failed" in told[0]


def test_mountinfo_escapes_are_undone() -> None:
    from fusesnap.mountd.mountpoint import _unescape

    assert _unescape(r"/mnt/with\040space\011tab\134back") == "/mnt/with space\ttab\\back"
    assert _unescape("/plain") == "/plain"


def test_the_state_directory_is_private(tmp_path: Path) -> None:
    from fusesnap.mountd.state import make_state_dir

    directory = make_state_dir(tmp_path / "root", tmp_path / "m")
    assert directory.is_dir()
    assert directory.parent.stat().st_mode & 0o777 == 0o700


def test_wait_serving_counts_a_first_daemon_still_building_only_when_asked(
    tmp_path: Path,
) -> None:
    # A mount whose daemon is alive but not serving yet (no control socket): the kernel
    # holds requests until it answers, so a caller that only needs the mount in place
    # (containerd stacking an overlay) goes on; one that needs it serving waits.
    (tmp_path / "m").mkdir()
    directory = state_dir(tmp_path, tmp_path / "m")
    directory.mkdir(parents=True)
    me = os.getpid(), process_start_time(os.getpid())
    state = MountState(
        mountpoint=str(tmp_path / "m"), image="img", manifest_digest="sha256:" + "0" * 64,
        pid=me[0], pid_start=me[1], lease_id="lease-1", started=time.time(),
        holder_pid=me[0], holder_start=me[1],
    )  # fmt: skip
    state.save(directory)
    assert wait_serving(tmp_path, tmp_path / "m", starting=True)
    started = time.monotonic()
    assert not wait_serving(tmp_path, tmp_path / "m", timeout=0.3)
    assert time.monotonic() - started >= 0.3
    # A dead daemon under a live holder (one being brought back) is waited for.
    dataclasses.replace(state, pid_start=1).save(directory)
    assert not wait_serving(tmp_path, tmp_path / "m", timeout=0.3, starting=True)
