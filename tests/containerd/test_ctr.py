"""fusesnap as containerd's snapshotter, end to end: a private containerd (its own root,
state and socket; `tools.containerd`) with ``[proxy_plugins.fusesnap]`` pointing at a
``fusesnap snapshotter`` the test starts, the real registry behind a counting proxy,
``ctr-remote image rpull`` and ``ctr run``."""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import os
import re
import signal
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from fusesnap.index import TOC_DIGEST_ANNOTATION
from fusesnap.mountd.state import MountState, state_dir
from tests.containerd.harness import (
    Daemon,
    eventually,
    fusesnap_snapshots,
    lower_mounts,
    serving,
    via_proxy,
)
from tests.e2e.cli import run
from tests.e2e.rawpush import RawLayer, push_raw_image
from tests.e2e.sociimage import push_soci_image
from tests.lazy.sociztoc import Vector, vector
from tools._net import free_port
from tools.containerd import CtrError, PrivateContainerd, pull_args, unique_id
from tools.faultproxy import FaultProxy
from tools.images.catalog import PushedImage, build_and_push
from tools.images.estargz import build_and_push_estargz
from tools.registry import Registry, TokenAuth
from tools.tokenserver import TokenServer

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.requires("containerd", "ctr", "ctr-remote", "containerd-shim-runc-v2"),
]

SNAPSHOTTER = "fusesnap"


@dataclass
class Node:
    """One machine: containerd and fusesnap's snapshotter on a store of their own."""

    daemon: Daemon
    ctrd: PrivateContainerd
    metrics: str  # HOST:PORT of the snapshotter's Prometheus endpoint

    @property
    def root(self) -> Path:
        return self.daemon.root

    def rpull(self, ref: str) -> None:
        self.ctrd.ctr_remote("image", "rpull", *pull_args(ref, snapshotter=SNAPSHOTTER))

    def pull(self, ref: str) -> None:
        self.ctrd.ctr("images", "pull", *pull_args(ref, snapshotter=SNAPSHOTTER))

    def run(self, ref: str, *cmd: str) -> str:
        done = self.ctrd.ctr(
            "run", "--rm", "--snapshotter", SNAPSHOTTER, ref, unique_id(), *cmd, timeout=300
        )
        return done.stdout

    def fusesnap_snapshots(self) -> dict[str, str]:
        """Namespace default's snapshots as ``fusesnap snapshot ls`` lists them: key -> kind."""
        return fusesnap_snapshots(self.root, "default")

    def lower_mounts(self) -> list[str]:
        return lower_mounts(self.root)


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Node]:
    metrics = f"127.0.0.1:{free_port()}"
    with (
        serving(tmp_path, metrics=metrics) as daemon,
        PrivateContainerd(
            tmp_path / "ctrd", proxy_snapshotters={SNAPSHOTTER: daemon.address}, log_level="info"
        ) as ctrd,
    ):
        yield Node(daemon, ctrd, metrics)


def check_lazy_start(node: Node, img: PushedImage, proxy: FaultProxy) -> None:
    """rpull moves under 5% of the image, a python3 start under 50%, and every layer is a
    remote snapshot served by one lower mount of the whole chain."""
    ref, total = via_proxy(img, proxy)
    proxy.reset()
    node.rpull(ref)
    pulled = proxy.bytes_sent()
    assert pulled < 0.05 * total, (pulled, total)
    kinds = node.fusesnap_snapshots()
    assert list(kinds.values()).count("committed (remote)") == len(img.layers), kinds
    assert node.run(ref, "python3", "-c", "print(6*7)") == "42\n"
    assert proxy.bytes_sent() < 0.5 * total, (proxy.bytes_sent(), total)


@pytest.mark.slow
def test_debian_with_an_index_artifact(node, registry, faulty, tmp_path) -> None:
    img = build_and_push("debian", registry)
    run(tmp_path / "builder", "index", "--push", img.ref, timeout=600)  # another machine
    check_lazy_start(node, img, faulty)


@pytest.mark.slow
def test_debian_as_estargz(node, registry, faulty) -> None:
    check_lazy_start(node, build_and_push_estargz("debian", registry), faulty)


