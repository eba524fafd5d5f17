"""Containers (``run -d``, real runc) over a mount whose daemon is killed: they read on
without an error; if no daemon can come back, ``rm -f`` still takes everything down."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from fusesnap.containers.record import ContainerRecord
from fusesnap.mountd.state import failure, state_dir
from tests.e2e.cli import run
from tests.e2e.test_restart import (
    alive,
    failures,
    kill_and_wait_for_the_next,
    mount_state,
    passes,
    wait_for,
)

pytestmark = pytest.mark.e2e

# Opens and reads files of the image in a loop (each open through the overlay reaches
# the lower mount's daemon), checks one's content, says "pass N" after each round.
_LOOP = r"""
n=0
while :; do
  for f in /etc/os-release /etc/debian_version /etc/passwd /usr/share/doc/*/copyright; do
    cat "$f" > /dev/null 2> /tmp/err || { read -r e < /tmp/err; echo "FAIL $f: $e"; }
  done
  grep -q '^ID=debian' /etc/os-release || echo "FAIL /etc/os-release: wrong content"
  n=$((n + 1))
  echo "pass $n"
  sleep 0.05
done
"""


def _mounts_of(root: Path) -> list[str]:
    out = subprocess.run(["mount"], capture_output=True, text=True, check=True).stdout
    return [line for line in out.splitlines() if str(root) in line]


def _start_reader(root: Path, name: str, ref: str) -> tuple[Path, Path]:
    run(root, "run", "-d", "--name", name, ref, "--", "sh", "-c", _LOOP, timeout=600)
    directory = root / "containers" / name
    log = directory / "container.log"
    wait_for("the container's first pass", lambda: passes(log) >= 1, timeout=300)
    return directory / "lower", log


def test_a_container_reads_on_through_a_daemon_kill(debian, tmp_path) -> None:
    root = tmp_path / "store"
    try:
        lower, log = _start_reader(root, "reader", debian.ref)
        _, after = kill_and_wait_for_the_next(root, lower)
        at_kill = passes(log)
        time.sleep(30)  # it keeps going for 30 s after the kill
        assert passes(log) > at_kill + 2, log.read_text()[-1000:]
        assert failures(log) == [], log.read_text()[-2000:]
        ps = run(root, "ps").stdout
        assert "running" in ps, ps
        assert "failed" not in ps, ps
    finally:
        run(root, "rm", "-f", "reader", check=False)
    assert not _mounts_of(root)
    assert not alive(after.pid)
    assert after.holder_pid is not None
    assert not alive(after.holder_pid)


def test_rm_f_takes_down_a_container_whose_mount_cannot_come_back(debian, tmp_path) -> None:
    root = tmp_path / "store"
    try:
        lower, log = _start_reader(root, "doomed", debian.ref)
        record = ContainerRecord.load(lower.parent)
        assert record is not None
        assert record.runner_pid is not None
        state = mount_state(root, lower)
        run(root, "rmi", debian.ref)  # no daemon can start: the image is gone
        os.kill(state.pid, signal.SIGKILL)
        wait_for("the holder to give up", lambda: failure(state_dir(root, lower)))
        # EIO, nothing hangs: from cat's read, or the shell failing to run cat, or cat
        # killed by SIGBUS when a page of its mapped binary cannot be read.
        wait_for("reads to fail", lambda: failures(log), timeout=30)
        eio = ("Input/output error", "Bus error")
        reads = [line for line in failures(log) if "wrong content" not in line]  # grep's
        assert reads, failures(log)
        assert all(any(e in line for e in eio) for line in reads), reads
        ps = run(root, "ps").stdout
        assert "image mount failed" in ps, ps
    finally:
        run(root, "rm", "-f", "doomed", check=False)
    assert not _mounts_of(root)
    assert not (root / "containers" / "doomed").exists()
    assert state.holder_pid is not None
    for pid in (state.pid, state.holder_pid, record.runner_pid):
        assert not alive(pid), pid
