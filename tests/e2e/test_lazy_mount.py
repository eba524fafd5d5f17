"""Lazy mounts: a cold store, a real registry behind a counting proxy, and only the bytes
that are read cross the network — verified against ``umoci unpack``."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import pytest

from tests.e2e.cli import mounted, run
from tools.faultproxy import FaultProxy
from tools.images.catalog import PushedImage, build_and_push
from tools.images.estargz import build_and_push_estargz

pytestmark = pytest.mark.e2e


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def check_cold_start(img: PushedImage, proxy: FaultProxy, tmp_path: Path, *, python: bool) -> None:
    total = sum(layer.size for layer in img.layers)
    ref = img.ref.replace(img.host, proxy.host)
    rootfs = img.unpack(tmp_path / "unpacked")
    with mounted(tmp_path / "store", ref, tmp_path / "mnt") as mnt:
        at_mount = proxy.bytes_sent()
        assert (mnt / "etc/os-release").read_bytes() == (rootfs / "etc/os-release").read_bytes()
        after_cat = proxy.bytes_sent()
        # The mount moved manifest, config and indexes; the cat one compressed span.
        assert after_cat - at_mount < 0.02 * total, (at_mount, after_cat, total)
        assert after_cat < 0.03 * total, (at_mount, after_cat, total)
        if python:
            out = subprocess.run(
                ["chroot", str(mnt), "python3", "-c", "print(1)"],
                capture_output=True, text=True, timeout=300, check=True,
            )  # fmt: skip
            assert out.stdout == "1\n"
            assert proxy.bytes_sent() < 0.5 * total, (proxy.bytes_sent(), total)
        # Every byte served matches the ground truth (here: all of /etc and /usr/bin).
        for top in ("etc", "usr/bin"):
            for path in sorted((rootfs / top).rglob("*")):
                if path.is_file() and not path.is_symlink():
                    rel = path.relative_to(rootfs)
                    assert _sha(mnt / rel) == _sha(path), rel
        stats = run(tmp_path / "store", "stats", str(mnt)).stdout
        assert "fetch" in stats or "fetched" in stats, stats
    # A second run reads from the store: nothing more is fetched for the same file.
    before = proxy.bytes_sent()
    with mounted(tmp_path / "store", ref, tmp_path / "mnt") as mnt:
        (mnt / "etc/os-release").read_bytes()
    assert proxy.bytes_sent() - before < 64 * 1024  # manifest check only, no chunks


@pytest.mark.slow
def test_cold_mount_with_an_index_artifact(registry, faulty, tmp_path) -> None:
    img = build_and_push("debian", registry)
    run(tmp_path / "builder", "index", "--push", img.ref, timeout=600)  # another machine
    faulty.reset()
    check_cold_start(img, faulty, tmp_path, python=True)


@pytest.mark.slow
def test_cold_mount_of_zstd_chunked(registry, faulty, tmp_path) -> None:
    img = build_and_push("debian", registry, compression="zstd:chunked")
    check_cold_start(img, faulty, tmp_path, python=True)


def test_cold_mount_of_estargz(registry, faulty, tmp_path) -> None:
    img = build_and_push_estargz("busybox", registry)
    total = sum(layer.size for layer in img.layers)
    ref = img.ref.replace(img.host, faulty.host)
    rootfs = img.unpack(tmp_path / "unpacked")
    with mounted(tmp_path / "store", ref, tmp_path / "mnt") as mnt:
        assert (mnt / "etc/passwd").read_bytes() == (rootfs / "etc/passwd").read_bytes()
        assert faulty.bytes_sent() < 0.05 * total
        out = subprocess.run(["chroot", str(mnt), "/bin/busybox", "echo", "hi"],
                             capture_output=True, text=True, timeout=60, check=True)  # fmt: skip
        assert out.stdout == "hi\n"
        assert _sha(mnt / "bin/busybox") == _sha(rootfs / "bin/busybox")


def test_cold_mount_without_any_index_builds_one_by_streaming(registry, faulty, tmp_path) -> None:
    # A repository of its own: referrers are per repository and digest, and other tests
    # push index artifacts for the same busybox manifest.
    img = build_and_push("busybox", registry, repo="fusesnap-test/busybox-no-index", tag="no-index")
    total = sum(layer.size for layer in img.layers)
    ref = img.ref.replace(img.host, faulty.host)
    rootfs = img.unpack(tmp_path / "unpacked")
    with mounted(tmp_path / "store", ref, tmp_path / "mnt") as mnt:
        streamed = faulty.bytes_sent("blob")
        assert total <= streamed < total + 64 * 1024  # the layer, once
        assert _sha(mnt / "bin/busybox") == _sha(rootfs / "bin/busybox")
        assert faulty.bytes_sent("blob") == streamed  # its chunks were kept: nothing more


def test_registry_failure_gives_eio_not_a_hang_and_recovers(registry, faulty, tmp_path) -> None:
    img = build_and_push("debian", registry)
    run(tmp_path / "builder", "index", "--push", img.ref, timeout=600)
    ref = img.ref.replace(img.host, faulty.host)
    rootfs = img.unpack(tmp_path / "unpacked")
    with mounted(tmp_path / "store", ref, tmp_path / "mnt") as mnt:
        faulty.fail_next(10_000, status=503, kind="blob")
        with pytest.raises(OSError, match="Input/output error"):
            (mnt / "usr/bin/python3.11").read_bytes()
        faulty.reset()
        data = (mnt / "usr/bin/python3.11").read_bytes()
        assert hashlib.sha256(data).hexdigest() == _sha(rootfs / "usr/bin/python3.11")


def test_cat_of_a_lazily_pulled_image_fetches_only_that_file(registry, faulty, tmp_path) -> None:
    img = build_and_push_estargz("busybox", registry)
    ref = img.ref.replace(img.host, faulty.host)
    rootfs = img.unpack(tmp_path / "unpacked")
    root = tmp_path / "store"
    run(root, "pull", "--lazy", ref)
    before = faulty.bytes_sent("blob")
    out = run(root, "cat", ref, "/etc/passwd").stdout
    assert out == (rootfs / "etc/passwd").read_text()
    fetched = faulty.bytes_sent("blob") - before
    assert 0 < fetched < 10_000  # one small frame, not the 1 MB layer