@pytest.mark.slow
def test_debian_as_zstd_chunked(node, registry, faulty) -> None:
    check_lazy_start(node, build_and_push("debian", registry, compression="zstd:chunked"), faulty)


def test_an_image_without_any_index_falls_back_and_runs(node, registry, faulty) -> None:
    img = build_and_push("busybox", registry, tag="no-index-ctr")
    ref, total = via_proxy(img, faulty)
    node.rpull(ref)  # labels name the image, but no layer has an index anywhere
    assert faulty.bytes_sent("blob") >= total  # containerd downloaded the layer itself
    assert node.run(ref, "echo", "unpacked") == "unpacked\n"
    kinds = node.fusesnap_snapshots()
    assert "committed (remote)" not in kinds.values(), kinds
    assert node.lower_mounts() == []


def test_a_plain_pull_is_unpacked_and_runs(node, registry) -> None:
    img = build_and_push("busybox", registry)
    node.pull(img.ref)  # no remote labels at all
    assert node.run(img.ref, "sh", "-c", "echo $((6*7))") == "42\n"
    assert "committed (remote)" not in node.fusesnap_snapshots().values()


def test_ctr_and_fusesnap_agree_then_gc_frees_the_chunks(node, registry, faulty) -> None:
    img = build_and_push_estargz("busybox", registry)
    ref, _ = via_proxy(img, faulty)
    node.rpull(ref)
    # The pull made the chain remote; its lower mount starts ahead of the first container.
    eventually(lambda: len(lower_mounts(node.root)) == 1, "the lower mount to start ahead")
    assert node.run(ref, "cat", "/etc/passwd").startswith("root:")
    ctr_names = node.ctrd.ctr("snapshots", "--snapshotter", SNAPSHOTTER, "ls").stdout
    names = [line.split()[0] for line in ctr_names.splitlines()[1:]]
    ours = node.fusesnap_snapshots()
    assert names, ctr_names
    for name in names:  # containerd's name, fusesnap's backend key (NS/ID/NAME or NAME)
        assert any(k == name or k.endswith("/" + name) for k in ours), (name, ours)
    top = names[-1]
    info = node.ctrd.ctr("snapshots", "--snapshotter", SNAPSHOTTER, "info", top).stdout
    assert '"Kind": "Committed"' in info
    assert "containerd.io/snapshot/remote" in info
    usage = node.ctrd.ctr("snapshots", "--snapshotter", SNAPSHOTTER, "usage", top).stdout
    assert re.search(r"\d", usage.splitlines()[-1]), usage

    # A snapshot of our own on top, removed with ctr: fusesnap forgets it too.
    node.ctrd.ctr("snapshots", "--snapshotter", SNAPSHOTTER, "prepare", "scratch", top)
    eventually(lambda: any(k.endswith("/scratch") for k in node.fusesnap_snapshots()), "prepare")
    node.ctrd.ctr("snapshots", "--snapshotter", SNAPSHOTTER, "rm", "scratch")
    eventually(lambda: not any(k.endswith("/scratch") for k in node.fusesnap_snapshots()), "ctr rm")

    # The image goes; containerd's gc removes its snapshots; fusesnap's gc frees chunks.
    node.ctrd.ctr("images", "rm", "--sync", ref)
    eventually(lambda: node.fusesnap_snapshots() == {}, "containerd's gc")
    eventually(lambda: node.lower_mounts() == [], "the lower mount to go")
    out = run(node.root, "gc").stdout
    freed = re.search(r"removed \d+ blobs, (\d+) layers, (\d+) chunks", out)
    assert freed is not None, out
    assert int(freed.group(1)) == len(img.layers), out
    assert int(freed.group(2)) > 0, out


def test_the_lower_mount_starts_while_the_image_is_resolved(node, registry, faulty) -> None:
    # Every layer promises a TOC: the chain's mount starts once the manifest and config are
    # in, and its daemon waits for the indexes the resolve is still making (each request
    # delayed here, so that the TOC reads come well after the config).
    img = build_and_push_estargz("busybox", registry)
    ref, _ = via_proxy(img, faulty)
    faulty.delay(0.5)
    try:
        node.rpull(ref)
    finally:
        faulty.delay(0)
    (lower,) = node.lower_mounts()
    state = MountState.load(state_dir(node.root, Path(lower)))
    assert state is not None
    line = next(x for x in node.daemon.process.log().splitlines() if "resolved in" in x)
    resolved = time.mktime(time.strptime(line[:19], "%Y-%m-%d %H:%M:%S")) + int(line[20:23]) / 1e3
    assert state.started < resolved, (state.started, line)  # the mount came first
    assert node.run(ref, "cat", "/etc/passwd").startswith("root:")


