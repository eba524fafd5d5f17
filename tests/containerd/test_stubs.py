"""The committed gRPC stubs are what tools/gen-proto makes of the .proto files."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
API = Path("fusesnap/containerd/api")


def test_stubs_match_their_protos(tmp_path: Path) -> None:
    subprocess.run(
        [str(REPO / "tools/gen-proto"), str(tmp_path)],
        check=True,
        env={"PYTHON": sys.executable, "PATH": "/usr/bin:/bin"},
    )
    made = sorted(p.name for p in (tmp_path / API).iterdir())
    committed = sorted(p.name for p in (REPO / API).iterdir() if "_pb2" in p.name)
    assert made == committed
    for name in made:
        assert (tmp_path / API / name).read_text() == (REPO / API / name).read_text(), name


def test_service_speaks_containerds_names() -> None:
    from fusesnap.containerd.api import snapshots_pb2

    service = snapshots_pb2.DESCRIPTOR.services_by_name["Snapshots"]
    assert service.full_name == "containerd.services.snapshots.v1.Snapshots"
    assert [m.name for m in service.methods] == [
        "Prepare", "View", "Mounts", "Commit", "Remove",
        "Stat", "Update", "List", "Usage", "Cleanup",
    ]  # fmt: skip
    info = snapshots_pb2.Info.DESCRIPTOR
    numbers = {f.name: f.number for f in info.fields}
    assert numbers == {
        "name": 1, "parent": 2, "kind": 3, "created_at": 4, "updated_at": 5, "labels": 6,
    }  # fmt: skip
    mount = snapshots_pb2.PrepareSnapshotResponse.DESCRIPTOR.fields_by_name["mounts"]
    assert mount.message_type.full_name == "containerd.types.Mount"
    assert [f.number for f in mount.message_type.fields] == [1, 2, 3, 4]
