"""Snapshots and ``fusesnap commit`` with real runc: a container's changes become a layer
(whiteouts and opaque dirs included) that a second container sees."""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

import pytest

from tests.e2e.cli import run

pytestmark = pytest.mark.e2e

# Nothing listens on port 1: an image named there can only be served from the store.
OFFLINE = "127.0.0.1:1/fusesnap-test/committed"


def _chain(diff_ids: list[str]) -> str:
    chain = diff_ids[0]
    for diff_id in diff_ids[1:]:
        chain = "sha256:" + hashlib.sha256(f"{chain} {diff_id}".encode()).hexdigest()
    return chain


def _mounts_of(root: Path) -> list[str]:
    out = subprocess.run(["mount"], capture_output=True, text=True, check=True).stdout
    return [line for line in out.splitlines() if str(root) in line]


def _snapshots(root: Path) -> dict[str, list[str]]:
    rows = run(root, "snapshot", "ls").stdout.splitlines()[1:]
    return {row.split()[1]: row.split()[2:] for row in rows}


def test_commit_gives_an_image_that_a_second_run_sees(busybox, tmp_path) -> None:
    root = tmp_path / "store"
    run(root, "pull", busybox.ref)  # every chunk local: the new image needs no registry
    run(root, "run", "--name", "c1", busybox.ref, "--", "sh", "-c",
        "echo committed > /hello.txt; mkdir -p /data; echo a > /data/a; echo b > /data/b;"
        "ln /data/a /data/a-link; rm /bin/ash")  # fmt: skip
    info = json.loads(run(root, "containers", "info", "c1").stdout)
    parent = info["snapshot"]["parent"]
    assert parent is not None
    assert _snapshots(root)[parent][0] == "committed"
    assert _snapshots(root)["containers/c1"][0] == "active"

    out = run(root, "commit", "c1", f"{OFFLINE}:1").stdout
    assert out.startswith(f"{OFFLINE}:1 sha256:"), out
    assert f"{OFFLINE}:1" in run(root, "images").stdout
    script = "cat /hello.txt /data/a /data/a-link; test -e /bin/ash || echo ash-gone"
    seen = run(root, "run", "--rm", f"{OFFLINE}:1", "--", "sh", "-c", script)
    assert seen.stdout.splitlines() == ["committed", "a", "a", "ash-gone"], seen.stdout

    # the committed snapshot of the new chain ID is recorded, over the base image's top
    children = [
        doc
        for key in _snapshots(root)
        if (doc := json.loads(run(root, "snapshot", "info", key).stdout))["parent"] == parent
        and doc["kind"] == "committed"
    ]
    assert len(children) == 1, _snapshots(root)
    snap = children[0]
    assert snap["key"] == _chain([*_diff_ids_below(root, parent), snap["diff_id"]])
    assert snap["layer"][:19] in run(root, "layers", f"{OFFLINE}:1").stdout
    refused = run(root, "snapshot", "rm", parent, check=False)
    assert refused.returncode == 1
    assert refused.stderr.startswith(f"fusesnap: error: snapshot {parent}: in use"), refused.stderr
    busy = run(root, "snapshot", "rm", "containers/c1", check=False)
    assert busy.stderr == "fusesnap: error: snapshot containers/c1: in use by container c1\n"

    # a second container of the new image: deletes and an opaque dir, committed again
    run(root, "run", "--name", "c2", f"{OFFLINE}:1", "--", "sh", "-c",
        "rm /hello.txt; rm -rf /data; mkdir /data; echo c > /data/c")  # fmt: skip
    run(root, "commit", "c2", f"{OFFLINE}:2")
    third = run(root, "run", "--rm", f"{OFFLINE}:2", "--", "sh", "-c",
                "ls /data; test -e /hello.txt || echo hello-gone; cat /data/c")  # fmt: skip
    assert third.stdout.splitlines() == ["c", "hello-gone", "c"], third.stdout
    run(root, "rm", "c1", "c2")
    assert "containers/c1" not in _snapshots(root)
    assert not _mounts_of(root)


def _diff_ids_below(root: Path, top: str) -> list[str]:
    """The diff IDs of the committed chain ending at ``top``, bottom first."""
    out: list[str] = []
    key: str | None = top
    while key is not None:
        snap = json.loads(run(root, "snapshot", "info", key).stdout)
        out.append(snap["diff_id"])
        key = snap["parent"]
    return out[::-1]


def test_read_only_container_has_nothing_to_commit(busybox, tmp_path) -> None:
    root = tmp_path / "store"
    run(root, "run", "--read-only", "--name", "ro", busybox.ref, "--", "true")
    proc = run(root, "commit", "ro", f"{OFFLINE}:ro", check=False)
    assert proc.returncode == 1
    assert proc.stderr == (
        "fusesnap: error: container ro: read-only, it has no changes to commit\n"
    ), proc.stderr
    run(root, "rm", "ro")
