"""``fusesnap run`` options and bad input with real runc: -d, containers info,
--read-only, --tty, unknown images, names in use, killed runners, shared chunks."""

from __future__ import annotations

import json
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.e2e.cli import fusesnap_cmd, run

pytestmark = pytest.mark.e2e


def _mounts_of(root: Path) -> list[str]:
    out = subprocess.run(["mount"], capture_output=True, text=True, check=True).stdout
    return [line for line in out.splitlines() if str(root) in line]


def _status(root: Path, name: str) -> str:
    for line in run(root, "ps").stdout.splitlines()[1:]:
        cells = line.split()
        if cells and cells[0] == name:
            return " ".join(cells[2:-2])
    return ""


def _info(root: Path, name: str) -> dict:
    return json.loads(run(root, "containers", "info", name).stdout)


def test_detached_container_runs_in_the_background_and_rm_stops_it(busybox, tmp_path) -> None:
    root = tmp_path / "store"
    script = 'trap "exit 0" TERM; echo hello-from-bg; sleep 1000 & wait'
    started = time.monotonic()
    proc = run(root, "run", "-d", "--name", "bg", busybox.ref, "--", "sh", "-c", script)
    assert proc.stdout == "bg\n", proc.stdout
    assert time.monotonic() - started < 60
    assert _status(root, "bg") == "running"
    log = root / "containers" / "bg" / "container.log"
    deadline = time.monotonic() + 10
    while "hello-from-bg" not in log.read_text() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "hello-from-bg" in log.read_text()
    # the name is in use while it runs: one line, nothing pulled or mounted
    again = run(root, "run", "--name", "bg", busybox.ref, "--", "true", check=False)
    assert again.returncode == 1
    assert again.stderr.strip().splitlines() == [
        "fusesnap: error: container bg: the name is in use (fusesnap rm bg)"
    ], again.stderr
    info = _info(root, "bg")
    assert info["record"]["detached"] is True
    assert info["record"]["runc_status"] == "running"
    # rm stops it with SIGTERM (its trap exits 0) and cleans up
    started = time.monotonic()
    assert run(root, "rm", "bg").stdout == "bg\n"
    assert time.monotonic() - started < 8  # not the SIGKILL timeout
    assert not (root / "containers" / "bg").exists()
    assert not _mounts_of(root)
    # rm -f kills one that ignores SIGTERM (sleep as pid 1), at once
    assert run(root, "run", "-d", "--name", "bg2", busybox.ref, "--", "sleep", "1000").stdout
    started = time.monotonic()
    run(root, "rm", "-f", "bg2")
    assert time.monotonic() - started < 8
    assert "bg2" not in run(root, "ps").stdout
    assert not _mounts_of(root)


def test_detached_container_that_exits_is_shown_exited_and_rm_with_rm(busybox, tmp_path) -> None:
    root = tmp_path / "store"
    run(root, "run", "-d", "--name", "quick", busybox.ref, "--", "sh", "-c", "exit 4")
    deadline = time.monotonic() + 30
    while _status(root, "quick") != "exited (4)" and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _status(root, "quick") == "exited (4)"
    assert not _mounts_of(root)  # the runner took the mounts down at exit
    run(root, "run", "-d", "--rm", "--name", "gone", busybox.ref, "--", "true")
    deadline = time.monotonic() + 30
    while (root / "containers" / "gone").exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not (root / "containers" / "gone").exists()
    run(root, "rm", "quick")
    assert not _mounts_of(root)


def test_detached_command_not_found_is_one_line_and_127(busybox, tmp_path) -> None:
    root = tmp_path / "store"
    proc = run(root, "run", "-d", "--name", "nf", busybox.ref, "--", "nosuchcmd", check=False)
    assert proc.returncode == 127, (proc.returncode, proc.stdout, proc.stderr)
    errors = [line for line in proc.stderr.splitlines() if "nosuchcmd" in line]
    assert len(errors) == 1, proc.stderr
    assert errors[0].startswith("fusesnap: error: "), proc.stderr
    run(root, "rm", "nf")


def test_containers_info_prints_the_spec_and_the_record(busybox, tmp_path) -> None:
    root = tmp_path / "store"
    run(root, "run", "--name", "i1", "-e", "A=b", "-w", "/tmp", busybox.ref, "--", "true")
    info = _info(root, "i1")
    assert info["spec"]["process"]["args"] == ["true"]
    assert "A=b" in info["spec"]["process"]["env"]
    assert info["spec"]["process"]["cwd"] == "/tmp"
    assert info["spec"]["process"]["terminal"] is False  # stdin is not a terminal
    assert info["spec"]["root"]["readonly"] is False
    assert info["record"]["name"] == "i1"
    assert info["record"]["image"] == busybox.ref
    assert info["record"]["status"] == "exited"
    assert info["record"]["exit_code"] == 0
    assert info["snapshot"]["kind"] == "active"
    assert info["snapshot"]["key"] == "containers/i1"
    missing = run(root, "containers", "info", "nope", check=False)
    assert missing.returncode == 1
    assert missing.stderr == "fusesnap: error: container nope: not found\n"
    run(root, "rm", "i1")


