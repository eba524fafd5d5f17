"""Mirrors and failover with real registries: the origin (`tools.registry`), a second
Distribution registry as its pull-through cache (``proxy: remoteurl:``) named as a mirror
in a ``hosts.toml``, and a counting proxy in front of the origin as the hosts.toml server.

    fusesnap ──▶ mirror (pull-through cache) ──▶ origin
        └──────▶ counting proxy ───────────────▶ origin      (the server, tried last)

Every byte read is checked against ``umoci unpack``.
"""

from __future__ import annotations

import hashlib
import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.cli import run
from tests.oracle import differences, disk_view, walk_sorted
from tools._net import wait_until
from tools.faultproxy import FaultProxy
from tools.images.catalog import PushedImage, build_and_push
from tools.registry import Registry

pytestmark = pytest.mark.e2e


def write_hosts(hosts_dir: Path, registry: str, mirror: Registry, server: str) -> Path:
    """``hosts_dir/REGISTRY/hosts.toml``: ``mirror`` first (pull and resolve), then ``server``."""
    directory = hosts_dir / registry
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "hosts.toml").write_text(
        f'server = "http://{server}"\n\n'
        f'[host."http://{mirror.host}"]\n  capabilities = ["pull", "resolve"]\n'
    )
    return hosts_dir


def fusesnap_requests(reg: Registry, part: str) -> int:
    """How many of our requests with ``part`` in their path the registry answered."""
    return sum(1 for r in reg.requests() if part in r.path and r.agent.startswith("fusesnap/"))


def same(mnt: Path, rootfs: Path, rel: str) -> bool:
    def sha(path: Path) -> str:
        return hashlib.sha256(path.read_bytes()).hexdigest()

    return sha(mnt / rel) == sha(rootfs / rel)


def regular_files(rootfs: Path, top: str) -> list[str]:
    return [
        rel
        for rel in (f"{top}/{p}" for p in walk_sorted(rootfs / top))
        if (rootfs / rel).is_file() and not (rootfs / rel).is_symlink()
    ]


@pytest.fixture
def mirror(registry: Registry, tmp_path: Path) -> Iterator[Registry]:
    with Registry(tmp_path / "mirror", proxy=registry.url, access_log=True) as reg:
        yield reg


@pytest.fixture(scope="module")
def indexed_debian(
    registry: Registry, tmp_path_factory: pytest.TempPathFactory
) -> tuple[PushedImage, Path]:
    """The Debian image with an index artifact (a lazy mount fetches only what is read),
    and its ``umoci unpack``."""
    img = build_and_push("debian", registry)
    work = tmp_path_factory.mktemp("debian")
    run(work / "builder", "index", "--push", img.ref, timeout=600)  # another machine
    return img, img.unpack(work / "unpacked")


def mount_through(
    img: PushedImage, mirror: Registry, origin: FaultProxy, tmp_path: Path
) -> tuple[Path, Path, dict[str, str]]:
    """Mount ``img`` lazily (no prefetch) with ``mirror`` first and ``origin`` as the server."""
    env = {
        "FUSESNAP_HOSTS_DIR": str(write_hosts(tmp_path / "hosts", img.host, mirror, origin.host))
    }
    root, mnt = tmp_path / "store", tmp_path / "mnt"
    mnt.mkdir()
    origin.reset()
    run(root, "mount", "--prefetch", "none", img.ref, str(mnt), env=env, timeout=600)
    return root, mnt, env