def test_a_layer_whose_toc_fails_is_unpacked_and_its_early_mount_goes(
    node, registry, faulty
) -> None:
    # busybox's layer, claiming a TOC it does not have: the mount started for the chain
    # while the image was resolved is abandoned, and containerd unpacks the layer itself.
    img = build_and_push("busybox", registry)
    (layer,) = img.layers
    blob = registry.blob_path(layer.digest).read_bytes()
    diff_id = "sha256:" + hashlib.sha256(gzip.decompress(blob)).hexdigest()
    claim = ((TOC_DIGEST_ANNOTATION, "sha256:" + "0" * 64),)
    raw = push_raw_image(registry.host, "fusesnap-test/busybox-no-toc", "v1",
                         [RawLayer(blob, layer.media_type, diff_id, claim)])  # fmt: skip
    ref = raw.replace(registry.host, faulty.host)
    faulty.delay(0.3)  # the TOC's reads fail well after the mount has started
    try:
        node.rpull(ref)
    finally:
        faulty.delay(0)
    assert "cannot use its estargz TOC" in node.daemon.process.log()
    eventually(lambda: node.lower_mounts() == [], "the abandoned lower mount to go")
    logs = "".join(p.read_text() for p in (node.root / "mounts").glob("*/daemon.log"))
    assert "unmounted while waiting for the layer indexes" in logs, logs
    assert "committed (remote)" not in node.fusesnap_snapshots().values()
    assert node.run(ref, "cat", "/etc/passwd").startswith("root:")


def _runs(node: Node, ref: str) -> bool:
    try:
        return node.run(ref, "echo", "after") == "after\n"
    except CtrError as exc:
        if "unavailable" not in str(exc):
            raise
        return False


def _kill(node: Node, cid: str) -> None:
    """Stop container ``cid`` and delete it (its snapshot goes with containerd's gc)."""

    def deleted() -> bool:
        node.ctrd.ctr("tasks", "delete", "--force", cid, check=False)
        node.ctrd.ctr("containers", "delete", cid, check=False)
        return cid not in node.ctrd.ctr("containers", "ls", "-q").stdout.split()

    eventually(deleted, f"container {cid} to be deleted")


def _fuse_lowers() -> list[str]:
    with open("/proc/mounts") as f:
        return [line.split()[1] for line in f if "fuse.fusesnap" in line]


def test_two_containers_share_one_lower_mount(node, registry, faulty) -> None:
    img = build_and_push_estargz("busybox", registry)
    ref, _ = via_proxy(img, faulty)
    pulls = [threading.Thread(target=node.rpull, args=(ref,)) for _ in range(2)]
    for t in pulls:
        t.start()
    for t in pulls:
        t.join()
    # Concurrent pulls of one image: one resolution (manifest, config, TOCs) for both.
    resolutions = node.daemon.process.log().count(f"{ref}: resolved in")
    assert resolutions == 1, node.daemon.process.log()
    ids = [unique_id(), unique_id()]
    for cid in ids:
        node.ctrd.ctr("run", "-d", "--snapshotter", SNAPSHOTTER, ref, cid, "sleep", "60")
    try:
        lowers = node.lower_mounts()
        assert len(lowers) == 1, lowers
        assert [p for p in _fuse_lowers() if p.startswith(str(node.root))] == lowers
        with open("/proc/mounts") as f:
            overlays = [line for line in f if line.startswith("overlay ") and lowers[0] in line]
        assert len(overlays) == 2, overlays  # each container's rootfs stands on it
    finally:
        for cid in ids:
            _kill(node, cid)
    eventually(lambda: node.lower_mounts() == [], "the last container to release the mount")


