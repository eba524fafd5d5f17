"""containerd's snapshots API as fusesnap loads it: the committed descriptor set is what
tools/gen-proto compiles the .proto files to, and it speaks containerd's names."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from fusesnap.containerd import api

REPO = Path(__file__).resolve().parents[2]


def test_descriptors_match_their_protos(tmp_path: Path) -> None:
    made = tmp_path / "snapshots.binpb"
    subprocess.run(
        [str(REPO / "tools/gen-proto"), str(made)],
        check=True,
        env={"PYTHON": sys.executable, "PATH": "/usr/bin:/bin"},
    )
    assert made.read_bytes() == api.DESCRIPTORS.read_bytes()


def test_service_speaks_containerds_names() -> None:
    assert api.SERVICE == "containerd.services.snapshots.v1.Snapshots"
    assert list(api.METHODS) == [
        "Prepare", "View", "Mounts", "Commit", "Remove",
        "Stat", "Update", "List", "Usage", "Cleanup",
    ]  # fmt: skip
    assert [name for name, (_, _, stream) in api.METHODS.items() if stream] == ["List"]
    info = api.message("Info").DESCRIPTOR
    assert {f.name: f.number for f in info.fields} == {
        "name": 1, "parent": 2, "kind": 3, "created_at": 4, "updated_at": 5, "labels": 6,
    }  # fmt: skip
    prepare = api.METHODS["Prepare"][1].DESCRIPTOR.fields_by_name["mounts"]
    assert prepare.message_type.full_name == "containerd.types.Mount"
    assert [f.number for f in prepare.message_type.fields] == [1, 2, 3, 4]
    assert (api.KIND_VIEW, api.KIND_ACTIVE, api.KIND_COMMITTED) == (1, 2, 3)


def test_a_message_round_trips_on_the_wire() -> None:
    request = api.message("PrepareSnapshotRequest")(key="k", parent="p", labels={"a": "b"})
    wire = request.SerializeToString()
    # containerd's encoding: field 2 (key) = "k" as 0x12 0x01 'k', field 3 (parent) likewise.
    assert b"\x12\x01k\x1a\x01p" in wire
    assert api.message("PrepareSnapshotRequest").FromString(wire) == request
