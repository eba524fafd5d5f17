"""The containerd snapshotter reads through the mirrors of its hosts directory: the lazy
pull it makes for containerd and the lower mount daemons it starts both go to the mirror
(a Distribution pull-through cache) named in ``hosts.toml``, not to the origin."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.containerd.harness import serving
from tests.e2e.cli import run
from tests.e2e.test_mirrors import fusesnap_requests, write_hosts
from tools.containerd import PrivateContainerd, pull_args, unique_id
from tools.faultproxy import FaultProxy
from tools.images.catalog import build_and_push
from tools.registry import Registry

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.requires("containerd", "ctr", "ctr-remote", "containerd-shim-runc-v2"),
]


def test_the_snapshotter_and_its_mounts_read_through_the_mirror(
    registry: Registry, faulty: FaultProxy, tmp_path: Path
) -> None:
    img = build_and_push("busybox", registry, tag="mirrored")
    run(tmp_path / "builder", "index", "--push", img.ref, timeout=600)  # another machine
    with Registry(tmp_path / "mirror", proxy=registry.url, access_log=True) as mirror:
        hosts = write_hosts(tmp_path / "hosts", img.host, mirror, faulty.host)
        faulty.reset()
        with (
            serving(tmp_path, env={"FUSESNAP_HOSTS_DIR": str(hosts)}) as daemon,
            PrivateContainerd(
                tmp_path / "ctrd", proxy_snapshotters={"fusesnap": daemon.address}
            ) as ctrd,
        ):
            # containerd fetches the manifest and config itself (from the origin, it has
            # no hosts.toml here); fusesnap's side goes through its hosts directory.
            ctrd.ctr_remote("image", "rpull", *pull_args(img.ref, snapshotter="fusesnap"))
            out = ctrd.ctr(
                "run", "--rm", "--snapshotter", "fusesnap", img.ref, unique_id(),
                "sh", "-c", "echo $((6*7))",
                timeout=300,
            ).stdout  # fmt: skip
            assert out == "42\n"
        # The layer's bytes are read only by a lower mount's daemon: it used the mirror.
        layer = img.layers[0].digest
        assert fusesnap_requests(mirror, f"/blobs/{layer}") > 0
        assert fusesnap_requests(mirror, "/manifests/") > 0
        # The origin was asked only what the cache has no API for: the referrers, once
        # for an index artifact and once for a SOCI index (looked up side by side).
        asked = [(r.kind, r.path.split("/")[-2]) for r in faulty.records]
        assert asked == [("other", "referrers")] * 2, asked
