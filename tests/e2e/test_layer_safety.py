"""Hostile and broken layers are refused with one clear line and leave nothing visible;
identical content is stored once."""

from __future__ import annotations

import gzip
import hashlib
import io
import tarfile
from pathlib import Path

import pytest

from fusesnap.store import Store, open_store
from tests.e2e.cli import run
from tests.e2e.rawpush import RawLayer, push_raw_image
from tools.images.busybox import busybox_image
from tools.images.catalog import build_and_push
from tools.images.layout import Image, Layer, write_layout
from tools.images.push import push_layout

pytestmark = pytest.mark.e2e

GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
TAR = "application/vnd.oci.image.layer.v1.tar"


def _tar(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def assert_refused(root: Path, ref: str, needle: str, *args: str) -> str:
    proc = run(root, "pull", *args, ref, check=False)
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("fusesnap: error: ")
    assert needle in lines[0], lines[0]
    # Nothing partial is visible: no image, no layer; gc leaves an empty chunk store.
    assert run(root, "images", "-q").stdout.strip() == ""
    run(root, "gc")
    with open_store(root) as store:
        assert list(store.layers.list()) == []
        assert store.chunks.stats().count == 0
        assert store.content.ingests() == []
    return lines[0]


@pytest.mark.parametrize(
    ("name", "needle"),
    [("malicious-escape", "escapes the layer root"), ("malicious-links", "escapes")],
)
def test_malicious_catalog_images_are_refused(registry, tmp_path, name, needle) -> None:
    img = build_and_push(name, registry)
    line = assert_refused(tmp_path / "store", img.ref, needle)
    assert img.layers[0].digest[:19] in line  # the message names the layer


def test_decompression_bomb_beyond_the_size_limit(registry, tmp_path) -> None:
    pattern = hashlib.sha512(b"pattern").digest() * 16  # 1 KiB that gzip shrinks ~100:1
    tar = _tar({"big": pattern * (64 << 10)})
    blob = gzip.compress(tar, mtime=0)
    assert len(blob) < 2 << 20
    ref = push_raw_image(registry.host, "bad/bomb", "v1", [RawLayer(blob, GZIP, _sha(tar))])
    line = assert_refused(tmp_path / "store", ref, "uncompressed size exceeds limit",
                          "--max-layer-size", "16M")  # fmt: skip
    assert "16777216 bytes" in line
    run(tmp_path / "ok", "pull", "--max-layer-size", "1G", ref)  # within a higher limit: fine


def test_decompression_bomb_beyond_the_ratio_limit(registry, tmp_path) -> None:
    tar = _tar({"zeros": bytes(128 << 20)})
    blob = gzip.compress(tar, mtime=0)
    assert len(blob) < 1 << 20  # ~1000:1
    ref = push_raw_image(registry.host, "bad/zeros", "v1", [RawLayer(blob, GZIP, _sha(tar))])
    assert_refused(tmp_path / "store", ref, "compression ratio exceeds limit")


def test_truncated_gzip_layer(registry, tmp_path) -> None:
    tar = _tar({"a": b"x" * 300_000, "b": b"y" * 300_000})
    blob = gzip.compress(tar, mtime=0)[:-100]
    ref = push_raw_image(registry.host, "bad/truncated", "v1", [RawLayer(blob, GZIP, _sha(tar))])
    assert_refused(tmp_path / "store", ref, "truncated gzip stream")


def test_garbage_after_a_tar_header(registry, tmp_path) -> None:
    good = _tar({"first": b"1" * 1000})
    tar = good[:1536] + bytes(range(256)) * 4 + b"\0" * 1024
    ref = push_raw_image(registry.host, "bad/garbage", "v1", [RawLayer(tar, TAR, _sha(tar))])
    assert_refused(tmp_path / "store", ref, "invalid tar header")


def test_hardlink_to_a_file_no_layer_has(registry, tmp_path) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("innocent")
        info.type = tarfile.LNKTYPE
        info.linkname = "/etc/shadow"
        tar.addfile(info)
    layer = buf.getvalue()
    ref = push_raw_image(registry.host, "bad/hardlink", "v1", [RawLayer(layer, TAR, _sha(layer))])
    assert_refused(tmp_path / "store", ref, "innocent")


def test_diff_id_that_lies(registry, tmp_path) -> None:
    tar = _tar({"a": b"honest"})
    lie = _sha(b"something else")
    ref = push_raw_image(registry.host, "bad/diffid", "v1", [RawLayer(tar, TAR, lie)])
    assert_refused(tmp_path / "store", ref, "diff_id")


def test_images_sharing_a_base_layer_store_its_chunks_once(registry, tmp_path) -> None:
    base = busybox_image().layers[0]
    tops = [_tar({f"app{i}/data.bin": bytes([i]) * 2_000_000}) for i in (1, 2)]
    refs = []
    for i, top in enumerate(tops, 1):
        layout = tmp_path / f"layout{i}"
        write_layout(layout, {"latest": Image([base, Layer(top)])})
        push_layout(layout, "latest", registry.host, f"shared/app{i}", dest_tag="v1")
        refs.append(f"{registry.host}/shared/app{i}:v1")

    root = tmp_path / "store"
    run(root, "pull", refs[0])
    with open_store(root) as store:
        first = store.chunks.stats()
        base_chunks = sum(1 for _ in store.layers.chunk_digests(store.layers.list()[0].digest))
        windows_before = _windows(store)
    run(root, "pull", refs[1])
    with open_store(root) as store:
        both = store.chunks.stats()
        every = {
            d for layer in store.layers.list() for d in store.layers.chunk_digests(layer.digest)
        }
        windows = _windows(store)
        new_windows = windows - windows_before
    # The second image adds only its own top layer's chunks: app2/data.bin, 2 MB of one byte
    # value in two 1 MiB chunks that compress to almost nothing, and the gzip windows of that
    # layer's checkpoints (32 KiB each, as repetitive). The ~1 MB base is not stored again.
    assert len(new_windows) <= 2
    assert both.count - first.count == 2 + len(new_windows)
    assert both.stored_bytes - first.stored_bytes < 10_000
    assert first.stored_bytes > 400_000  # the base's busybox binary really is in there
    assert len(every | windows) == both.count
    assert base_chunks > 0


def _windows(store: Store) -> set[bytes]:
    """The gzip window digests every stored layer names (kept in the chunk store)."""
    out: set[bytes] = set()
    for info in store.layers.list():
        packed = store.layers.get(info.digest).windows
        out.update(packed[i : i + 32] for i in range(0, len(packed), 32))
    return out
