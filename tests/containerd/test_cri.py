"""Kubernetes' path through fusesnap, end to end, with no kubelet: containerd's own CRI
plugin (`tools.containerd.CriConfig`: ``snapshotter = "fusesnap"``, snapshot annotations
on), driven over containerd's socket by a CRI client making a kubelet's calls
(`tests.containerd.cri`), the real registry behind a counting proxy, and
``fusesnap snapshotter`` as the proxy plugin."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.containerd.cri import CriClient, enum_value, message
from tests.containerd.harness import (
    Daemon,
    eventually,
    fusesnap_snapshots,
    lower_mounts,
    serving,
    via_proxy,
)
from tools.containerd import CRI_NAMESPACE, CriConfig, PrivateContainerd, unique_id
from tools.faultproxy import FaultProxy
from tools.images.catalog import build_and_push
from tools.images.estargz import build_and_push_estargz
from tools.registry import Registry

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.requires("containerd", "containerd-shim-runc-v2", "runc"),
]

SNAPSHOTTER = "fusesnap"
REMOTE = "committed (remote)"


@dataclass
class Node:
    """One Kubernetes node: containerd with its CRI, and fusesnap's snapshotter."""

    daemon: Daemon
    ctrd: PrivateContainerd
    cri: CriClient

    def snapshots(self) -> dict[str, str]:
        """The CRI's snapshots, as fusesnap lists them: key -> kind."""
        return fusesnap_snapshots(self.daemon.root, CRI_NAMESPACE)

    def lower_mounts(self) -> list[str]:
        return lower_mounts(self.daemon.root)


@pytest.fixture
def node(tmp_path: Path, registry: Registry, faulty: FaultProxy) -> Iterator[Node]:
    pause = build_and_push("busybox-pause", registry)
    cri = CriConfig(
        sandbox_image=pause.ref,
        snapshotter=SNAPSHOTTER,
        plain_http=(registry.host, faulty.host),
    )
    with serving(tmp_path) as daemon:
        with (
            PrivateContainerd(
                tmp_path / "ctrd",
                proxy_snapshotters={SNAPSHOTTER: daemon.address},
                cri=cri,
                log_level="info",
            ) as ctrd,
            CriClient(ctrd.address) as client,
        ):
            yield Node(daemon, ctrd, client)
        assert ctrd.leftovers() == []


def pod_config(name: str, log_dir: Path) -> Any:
    """A pod on the node's network (the CRI has no CNI network to give it)."""
    node_network = {"network": enum_value("NamespaceMode", "NODE")}
    return message("PodSandboxConfig")(
        metadata={"name": name, "uid": unique_id(), "namespace": "fusesnap-test"},
        log_directory=str(log_dir),
        linux={"security_context": {"namespace_options": node_network}},
    )


def test_a_pod_runs_on_a_lazily_pulled_image(node: Node, registry, faulty, tmp_path) -> None:
    img = build_and_push_estargz("busybox", registry)
    ref, total = via_proxy(img, faulty)
    faulty.reset()
    image_id = node.cri.pull_image(ref)
    pulled = faulty.bytes_sent()
    assert pulled < 0.05 * total, (pulled, total)  # the manifest, config and TOC only
    assert [ref] in [list(image.repo_tags) for image in node.cri.list_images()]
    assert image_id in [image.id for image in node.cri.list_images()]
    kinds = node.snapshots()
    assert list(kinds.values()).count(REMOTE) == len(img.layers), kinds

    pod = pod_config("lazy", tmp_path / "pods")
    pod_id = node.cri.run_pod_sandbox(pod)
    try:
        container = message("ContainerConfig")(
            metadata={"name": "head"},
            image={"image": ref},
            command=["sh", "-c", "cat /etc/passwd | head -1"],
            log_path="head.log",
        )
        container_id = node.cri.create_container(pod_id, container, pod)
        node.cri.start_container(container_id)
        status = node.cri.wait_exited(container_id)
        assert status.exit_code == 0, status
        assert status.image_ref == f"{faulty.host}/{img.repo}@{img.manifest_digest}"
        log = (tmp_path / "pods" / "head.log").read_text()
        assert re.fullmatch(r"\S+ stdout F root:x:0:0:root:/root:/bin/sh\n", log), log
        assert len(node.lower_mounts()) == 1  # the container's rootfs still stands on it
        node.cri.remove_container(container_id)
    finally:
        node.cri.stop_pod_sandbox(pod_id)
        node.cri.remove_pod_sandbox(pod_id)
    assert faulty.bytes_sent() > pulled  # busybox's binary, read by sh as it started

    node.cri.remove_image(ref)
    eventually(lambda: REMOTE not in node.snapshots().values(), "containerd's gc")
    eventually(lambda: node.lower_mounts() == [], "the lower mount to go")
    # The sandbox image has no index anywhere: containerd unpacked it into a local snapshot.
    assert set(node.snapshots().values()) == {"committed"}, node.snapshots()
