"""A mount started before its image's layers are indexed (what the containerd snapshotter
does while it resolves an image): it mounts, waits for the indexes, then serves; taken
down while it waits, its daemon goes. Real registry, real FUSE, ``umoci unpack`` as truth."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

import pytest

from fusesnap import oci
from fusesnap.digest import Digest
from fusesnap.mountd import DaemonOptions, mount_info, start_mount, unmount
from fusesnap.process import process_start_time
from fusesnap.store import open_store
from tests.e2e.cli import run
from tools.images.catalog import PushedImage
from tools.images.estargz import build_and_push_estargz
from tools.images.push import inspect_raw

pytestmark = pytest.mark.e2e


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _store_documents(root: Path, img: PushedImage, registry: Any) -> None:
    """Only what the snapshotter's resolve stores first: the manifest and the config."""
    manifest = inspect_raw(f"{img.host}/{img.repo}@{img.manifest_digest}")
    config = json.loads(manifest)["config"]
    with open_store(root) as store:
        store.content.put(manifest, digest=Digest(img.manifest_digest), media_type=oci.OCI_MANIFEST)
        data = registry.blob_path(config["digest"]).read_bytes()
        store.content.put(data, digest=Digest(config["digest"]), media_type=oci.OCI_CONFIG)


def _waiting_mount(root: Path, mnt: Path, img: PushedImage) -> int:
    """Start the mount with the layers not indexed yet; its daemon's pid."""
    options = DaemonOptions(
        root, img.ref, mnt, manifest=img.manifest_digest, depth=len(img.layers), wait_layers=120
    )
    state = start_mount(options, mounted=True)
    assert mount_info(mnt) is not None
    with open_store(root) as store:
        assert not any(store.layers.exists(Digest(layer.digest)) for layer in img.layers)
    return state.pid


def test_a_mount_waits_for_its_layers_then_serves(registry: Any, tmp_path: Path) -> None:
    img = build_and_push_estargz("busybox", registry)
    rootfs = img.unpack(tmp_path / "unpacked")
    root, mnt = tmp_path / "store", tmp_path / "mnt"
    mnt.mkdir()
    _store_documents(root, img, registry)
    _waiting_mount(root, mnt, img)
    try:
        run(root, "pull", "--lazy", img.ref)  # the indexes arrive
        assert _sha(mnt / "bin/busybox") == _sha(rootfs / "bin/busybox")
        assert sorted(p.name for p in (mnt / "etc").iterdir()) == sorted(
            p.name for p in (rootfs / "etc").iterdir()
        )
    finally:
        unmount(root, mnt)
    assert mount_info(mnt) is None


def test_a_waiting_mount_taken_down_ends_its_daemon(registry: Any, tmp_path: Path) -> None:
    img = build_and_push_estargz("busybox", registry)
    root, mnt = tmp_path / "store", tmp_path / "mnt"
    mnt.mkdir()
    _store_documents(root, img, registry)
    pid = _waiting_mount(root, mnt, img)
    unmount(root, mnt, lazy=True)  # the resolve gave another chain: abandoned
    deadline = time.monotonic() + 10
    while process_start_time(pid) is not None:
        assert time.monotonic() < deadline, "the waiting daemon did not exit"
        time.sleep(0.05)
    assert mount_info(mnt) is None
    logs = "".join(p.read_text() for p in (root / "mounts").glob("*/daemon.log"))
    assert "unmounted while waiting for the layer indexes" in logs, logs
    with open_store(root) as store:
        assert store.leases.list() == []  # the daemon's lease went with it
