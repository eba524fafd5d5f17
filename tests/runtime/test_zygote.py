"""The mount zygote's own life: it waits for requests and exits when its starter lets go
(the daemons it forks are checked through the containerd snapshotter's tests)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from fusesnap.errors import MountError
from fusesnap.mountd import DaemonOptions, Zygote
from fusesnap.process import process_start_time


def test_the_zygote_exits_when_closed_and_refuses_work_after(tmp_path: Path) -> None:
    zygote = Zygote()
    assert process_start_time(zygote.pid) is not None  # waiting for requests
    zygote.close()
    assert process_start_time(zygote.pid) is None  # exited and reaped
    read_end, write_end = os.pipe()
    try:
        with pytest.raises(MountError, match="closed"):
            zygote.fork_daemon(DaemonOptions(tmp_path, "x", tmp_path), write_end, write_end)
    finally:
        os.close(read_end)
        os.close(write_end)


def test_a_bad_request_reports_through_the_ready_pipe(tmp_path: Path) -> None:
    """A daemon that cannot serve (no store, no image) says why on its ready pipe."""
    zygote = Zygote()
    try:
        mnt = tmp_path / "mnt"
        mnt.mkdir()
        options = DaemonOptions(tmp_path / "store", "127.0.0.1:1/none:latest", mnt)
        read_end, write_end = os.pipe()
        log_fd = os.open(tmp_path / "daemon.log", os.O_WRONLY | os.O_CREAT, 0o644)
        zygote.fork_daemon(options, write_end, log_fd)
        os.close(write_end)
        os.close(log_fd)
        with os.fdopen(read_end, "rb") as ready:
            lines = ready.read().decode().splitlines()
        assert lines[0].startswith("pid ")
        assert lines[1].startswith("error: image 127.0.0.1:1/none:latest"), lines
    finally:
        zygote.close()
