"""Pulled images, seen through fusesnap's merged tree, against ``umoci unpack`` of the same
images: every path's type, mode, owner, size, mtime, link target, device, xattrs, hardlink
grouping and content must agree."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from fusesnap.image import ImageView
from fusesnap.store import open_store
from tests.e2e.cli import run
from tests.oracle import differences, disk_view, tree_view
from tools.images.catalog import build_and_push

pytestmark = pytest.mark.e2e

CRAFTED = ["crafted-whiteouts", "crafted-opaque", "crafted-hardlinks", "crafted-replace",
           "crafted-xattrs", "crafted-modes", "crafted-devices", "crafted-longnames",
           "crafted-misc"]  # fmt: skip


def check_against_umoci(registry, tmp_path: Path, name: str, **push) -> int:
    img = build_and_push(name, registry, **push)
    root = tmp_path / "store"
    run(root, "pull", img.ref, timeout=900)
    want = disk_view(img.unpack(tmp_path / "unpacked"))
    with open_store(root) as store:
        view = ImageView.open(store, img.ref)
        got = tree_view(view.tree(), store.chunks)
    assert differences(got, want) == []
    assert list(got) == list(want)  # same paths in the same order, nothing extra
    return len(got)


@pytest.mark.parametrize("name", CRAFTED)
def test_crafted_images_match_umoci(registry, tmp_path, name) -> None:
    check_against_umoci(registry, tmp_path, name)


@pytest.mark.parametrize("compression", ["gzip", "zstd", "none"])
def test_busybox_matches_umoci(registry, tmp_path, compression) -> None:
    assert check_against_umoci(registry, tmp_path, "busybox", compression=compression) > 10


@pytest.mark.slow
def test_debian_matches_umoci(registry, tmp_path) -> None:
    assert check_against_umoci(registry, tmp_path, "debian") > 5000


@pytest.mark.slow
def test_300mb_file_matches_umoci(registry, tmp_path) -> None:
    assert check_against_umoci(registry, tmp_path, "crafted-big", big_size=300 * 1024 * 1024) > 1


def test_cli_ls_cat_tree_layers_diff(registry, tmp_path) -> None:
    bb = build_and_push("busybox", registry)
    wh = build_and_push("crafted-whiteouts", registry)
    root = tmp_path / "store"
    run(root, "pull", bb.ref)
    run(root, "pull", wh.ref)
    rootfs = bb.unpack(tmp_path / "bb")

    assert run(root, "ls", bb.ref, "/").stdout.split() == sorted(os.listdir(rootfs))
    long = run(root, "ls", "-l", bb.ref, "/bin").stdout.splitlines()
    assert any(line.startswith("-rwxr-xr-x") and line.endswith(" busybox") for line in long)
    assert any(line.endswith("sh -> busybox") or " sh -> " in line for line in long)

    out = run(root, "cat", bb.ref, "/etc/passwd").stdout
    assert out == (rootfs / "etc/passwd").read_text()

    paths = run(root, "tree", bb.ref).stdout.split()
    assert paths[0] == "/"
    assert set(paths[1:]) == {"/" + p for p in _all_paths(rootfs)}
    files = run(root, "tree", "--type", "f", bb.ref, "/bin").stdout.split()
    assert files == ["/bin/busybox"]

    layers = run(root, "layers", wh.ref).stdout
    assert "100%" in layers
    assert len([ln for ln in layers.splitlines() if ln[:1].isdigit()]) == len(wh.layers)

    top = run(root, "ls", "--layer", "-1", wh.ref, "/").stdout
    assert "(whiteout)" in top or "(opaque" in top

    diff = run(root, "diff", bb.ref, wh.ref)
    assert "added" in diff.stderr
    assert "D /bin" in diff.stdout

    missing = run(root, "cat", bb.ref, "/no/such/file", check=False)
    assert missing.returncode == 1
    assert missing.stderr.strip() == "fusesnap: error: path /no/such/file: not found"


def _all_paths(rootfs: Path) -> list[str]:
    from tests.oracle import walk_sorted

    return walk_sorted(rootfs)


def test_symlink_with_a_0644_header_is_0777_in_ls_and_umoci(registry, tmp_path) -> None:
    img = build_and_push("crafted-modes", registry)
    root = tmp_path / "store"
    run(root, "pull", img.ref)
    rootfs = img.unpack(tmp_path / "unpacked")
    assert os.lstat(rootfs / "link-0644").st_mode & 0o7777 == 0o777
    listing = run(root, "ls", "-l", img.ref, "/").stdout.splitlines()
    line = next(ln for ln in listing if ln.endswith("link-0644 -> exec"))
    assert line.startswith("lrwxrwxrwx ")