def _start_reader(node: Node, registry: Registry, faulty: FaultProxy) -> tuple[str, str]:
    """A detached container that reads a file of its lazily pulled image in a loop; its
    image and ID."""
    img = build_and_push_estargz("busybox", registry)
    ref, _ = via_proxy(img, faulty)
    node.rpull(ref)
    cid = unique_id()
    node.ctrd.ctr(
        "run", "-d", "--snapshotter", SNAPSHOTTER, ref, cid,
        "sh", "-c", "while cat /etc/passwd >/dev/null; do sleep 0.1; done; echo broken",
    )  # fmt: skip
    return ref, cid


def _running(node: Node, cid: str) -> bool:
    tasks = node.ctrd.ctr("tasks", "ls").stdout
    return re.search(rf"^{cid}\s+\d+\s+RUNNING", tasks, re.M) is not None


def test_a_snapshotter_restart_keeps_running_containers(node, registry, faulty) -> None:
    ref, cid = _start_reader(node, registry, faulty)
    try:
        lowers = node.lower_mounts()
        assert len(lowers) == 1
        node.daemon.process.stop()
        time.sleep(1)
        assert node.lower_mounts() == lowers  # the mount daemon serves on
        node.daemon.process.start()  # state is reloaded from the store; the mount adopted
        # containerd redials a proxy plugin with a backoff of up to 3 s: until then, new
        # calls fail as "unavailable" (running containers are not affected).
        eventually(lambda: _runs(node, ref), "containerd to reach the snapshotter again")
        assert node.lower_mounts() == lowers
        assert _running(node, cid)
    finally:
        _kill(node, cid)


@pytest.mark.slow
def test_a_lower_mount_daemon_kill_and_a_snapshotter_restart_keep_containers_reading(
    node, registry, faulty
) -> None:
    """Four containers read through one lower mount (each loop ends at its first failed
    read, and the container with it); its daemon is killed, then the snapshotter is
    restarted: all four run on, on the same mount."""
    ref, first = _start_reader(node, registry, faulty)
    ids = [first]
    try:
        for _ in range(3):
            cid = unique_id()
            node.ctrd.ctr(
                "run", "-d", "--snapshotter", SNAPSHOTTER, ref, cid,
                "sh", "-c", "while cat /etc/passwd >/dev/null; do sleep 0.1; done; echo broken",
            )  # fmt: skip
            ids.append(cid)
        lowers = node.lower_mounts()
        assert len(lowers) == 1, lowers
        directory = state_dir(node.root, lowers[0])
        before = MountState.load(directory)
        assert before is not None
        os.kill(before.pid, signal.SIGKILL)

        def replaced() -> bool:
            now = MountState.load(directory)
            return now is not None and now.pid != before.pid and now.daemon_alive()

        eventually(replaced, "a new daemon on the lower mount", timeout=60)
        node.daemon.process.stop()
        node.daemon.process.start()
        eventually(lambda: _runs(node, ref), "containerd to reach the snapshotter again")
        assert node.lower_mounts() == lowers
        assert [cid for cid in ids if not _running(node, cid)] == []
    finally:
        for cid in ids:
            _kill(node, cid)


def _metrics(node: Node) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://{node.metrics}/metrics", timeout=10).read()
    values: dict[str, float] = {}
    for line in text.decode().splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    return values


def test_metrics(node, registry, faulty) -> None:
    img = build_and_push_estargz("busybox", registry)
    ref, _ = via_proxy(img, faulty)
    node.rpull(ref)
    cid = unique_id()
    node.ctrd.ctr("run", "-d", "--snapshotter", SNAPSHOTTER, ref, cid, "sleep", "60")
    try:
        m = _metrics(node)
        prefix = "fusesnap_snapshotter"
        assert m[f'{prefix}_requests_total{{code="OK",method="Prepare"}}'] >= 1
        assert m[f'{prefix}_requests_total{{code="ALREADY_EXISTS",method="Prepare"}}'] == 1
        assert m[f'{prefix}_layers_total{{how="remote"}}'] == len(img.layers)
        assert m[f"{prefix}_mounts"] == 1
        assert m[f"{prefix}_fetched_bytes_total"] > 0  # busybox's binary, read by sleep
        assert m[f"{prefix}_fetch_errors_total"] == 0
        assert f"{prefix}_chunk_cache_hits_total" in m
    finally:
        _kill(node, cid)


