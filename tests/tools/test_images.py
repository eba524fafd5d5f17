"""Image builders: pushes are what skopeo says, layouts are deterministic, and umoci unpacks
the crafted edge cases as the OCI rules say."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess
from pathlib import Path

import pytest

from tools.images import NAMES, build_and_push, build_layout, write_layout
from tools.images.busybox import busybox_image
from tools.images.crafted import (
    CAP_NET_RAW_EP,
    LONG_COMPONENT,
    LONG_FILE,
    LONG_TARGET,
    UNICODE_NAMES,
    BigFileSource,
    big_image,
)
from tools.images.push import skopeo
from tools.images.umoci import UmociError
from tools.registry import Registry

pytestmark = pytest.mark.requires("docker-registry", "skopeo", "umoci")

LAYER_TYPES = {
    ("gzip", False): "application/vnd.oci.image.layer.v1.tar+gzip",
    ("zstd", False): "application/vnd.oci.image.layer.v1.tar+zstd",
    ("none", False): "application/vnd.oci.image.layer.v1.tar",
    ("zstd:chunked", False): "application/vnd.oci.image.layer.v1.tar+zstd",
    ("gzip", True): "application/vnd.docker.image.rootfs.diff.tar.gzip",
}


def _inspect(ref: str) -> dict[str, object]:
    data = json.loads(skopeo(["inspect", "--raw", "--tls-verify=false", f"docker://{ref}"]))
    assert isinstance(data, dict)
    return data


@pytest.mark.parametrize(("compression", "docker_v2"), list(LAYER_TYPES))
def test_push_busybox(registry: Registry, compression: str, docker_v2: bool) -> None:
    pushed = build_and_push(
        "busybox",
        registry,
        compression=compression,  # type: ignore[arg-type]
        docker_v2=docker_v2,
    )
    manifest = _inspect(pushed.ref)
    assert manifest["mediaType"] == (
        "application/vnd.docker.distribution.manifest.v2+json"
        if docker_v2
        else "application/vnd.oci.image.manifest.v1+json"
    )
    layers = manifest["layers"]
    assert isinstance(layers, list)
    assert [entry["mediaType"] for entry in layers] == [LAYER_TYPES[(compression, docker_v2)]]
    assert [layer.media_type for layer in pushed.layers] == [LAYER_TYPES[(compression, docker_v2)]]
    if compression == "zstd:chunked":
        assert any("zstd-chunked" in key for key in layers[0]["annotations"])
    assert (
        pushed.unpack(Path(registry.data_dir) / f"unpack-{compression}-{docker_v2}") / "bin/busybox"
    ).exists()


def test_docker_v2_refuses_zstd(registry: Registry) -> None:
    with pytest.raises(ValueError, match="zstd"):
        build_and_push("busybox", registry, compression="zstd", docker_v2=True)


def test_multi_platform_index(registry: Registry, tmp_path: Path) -> None:
    pushed = build_and_push("busybox-multi", registry)
    index = _inspect(pushed.ref)
    assert index["mediaType"] == "application/vnd.oci.image.index.v1+json"
    manifests = index["manifests"]
    assert isinstance(manifests, list)
    assert len(manifests) == 2
    assert [p for p, _ in pushed.manifests] == ["linux/amd64", "linux/arm64/v8"]
    for platform, digest in pushed.manifests:
        assert _inspect(f"{pushed.host}/{pushed.repo}@{digest}")["layers"]
        rootfs = pushed.unpack(tmp_path / platform.replace("/", "-"), platform=platform)
        assert (rootfs / "etc/fusesnap-platform").read_text() == f"{platform}\n"


def test_layouts_are_deterministic(tmp_path: Path) -> None:
    digests = []
    for name in ("a", "b"):
        written = write_layout(tmp_path / name, {"t": busybox_image().with_compression("zstd")})
        digests.append(written["t"][0].manifest.digest)
        config = json.loads(
            (
                tmp_path / name / "blobs" / written["t"][0].config.digest.replace(":", "/")
            ).read_bytes()
        )
        tar = busybox_image().layers[0].tar
        assert isinstance(tar, bytes)
        assert config["rootfs"]["diff_ids"] == [f"sha256:{hashlib.sha256(tar).hexdigest()}"]
    assert digests[0] == digests[1]


def test_catalog_names_resolve() -> None:
    for name in NAMES:
        if name not in ("debian", "crafted-big"):
            assert (build_layout(name) / "index.json").exists()
    with pytest.raises(KeyError):
        build_layout("no-such-image")


# -- umoci ground truth of the crafted images ------------------------------------------------


def _unpack(registry: Registry, name: str, tmp_path: Path) -> Path:
    pushed = build_and_push(name, registry)
    return pushed.unpack(tmp_path / "bundle")


def test_whiteouts(registry: Registry, tmp_path: Path) -> None:
    root = _unpack(registry, "crafted-whiteouts", tmp_path)
    assert (root / "a/keep").exists()
    assert (root / "new.txt").exists()
    assert not (root / "a/gone.txt").exists()
    assert not (root / "dir1").exists()
    assert not list(root.rglob(".wh.*"))


def test_opaque(registry: Registry, tmp_path: Path) -> None:
    root = _unpack(registry, "crafted-opaque", tmp_path)
    assert sorted(os.listdir(root / "opq")) == ["new.txt"]
    assert sorted(os.listdir(root / "other")) == ["new.txt", "old.txt"]


def test_hardlinks(registry: Registry, tmp_path: Path) -> None:
    root = _unpack(registry, "crafted-hardlinks", tmp_path)
    names = ["h/orig", "h/link1", "h/sub/link2", "h2/lower-link"]
    inodes = {(root / n).stat().st_ino for n in names}
    assert len(inodes) == 1
    assert (root / "h/orig").stat().st_nlink == 4
    assert (root / "h/alone").stat().st_nlink == 1


def test_replace(registry: Registry, tmp_path: Path) -> None:
    root = _unpack(registry, "crafted-replace", tmp_path)
    assert (root / "f2d/inside").is_file()
    assert (root / "d2f").is_file()
    assert (root / "d2f").read_text() == "now a file\n"
    assert (root / "link2dir").is_dir()
    assert not (root / "link2dir").is_symlink()


def test_xattrs(registry: Registry, tmp_path: Path) -> None:
    root = _unpack(registry, "crafted-xattrs", tmp_path)
    assert os.getxattr(root / "x/file", "user.foo") == b"bar"
    assert os.getxattr(root / "x/file", "user.bin") == b"\x00\xff\x01"
    assert os.getxattr(root / "x", "user.dir") == b"yes"
    if os.geteuid() == 0:
        assert os.getxattr(root / "x/ping", "security.capability") == CAP_NET_RAW_EP


def test_modes(registry: Registry, tmp_path: Path) -> None:
    root = _unpack(registry, "crafted-modes", tmp_path)

    def mode(p: str) -> int:
        return stat.S_IMODE((root / p).lstat().st_mode)

    assert mode("bin/suid") == 0o4755
    assert mode("bin/sgid") == 0o2755
    assert mode("bin/both") == 0o6711
    assert mode("tmp") == 0o1777
    assert mode("none") == 0
    if os.geteuid() == 0:
        assert (root / "bin/sgid").stat().st_gid == 42
        st = (root / "bigids").stat()
        assert (st.st_uid, st.st_gid) == (3_000_000, 3_000_001)


@pytest.mark.skipif(os.geteuid() != 0, reason="device nodes need root")
def test_devices(registry: Registry, tmp_path: Path) -> None:
    root = _unpack(registry, "crafted-devices", tmp_path)
    null = (root / "dev/null").lstat()
    assert stat.S_ISCHR(null.st_mode)
    assert (os.major(null.st_rdev), os.minor(null.st_rdev)) == (1, 3)
    loop = (root / "dev/loop0").lstat()
    assert stat.S_ISBLK(loop.st_mode)
    assert os.major(loop.st_rdev) == 7
    assert stat.S_ISFIFO((root / "fifo").lstat().st_mode)


def test_longnames(registry: Registry, tmp_path: Path) -> None:
    root = _unpack(registry, "crafted-longnames", tmp_path)
    assert len(LONG_FILE) > 255
    assert (root / LONG_FILE).read_text() == "deep\n"
    assert (root / LONG_COMPONENT).exists()
    assert os.readlink(root / "links/long-symlink") == LONG_TARGET
    assert (root / "links/long-hardlink").stat().st_ino == (root / LONG_FILE).stat().st_ino


def test_misc_names(registry: Registry, tmp_path: Path) -> None:
    root = _unpack(registry, "crafted-misc", tmp_path)
    assert sorted(os.listdir(root / "empty")) == ["d", "e0", "e1", "e2"]
    assert (root / "empty/e0").stat().st_size == 0
    for name in UNICODE_NAMES:
        assert (root / "names" / name).read_text() == name + "\n"


def test_malicious_layers_stay_contained(registry: Registry, tmp_path: Path) -> None:
    root = _unpack(registry, "malicious-escape", tmp_path / "escape")
    assert not (tmp_path / "escape/escape").exists()
    assert not (tmp_path / "escape2").exists()
    assert (root / "ok.txt").exists()
    pushed = build_and_push("malicious-links", registry)
    with pytest.raises(UmociError, match="hl-abs"):  # no /etc/shadow inside the rootfs
        pushed.unpack(tmp_path / "links")
    assert not Path("/tmp/pwned").exists()


def test_big_file_source_is_deterministic_with_repeats() -> None:
    src = BigFileSource(5 * (1 << 20) + 123, seed=7)
    data = src.readall()
    assert len(data) == 5 * (1 << 20) + 123
    assert data == BigFileSource(5 * (1 << 20) + 123, seed=7).readall()
    blocks = [data[i : i + (1 << 20)] for i in range(0, 4 << 20, 1 << 20)]
    assert blocks[3] == src.block(7)
    assert blocks[0] != blocks[1]


def test_big_image_small(registry: Registry, tmp_path: Path, image_cache: Path) -> None:
    pushed = build_and_push("crafted-big", registry, big_size=6 << 20)
    root = pushed.unpack(tmp_path / "bundle")
    assert (root / "big/random.bin").stat().st_size == 6 << 20
    assert (root / "big/head-copy.bin").read_bytes() == (root / "big/random.bin").read_bytes()[
        : 4 << 20
    ]
    assert big_image(6 << 20, workdir=image_cache / "work").layers[0].tar == (
        image_cache / "work" / f"big-{6 << 20}-0.tar"
    )


@pytest.mark.slow
@pytest.mark.requires("debootstrap")
def test_debian(registry: Registry, tmp_path: Path) -> None:
    pushed = build_and_push("debian", registry)
    assert len(pushed.layers) >= 2
    root = pushed.unpack(tmp_path / "bundle")
    assert stat.S_IMODE((root / "usr/bin/su").stat().st_mode) & stat.S_ISUID
    assert (root / "usr/bin/perl").stat().st_ino == (root / "usr/bin/perl5.36.0").stat().st_ino
    assert not list((root / "var/cache/apt/archives").glob("*.deb"))  # whited out
    assert os.listdir(root / "var/lib/apt/lists") == ["partial"]  # opaque
    out = subprocess.run(
        ["chroot", str(root), "/usr/bin/python3", "-c", "print(6 * 7)"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout == "42\n"