def test_tty_asked_for_gives_the_container_a_terminal(busybox, tmp_path) -> None:
    root = tmp_path / "store"
    run(root, "pull", "--lazy", busybox.ref)
    inner = fusesnap_cmd(root, "run", "-t", "--name", "tt", busybox.ref, "--", "sh", "-c",
                         "test -t 0 && echo is-a-tty")  # fmt: skip
    # script(1) runs it on a pseudo-terminal of its own, as a user's shell would
    proc = subprocess.run(
        ["script", "-qefc", shlex.join(inner), "/dev/null"],
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, (proc.stdout, proc.stderr)
    assert "is-a-tty" in proc.stdout, proc.stdout
    spec = _info(root, "tt")["spec"]
    assert spec["process"]["terminal"] is True
    assert "TERM=xterm" in spec["process"]["env"]
    run(root, "rm", "tt")
    no_tty = run(root, "run", "--rm", busybox.ref, "--", "sh", "-c", "test -t 0 || echo no-tty")
    assert no_tty.stdout == "no-tty\n"
    for args, message in (
        (["-t"], "fusesnap: error: --tty: stdin is not a terminal"),
        (["-d", "-t"], "fusesnap: error: --tty with -d"),
    ):
        bad = run(root, "run", *args, busybox.ref, "--", "true", check=False)
        assert bad.returncode == 1
        assert bad.stderr.startswith(message), bad.stderr
    assert not _mounts_of(root)


def test_read_only_root(busybox, tmp_path) -> None:
    root = tmp_path / "store"
    proc = run(root, "run", "--rm", "--read-only", busybox.ref, "--", "sh", "-c",
               "cat /etc/passwd >/dev/null && echo read-ok; echo x > /x", check=False)  # fmt: skip
    assert proc.stdout == "read-ok\n"
    assert proc.returncode != 0
    assert "Read-only file system" in proc.stderr, proc.stderr
    run(root, "run", "--read-only", "--name", "ro", busybox.ref, "--", "true")
    info = _info(root, "ro")
    assert info["spec"]["root"]["readonly"] is True
    assert info["snapshot"]["kind"] == "view"
    assert info["snapshot"]["upper"] is None
    run(root, "rm", "ro")
    assert not _mounts_of(root)


def test_unknown_image_is_one_line(registry, tmp_path) -> None:
    root = tmp_path / "store"
    ref = f"{registry.host}/fusesnap-test/no-such-image:1"
    proc = run(root, "run", "--rm", ref, "--", "true", check=False)
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("fusesnap: error: "), lines
    assert "no-such-image" in lines[0]
    assert "Traceback" not in proc.stderr
    assert not (root / "containers").exists() or not list((root / "containers").iterdir())


def test_killed_run_is_cleaned_up_by_the_next_run(busybox, tmp_path) -> None:
    root = tmp_path / "store"
    run(root, "pull", "--lazy", busybox.ref)
    # a running detached container: the cleanup must leave it alone
    run(root, "run", "-d", "--name", "alive", busybox.ref, "--", "sleep", "1000")
    proc = subprocess.Popen(
        fusesnap_cmd(root, "run", "--name", "k", busybox.ref, "--", "sh", "-c",
                     "echo started; sleep 2"),
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=sys.stderr, text=True,
    )  # fmt: skip
    assert proc.stdout is not None
    assert proc.stdout.readline() == "started\n"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert _mounts_of(root)  # the overlay and the lower mount are left behind
    deadline = time.monotonic() + 30
    while _status(root, "k") != "dead" and time.monotonic() < deadline:
        time.sleep(0.2)  # runc runs the container to its end, then forgets it
    assert _status(root, "k") == "dead"
    out = run(root, "run", "--rm", busybox.ref, "--", "echo", "hi")
    assert out.stdout == "hi\n"
    assert "cleaned up dead container k" in out.stderr, out.stderr
    assert not [m for m in _mounts_of(root) if "/containers/k/" in m]
    assert _status(root, "alive") == "running"
    assert _status(root, "k") == "dead"
    run(root, "rm", "k")
    run(root, "rm", "-f", "alive")
    assert not _mounts_of(root)


def test_second_container_of_an_image_fetches_nothing(debian, faulty, tmp_path) -> None:
    root = tmp_path / "store"
    ref = debian.ref.replace(debian.host, faulty.host)
    first = run(root, "run", "--rm", ref, "--", "python3", "-c", "print(6*7)", timeout=600)
    assert first.stdout == "42\n"
    assert faulty.count("blob") > 0
    faulty.reset()
    second = run(root, "run", "--rm", ref, "--", "python3", "-c", "print(6*7)", timeout=600)
    assert second.stdout == "42\n"
    assert faulty.count("blob") == 0, faulty.counts()
    assert not _mounts_of(root)