def test_an_anonymous_token_registry(tmp_path) -> None:
    """No credentials from containerd: fusesnap takes the registry's anonymous token."""
    tokens = TokenServer({"alice": "s3cret-pw"}, anonymous_pull=True)
    with tokens, Registry(tmp_path / "reg", auth=TokenAuth(tokens)) as reg:
        img = build_and_push("busybox", reg, creds=("alice", "s3cret-pw"), tag="anon")
        config = tmp_path / "docker"
        config.mkdir()
        auth = base64.b64encode(b"alice:s3cret-pw").decode()
        (config / "config.json").write_text(json.dumps({"auths": {reg.host: {"auth": auth}}}))
        run(tmp_path / "builder", "index", "--push", img.ref, env={"DOCKER_CONFIG": str(config)})
        nobody = {"DOCKER_CONFIG": str(tmp_path / "no-credentials")}
        (tmp_path / "node").mkdir()
        with (
            serving(tmp_path / "node", env=nobody) as daemon,
            PrivateContainerd(
                tmp_path / "ctrd", proxy_snapshotters={SNAPSHOTTER: daemon.address}
            ) as ctrd,
        ):
            node = Node(daemon, ctrd, "")
            anonymous = tokens.token_requests
            node.rpull(img.ref)
            assert "committed (remote)" in node.fusesnap_snapshots().values()
            assert tokens.token_requests > anonymous
            assert node.run(img.ref, "echo", "anonymous") == "anonymous\n"


def test_a_containerd_restart_keeps_running_containers(node, registry, faulty) -> None:
    """containerd restarts (its shims and our mounts stay): the container runs on, and
    containerd finds fusesnap's snapshots again."""
    ref, cid = _start_reader(node, registry, faulty)
    try:
        lowers = lower_mounts(node.root)
        assert len(lowers) == 1
        node.ctrd.restart()
        assert _running(node, cid)
        assert lower_mounts(node.root) == lowers
        assert node.run(ref, "echo", "after") == "after\n"  # the same snapshots, found again
        assert lower_mounts(node.root) == lowers
    finally:
        _kill(node, cid)


def test_layers_with_a_soci_index_are_remote_and_read_by_span(
    node, registry, faulty, tmp_path
) -> None:
    """The zTOC test vectors' layers under busybox's, with a SOCI v2 index of the golden
    zTOCs: containerd leaves those layers to fusesnap (remote snapshots) and a container
    reads a file of one through a verified span, not the whole layer."""
    box = build_and_push("busybox", registry)
    (shell,) = box.layers
    blob = (box.layout_dir / "blobs" / "sha256" / shell.digest[7:]).read_bytes()
    layers: list[tuple[Vector, bytes | None]] = [
        (vector(n), vector(n).ztoc) for n in ("large-compressible-l1", "many-l0")
    ]
    layers.append((Vector("busybox", blob, b"", 0), None))  # on top, unpacked by containerd
    img = push_soci_image(
        registry.host, "soci/ctr", "v2", layers, version="v2", layout_dir=tmp_path / "layout"
    )
    ref = img.ref.replace(registry.host, faulty.host)
    faulty.reset()
    node.rpull(ref)
    kinds = list(node.fusesnap_snapshots().values())
    assert kinds.count("committed (remote)") == 2, kinds
    big = vector("large-compressible-l1")
    digest = "sha256:" + hashlib.sha256(big.blob).hexdigest()
    before = _blob_bytes(faulty, digest)
    assert before == 0, "containerd or fusesnap fetched the SOCI layer at pull"
    out = node.run(ref, "md5sum", "/big/part-0.log")
    rootfs = img.unpack(tmp_path / "unpacked")
    want = hashlib.md5((rootfs / "big/part-0.log").read_bytes()).hexdigest()
    assert out.split()[0] == want, out
    moved = _blob_bytes(faulty, digest)
    assert 0 < moved < len(big.blob) * 3 // 4, (moved, len(big.blob))


def _blob_bytes(proxy: FaultProxy, digest: str) -> int:
    return sum(
        r.bytes_sent
        for r in proxy.records
        if r.kind == "blob" and r.path.split("?")[0].endswith(digest)
    )
