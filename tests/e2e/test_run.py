"""``fusesnap run``: containers with real runc on an overlay over the lazy mount."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.e2e.cli import fusesnap_cmd, run
from tools.images.catalog import build_and_push

pytestmark = pytest.mark.e2e


def _fusesnap_mounts(root: Path) -> list[str]:
    """The mounts of the store at ``root`` (a container's lower, overlay and the like; not
    those of other stores on the machine)."""
    out = subprocess.run(["mount"], capture_output=True, text=True, check=True).stdout
    return [line for line in out.splitlines() if str(root) in line]


def test_python_in_debian_on_a_cold_store(debian, tmp_path) -> None:
    root = tmp_path / "store"
    proc = run(root, "run", "--rm", debian.ref, "--", "python3", "-c", "print(6*7)", timeout=600)
    assert proc.stdout.splitlines()[-1] == "42", proc.stdout
    assert proc.stdout == "42\n", proc.stdout  # pull output goes to stderr
    assert not _fusesnap_mounts(root)
    assert not list((root / "containers").iterdir())


def test_exit_code_passes_through(busybox, tmp_path) -> None:
    root = tmp_path / "store"
    proc = run(root, "run", "--rm", busybox.ref, "--", "sh", "-c", "exit 3", check=False)
    assert proc.returncode == 3, proc.stderr
    assert not _fusesnap_mounts(root)


def test_non_root_user_reads_the_image(debian, tmp_path) -> None:
    root = tmp_path / "store"
    proc = run(
        root, "run", "--rm", "--user", "65534", debian.ref, "--",
        "sh", "-c", "id -u; cat /etc/os-release",
        timeout=600,
    )  # fmt: skip
    lines = proc.stdout.splitlines()
    assert lines[0] == "65534"
    assert any(line.startswith("ID=debian") for line in lines), proc.stdout
    proc = run(root, "run", "--rm", "--user", "nobody", debian.ref, "--", "id", "-u")
    assert proc.stdout == "65534\n"
    assert not _fusesnap_mounts(root)


def test_writes_land_in_the_upper_dir_and_go_with_rm(busybox, tmp_path) -> None:
    root = tmp_path / "store"
    run(root, "run", "--name", "w1", "--env", "GREETING=hello", "--workdir", "/tmp",
        busybox.ref, "--", "sh", "-c", 'echo "$GREETING" > note.txt')  # fmt: skip
    upper = Path(json.loads(run(root, "containers", "info", "w1").stdout)["snapshot"]["upper"])
    assert (upper / "tmp" / "note.txt").read_text() == "hello\n"
    ps = run(root, "ps").stdout
    assert "w1" in ps, ps
    assert "exited (0)" in ps, ps
    again = run(root, "run", "--name", "w1", busybox.ref, "--", "true", check=False)
    assert again.returncode == 1, again.stderr
    assert "in use" in again.stderr, again.stderr
    run(root, "rm", "w1")
    assert not (root / "containers" / "w1").exists()
    assert not upper.exists()
    assert "w1" not in run(root, "ps").stdout
    # --rm: the same write, gone at exit
    run(root, "run", "--rm", "--name", "w2", busybox.ref, "--", "sh", "-c", "echo x > /x")
    assert not (root / "containers" / "w2").exists()
    assert not _fusesnap_mounts(root)


def test_command_not_found_is_one_line_and_127(busybox, tmp_path) -> None:
    root = tmp_path / "store"
    proc = run(root, "run", "--rm", busybox.ref, "--", "nosuchcmd", check=False)
    assert proc.returncode == 127, (proc.returncode, proc.stderr)
    errors = [line for line in proc.stderr.splitlines() if "nosuchcmd" in line]
    assert len(errors) == 1, proc.stderr
    assert errors[0].startswith("fusesnap: error: "), errors
    assert "runc run failed" not in proc.stderr
    assert not _fusesnap_mounts(root)
    assert not list((root / "containers").iterdir())


def test_sigterm_is_forwarded_and_rm_cleans_up(busybox, tmp_path) -> None:
    root = tmp_path / "store"
    run(root, "pull", "--lazy", busybox.ref)
    script = 'trap "echo got-term; exit 7" TERM; echo started; sleep 60 & wait'
    proc = subprocess.Popen(
        fusesnap_cmd(root, "run", "--rm", "--name", "sig", busybox.ref, "--", "sh", "-c", script),
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=sys.stderr, text=True,
    )  # fmt: skip
    assert proc.stdout is not None
    assert proc.stdout.readline() == "started\n"
    time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    assert out == "got-term\n"
    assert proc.returncode == 7
    assert not (root / "containers" / "sig").exists()
    assert not _fusesnap_mounts(root)


def test_unknown_user_fails_cleanly(busybox, tmp_path) -> None:
    root = tmp_path / "store"
    proc = run(root, "run", "--rm", "--user", "ghost", busybox.ref, "--", "true", check=False)
    assert proc.returncode == 1
    assert "fusesnap: error: user 'ghost': not found" in proc.stderr, proc.stderr
    assert not list((root / "containers").iterdir())
    assert not _fusesnap_mounts(root)


def test_first_run_of_a_lazy_image_records_its_access_profile(registry, tmp_path) -> None:
    # Its own repository: the index artifact must not reach the other tests' images.
    img = build_and_push("busybox", registry, repo="fusesnap-test/busybox-run-profile")
    run(tmp_path / "builder", "index", "--push", img.ref, timeout=600)
    root = tmp_path / "store"
    run(root, "run", "--rm", img.ref, "--", "cat", "/etc/passwd")
    leases = run(root, "lease", "ls").stdout
    assert "fusesnap.profile" in leases, leases
    # Once: a second run neither records nor replaces it.
    before = [line for line in leases.splitlines() if "fusesnap.profile" in line]
    run(root, "run", "--rm", img.ref, "--", "true")
    after = run(root, "lease", "ls").stdout
    assert [line for line in after.splitlines() if "fusesnap.profile" in line] == before
