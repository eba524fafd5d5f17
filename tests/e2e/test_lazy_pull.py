"""``fusesnap pull --lazy`` against the real registry, through the request-counting proxy.

eStargz (ctr-remote) and zstd:chunked (skopeo) layers: the lazy pull reads the TOCs only
(range requests, a small part of each blob) and stores layer records of that source with
no chunks; a following full pull fetches the missing chunks by range (about the image's
size, not twice it), and the merged tree then equals ``umoci unpack`` of the original gzip
image. A gzip image with no index anywhere: the lazy pull streams each layer once.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from fusesnap.digest import Digest
from fusesnap.image import ImageView
from fusesnap.store import open_store
from tests.e2e.cli import run
from tests.e2e.test_pull import image_blobs, stored
from tests.oracle import differences, disk_view, tree_view
from tools.faultproxy import FaultProxy, ProxyRecord
from tools.images.catalog import PushedImage, build_and_push
from tools.images.estargz import build_and_push_estargz
from tools.testenv import require

pytestmark = pytest.mark.e2e


def push(producer: str, name: str, registry) -> PushedImage:
    if producer == "zstd:chunked":
        return build_and_push(name, registry, compression="zstd:chunked")
    if os.geteuid() != 0:
        pytest.skip("ctr-remote needs a containerd, which needs root")
    require("containerd", "ctr-remote")
    return build_and_push_estargz(name, registry)


def proxied(img: PushedImage, proxy: FaultProxy) -> str:
    return img.ref.replace(img.host, proxy.host)


def layer_requests(proxy: FaultProxy, img: PushedImage) -> list[ProxyRecord]:
    """The proxy's requests for the image's layer blobs."""
    digests = {layer.digest for layer in img.layers}
    return [r for r in proxy.records
            if r.kind == "blob" and r.path.split("?")[0].rsplit("/", 1)[-1] in digests]  # fmt: skip


def compressed_size(img: PushedImage) -> int:
    return sum(layer.size for layer in img.layers)


def assert_matches_umoci(root: Path, ref: str, img: PushedImage, tmp_path: Path) -> None:
    want = disk_view(img.unpack(tmp_path / "unpacked"))
    with open_store(root) as store:
        view = ImageView.open(store, ref)
        assert differences(tree_view(view.tree(), store.chunks), want) == []


@pytest.mark.parametrize(
    ("producer", "name"),
    [("estargz", "busybox"), ("estargz", "crafted-whiteouts"),
     ("zstd:chunked", "busybox"), ("zstd:chunked", "crafted-hardlinks")],
)  # fmt: skip
def test_lazy_pull_reads_tocs_then_full_pull_completes(
    registry, faulty, tmp_path, producer, name
) -> None:
    img = push(producer, name, registry)
    ref = proxied(img, faulty)
    root = tmp_path / "store"

    out = run(root, "pull", "--lazy", ref).stdout
    toc = layer_requests(faulty, img)
    assert toc, "no TOC was read"
    assert all(r.range for r in toc), "a layer blob was fetched whole"
    per_layer = 2 if producer == "estargz" else 1  # footer + TOC, or the TOC alone
    assert len(toc) == per_layer * len(img.layers)
    toc_bytes = sum(r.bytes_sent for r in toc)
    assert toc_bytes < compressed_size(img)
    if name == "busybox":
        assert toc_bytes < compressed_size(img) // 20, (toc_bytes, compressed_size(img))
    assert f"from {'eStargz' if producer == 'estargz' else 'zstd:chunked'} TOC" in out
    with open_store(root) as store:
        total = 0
        for layer in img.layers:
            assert store.layers.info(Digest(layer.digest)).source == producer
            presence = store.layers.present_chunks(Digest(layer.digest))
            assert presence.present == 0
            total += presence.total
        assert total > 0  # (a layer of hardlinks and directories alone has no chunks)
    assert "0% (" in run(root, "layers", ref).stdout

    faulty.reset()
    run(root, "pull", ref)
    fetched = layer_requests(faulty, img)
    assert all(r.range for r in fetched), "a layer blob was fetched whole"
    full_bytes = sum(r.bytes_sent for r in fetched)
    print(f"{producer} {name}: TOCs {toc_bytes} B, then full pull {full_bytes} B, "
          f"of {compressed_size(img)} B")  # fmt: skip
    assert full_bytes <= compressed_size(img), (full_bytes, compressed_size(img))
    assert stored(root).keys() == image_blobs(img)
    assert_matches_umoci(root, ref, img, tmp_path)

    faulty.reset()
    assert "fetched 0 B" in run(root, "pull", ref).stdout
    assert layer_requests(faulty, img) == []


def test_lazy_pull_without_any_index_streams_each_layer_once(registry, faulty, tmp_path) -> None:
    img = build_and_push("crafted-whiteouts", registry)
    ref = proxied(img, faulty)
    root = tmp_path / "store"

    out = run(root, "pull", "--lazy", ref).stdout
    requests = layer_requests(faulty, img)
    assert sorted(r.path.rsplit("/", 1)[-1] for r in requests) == sorted(
        layer.digest for layer in img.layers
    )  # one request a layer
    assert sum(r.bytes_sent for r in requests) == compressed_size(img)
    assert out.count("index built by streaming the layer") == len(img.layers)
    with open_store(root) as store:
        for layer in img.layers:
            assert store.layers.info(Digest(layer.digest)).source == "built"
    assert stored(root).keys() == image_blobs(img)  # complete: the bytes came anyway

    faulty.reset()
    out = run(root, "pull", "--lazy", ref).stdout
    # The image's chain of committed snapshots is there: nothing to look up (cache rule).
    assert out.count("committed snapshot") == len(img.layers), out
    assert layer_requests(faulty, img) == []
    assert "fetched 0 B" in run(root, "pull", ref).stdout
    assert_matches_umoci(root, ref, img, tmp_path)
