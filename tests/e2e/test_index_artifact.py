"""The fusesnap index artifact against the real registry (Distribution 2.8: no referrers API,
so the fallback tag ``sha256-<hex>``), through the request-counting proxy.

Store A builds the indexes (``fusesnap index REF --push``); a fresh store B then pulls the
image lazily from the artifact alone (manifest, config, artifact: no layer blob), gets the
same indexes, and a full pull completes the layers by range. A tampered artifact is
ignored with a warning and the layers are built by streaming, correctly.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from fusesnap.digest import Digest
from fusesnap.index import decode
from fusesnap.store import open_store
from tests.e2e.cli import run
from tests.e2e.test_lazy_pull import assert_matches_umoci, compressed_size, layer_requests
from tests.e2e.test_pull import image_blobs, stored
from tools.images.catalog import PushedImage, build_and_push
from tools.registry import Registry

pytestmark = pytest.mark.e2e

_PUSHED = re.compile(r"pushed index artifact (sha256:[0-9a-f]{64})")


def push_artifact(root: Path, img: PushedImage) -> Digest:
    out = run(root, "index", img.ref, "--push").stdout
    m = _PUSHED.search(out)
    assert m, out
    tag = f"sha256-{Digest(img.manifest_digest).hex}"
    assert f"discoverable through the fallback tag {tag}" in out, out
    return Digest(m.group(1))


def test_index_artifact_makes_a_cold_pull_lazy(registry, faulty, tmp_path) -> None:
    img = build_and_push("debian", registry)
    a, b = tmp_path / "a", tmp_path / "b"
    push_artifact(a, img)
    size = compressed_size(img)

    ref = img.ref.replace(registry.host, faulty.host)
    faulty.reset()
    out = run(b, "pull", "--lazy", ref).stdout
    lazy_bytes = faulty.bytes_sent()
    print(f"pull --lazy: {lazy_bytes} bytes of {size} ({100 * lazy_bytes / size:.2f}%), "
          f"{faulty.count()} requests")  # fmt: skip
    assert layer_requests(faulty, img) == [], "a layer blob was requested"
    assert lazy_bytes < size * 3 // 100
    assert out.count("index from the index artifact") == len(img.layers), out

    layers = run(b, "layers", ref).stdout
    assert layers.count("0% (0 B in 0/") == len(img.layers), layers
    with open_store(a) as sa, open_store(b) as sb:
        for layer in img.layers:
            digest = Digest(layer.digest)
            assert sb.layers.info(digest).source == "artifact"
            got, want = decode(sb.layers.index(digest)), decode(sa.layers.index(digest))
            assert got.entries == want.entries
            assert got.checkpoints is not None
            assert want.checkpoints is not None
            assert [(p.coffset, p.bits, p.uoffset, p.digest) for p in got.checkpoints.points] == [
                (p.coffset, p.bits, p.uoffset, p.digest) for p in want.checkpoints.points
            ]
            assert got.checkpoints.windows_blob is not None  # windows by range, not in the index
            assert not any(p.window for p in got.checkpoints.points)
            assert got.diff_id == want.diff_id

    faulty.reset()
    run(b, "pull", ref)
    fetched = layer_requests(faulty, img)
    full_bytes = sum(r.bytes_sent for r in fetched)
    print(f"full pull after --lazy: {full_bytes} bytes of {size} "
          f"({full_bytes / size:.3f}x) in {len(fetched)} range requests")  # fmt: skip
    assert all(r.range for r in fetched), "a layer blob was fetched whole"
    assert size * 0.9 < full_bytes < size * 1.15  # not 2x: nothing fetched twice
    assert stored(b).keys() == image_blobs(img)
    # Store A may itself have taken the indexes from an artifact (an earlier test's): the
    # truth is what umoci unpacks.
    assert_matches_umoci(b, ref, img, tmp_path)


@pytest.mark.parametrize("tamper", ["index-blob", "manifest"])
def test_tampered_artifact_falls_back_to_streaming(tmp_path, tamper) -> None:
    with Registry(tmp_path / "reg") as reg:
        img = build_and_push("crafted-whiteouts", reg)
        artifact = push_artifact(tmp_path / "a", img)
        manifest = json.loads(reg.blob_path(artifact).read_bytes())
        first = next(b for b in manifest["layers"] if "layer-index" in b["mediaType"])
        target = first["digest"] if tamper == "index-blob" else artifact
        path = reg.blob_path(target)
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0xFF
        path.write_bytes(bytes(data))

        root = tmp_path / "c"
        proc = run(root, "pull", "--lazy", img.ref)
        assert "digest mismatch" in proc.stderr, proc.stderr
        assert "WARNING" in proc.stderr
        with open_store(root) as store:
            sources = [store.layers.info(Digest(layer.digest)).source for layer in img.layers]
        if tamper == "index-blob":  # only the first layer's index is bad
            assert sources == ["built", *["artifact"] * (len(img.layers) - 1)]
        else:
            assert sources == ["built"] * len(img.layers)
        run(root, "pull", img.ref)
        assert stored(root).keys() == image_blobs(img)
        assert_matches_umoci(root, img.ref, img, tmp_path)
