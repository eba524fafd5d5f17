"""Committed snapshots of pulled images: the chain a pull records, containerd's cache rule
(a present, complete chain means nothing is fetched), and ``rmi`` letting go of the part of
a chain that nothing else uses, so that ``gc`` frees its layers."""

from __future__ import annotations

import pytest

from fusesnap.image import ImageView
from fusesnap.oci import chain_ids
from fusesnap.store import COMMITTED, open_store
from tests.e2e.cli import run
from tests.e2e.test_lazy_pull import layer_requests
from tools.images.catalog import build_and_push

pytestmark = pytest.mark.e2e


def test_pull_commits_the_chain_and_a_present_chain_fetches_nothing(
    registry, faulty, tmp_path
) -> None:
    img = build_and_push("crafted-whiteouts", registry)  # several layers
    ref = img.ref.replace(registry.host, faulty.host)
    root = tmp_path / "store"
    run(root, "pull", ref)
    with open_store(root) as store:
        chains = chain_ids(ImageView.open(store, ref).config.diff_ids)
        records = [store.snapshots.get(c) for c in chains]
    assert len(chains) == len(img.layers) > 1
    assert all(r.kind == COMMITTED for r in records)
    assert [str(r.layer) for r in records] == [layer.digest for layer in img.layers]
    listing = run(root, "snapshot", "ls").stdout
    assert all(c[7:19] in listing for c in chains), listing

    # The cache rule: the whole chain is committed and local, so no layer is asked for.
    faulty.reset()
    out = run(root, "pull", ref).stdout
    assert layer_requests(faulty, img) == []
    assert f"committed snapshot {chains[-1]} present" in out, out


def test_rmi_releases_the_chain_and_gc_frees_the_layers(registry, tmp_path) -> None:
    img = build_and_push("busybox", registry)
    root = tmp_path / "store"
    run(root, "run", "--rm", img.ref, "--", "true")
    with open_store(root) as store:
        assert store.snapshots.list()  # the image's chain, from the pull
        assert store.layers.list()
    out = run(root, "rmi", img.ref).stdout
    assert "committed snapshots" in out, out
    run(root, "gc")
    with open_store(root) as store:
        assert store.snapshots.list() == []
        assert store.layers.list() == []
        assert store.chunks.stats().count == 0