@pytest.mark.slow
def test_a_lazy_mount_keeps_serving_when_its_mirror_dies(
    indexed_debian: tuple[PushedImage, Path],
    faulty: FaultProxy,
    mirror: Registry,
    tmp_path: Path,
) -> None:
    img, rootfs = indexed_debian
    root, mnt, env = mount_through(img, mirror, faulty, tmp_path)
    try:
        # 1. Through the mirror: the origin sees none of it.
        for rel in regular_files(rootfs, "etc") + regular_files(rootfs, "usr/bin")[:40]:
            assert same(mnt, rootfs, rel), rel
        served_by_mirror = fusesnap_requests(mirror, "/blobs/")
        assert served_by_mirror > 0
        assert fusesnap_requests(mirror, "/manifests/") > 0
        assert faulty.count(kind="blob") == 0
        assert faulty.count(kind="manifest") == 0

        # 2. The mirror is killed while a reader goes through /usr/lib.
        files = regular_files(rootfs, "usr/lib")
        done: list[str] = []
        wrong: list[str] = []

        def reader() -> None:
            for rel in files:
                try:
                    if not same(mnt, rootfs, rel):
                        wrong.append(rel)
                except OSError as exc:
                    wrong.append(f"{rel}: {exc}")
                done.append(rel)

        thread = threading.Thread(target=reader)
        thread.start()
        assert wait_until(lambda: len(done) >= 20 or not thread.is_alive(), timeout=300)
        assert mirror.pid is not None
        os.kill(mirror.pid, signal.SIGKILL)
        killed_after = len(done)
        thread.join(timeout=600)
        assert not thread.is_alive()
        assert wrong == []
        assert killed_after < len(files), "the reader finished before the kill"

        # 3. The origin serves the rest: the whole tree is right.
        assert faulty.count(kind="blob") > 0
        assert fusesnap_requests(mirror, "/blobs/") >= served_by_mirror
        assert differences(disk_view(mnt), disk_view(rootfs)) == []
        logs = "".join(p.read_text() for p in (root / "mounts").glob("*/daemon.log"))
        assert f"registry host {mirror.host} failed" in logs
    finally:
        run(root, "umount", str(mnt), env=env)


@pytest.mark.slow
def test_a_hung_mirror_is_passed_over(
    indexed_debian: tuple[PushedImage, Path],
    faulty: FaultProxy,
    mirror: Registry,
    tmp_path: Path,
) -> None:
    """A mirror that takes connections and never answers (SIGSTOP): the read that meets
    it waits out the mirror's 20 s read timeout and is served by the origin, right."""
    img, rootfs = indexed_debian
    root, mnt, env = mount_through(img, mirror, faulty, tmp_path)
    assert mirror.pid is not None
    try:
        assert same(mnt, rootfs, "etc/os-release")
        assert faulty.count(kind="blob") == 0
        os.kill(mirror.pid, signal.SIGSTOP)
        for rel in regular_files(rootfs, "usr/bin")[::10]:
            assert same(mnt, rootfs, rel), rel
        assert faulty.count(kind="blob") > 0
        logs = "".join(p.read_text() for p in (root / "mounts").glob("*/daemon.log"))
        assert f"registry host {mirror.host} failed (ReadTimeout" in logs
    finally:
        os.kill(mirror.pid, signal.SIGCONT)
        run(root, "umount", str(mnt), env=env)


def test_a_pull_goes_through_the_mirror_when_the_origin_is_unreachable(
    registry: Registry, tmp_path: Path
) -> None:
    img = build_and_push("busybox", registry)
    rootfs = img.unpack(tmp_path / "unpacked")
    with (
        FaultProxy(registry.host) as origin,  # the origin, as the mirror and we reach it
        Registry(tmp_path / "mirror", proxy=origin.url, access_log=True) as mirror,
    ):
        hosts = write_hosts(tmp_path / "hosts", img.host, mirror, origin.host)
        env = {"FUSESNAP_HOSTS_DIR": str(hosts)}
        run(tmp_path / "warm", "pull", img.ref, env=env)  # fills the mirror's cache
        stored = [layer.digest for layer in img.layers]

        def cached() -> bool:  # the cache stores what it passed on in the background
            return all(mirror.blob_path(d).exists() for d in stored)

        assert wait_until(cached, timeout=120), mirror.log_tail()
        origin_url = origin.url
        origin.stop()

        root = tmp_path / "store"
        run(root, "pull", img.ref, env=env)
        for rel in ("etc/passwd", "etc/group"):
            assert run(root, "cat", img.ref, f"/{rel}").stdout == (rootfs / rel).read_text()
        assert fusesnap_requests(mirror, "/blobs/") >= 2 * len(stored)

        # With the origin alone the same pull fails, in one line: the mirror made it work.
        (tmp_path / "hosts" / img.host / "hosts.toml").write_text(f'server = "{origin_url}"\n')
        failed = run(tmp_path / "other", "pull", img.ref, env=env, check=False)
        assert failed.returncode == 1
        assert failed.stderr.startswith("fusesnap: error: registry "), failed.stderr
        assert failed.stderr.count("\n") == 1
