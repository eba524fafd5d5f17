"""Container records: older ``container.json`` files load, dead runners are reaped."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from fusesnap.containers import container


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_record_without_the_newer_fields_loads(tmp_path: Path) -> None:
    (tmp_path / "container.json").write_text(
        json.dumps({"name": "old", "image": "busybox", "created": 1.0, "status": "exited",
                    "exit_code": 0, "from_the_future": True})
    )  # fmt: skip
    record = container.ContainerRecord.load(tmp_path)
    assert record is not None
    assert (record.name, record.exit_code, record.detached, record.runner_pid) == (
        "old", 0, False, None,
    )  # fmt: skip
    assert not record.runner_alive()


@pytest.mark.requires("runc")
def test_reap_marks_containers_of_dead_runners_and_keeps_the_rest(tmp_path: Path) -> None:
    root = tmp_path / "root"
    records = {
        "killed": container.ContainerRecord("killed", "img", 1.0, status="running"),
        "exited": container.ContainerRecord("exited", "img", 1.0, status="exited", exit_code=0),
        "mine": container.ContainerRecord("mine", "img", 1.0, status="running"),
    }
    records["killed"].runner_pid, records["killed"].runner_start = _dead_pid(), 1
    records["mine"].claim()  # this process runs it
    for name, record in records.items():
        directory = container.container_dir(root, name)
        (directory / "lower").mkdir(parents=True)
        (directory / "rootfs").mkdir()
        record.save(directory)
    assert container.reap(root) == ["killed"]
    statuses = {info.name: info.status for info in container.list_containers(root)}
    assert statuses == {"exited": "exited (0)", "killed": "dead", "mine": "running"}
    assert container.reap(root) == []
