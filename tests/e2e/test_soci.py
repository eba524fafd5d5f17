"""SOCI indexes against the real registry (Distribution 2.8: v1 through the fallback tag),
through the counting proxy: an image of the zTOC test vectors' layers with a SOCI index of
the golden zTOCs mounts lazily, matches ``umoci unpack`` path for path, and reading one file
moves less than its layer. A zTOC that does not parse is passed over for another source; a
span that does not match its digest is EIO, never wrong bytes. The Debian test image with
the SOCI index ``fusesnap index --push --format soci`` wrote mounts lazily through it."""

from __future__ import annotations

import hashlib
import io
import tarfile
from pathlib import Path

import pytest

from fusesnap.index import EntryType
from tests.e2e.cli import mounted, run
from tests.e2e.sociimage import push_soci_image
from tests.lazy.sociztoc import Vector, vector, with_span_digest
from tests.oracle import differences, disk_view
from tools.faultproxy import FaultProxy
from tools.images.catalog import build_and_push

pytestmark = pytest.mark.e2e

SOCI = "index from SOCI zTOC"
# Layers with zTOCs (several spans each but basic), and one without (soci skips small ones).
WITH_ZTOC = ["basic-l9", "large-compressible-l1", "many-l0", "incompressible-l9"]
WITHOUT = "single"


def _push(registry, tmp_path: Path, version: str, tag: str, ztocs: dict[str, bytes] | None = None):
    layers: list[tuple[Vector, bytes | None]] = [
        (vector(n), (ztocs or {}).get(n, vector(n).ztoc)) for n in WITH_ZTOC
    ]
    layers.append((vector(WITHOUT), None))
    return push_soci_image(
        registry.host, "soci/vectors", tag, layers, version=version, layout_dir=tmp_path / tag
    )


def _blob_bytes(proxy: FaultProxy, digest: str) -> int:
    return sum(
        r.bytes_sent
        for r in proxy.records
        if r.kind == "blob" and r.path.split("?")[0].endswith(digest)
    )


def _differences(mnt: Path, rootfs: Path) -> list[str]:
    """Path for path, but for directories no layer lists (the root, ``big``): their times are
    the unpacker's own."""
    got, want = disk_view(mnt), disk_view(rootfs)
    listed = set()
    for name in [*WITH_ZTOC, WITHOUT]:
        with tarfile.open(fileobj=io.BytesIO(vector(name).blob)) as tf:
            listed |= {m.name.strip("/") for m in tf}
    for path in set(want) - listed:
        if want[path][0] is EntryType.DIR:
            want.pop(path)
            got.pop(path, None)
    return differences(got, want)


@pytest.mark.parametrize("version", ["v2", "v1"])
def test_a_soci_index_mounts_lazily_and_matches_umoci(registry, faulty, tmp_path, version) -> None:
    img = _push(registry, tmp_path, version, f"golden-{version}")
    ref = img.ref.replace(registry.host, faulty.host)
    root = tmp_path / "store"
    out = run(root, "pull", "--lazy", ref).stdout
    asked = [r.path for r in faulty.records if "/manifests/" in r.path]
    assert any(p.endswith(img.index_digest) for p in asked), asked
    assert out.count(SOCI) == len(WITH_ZTOC), out
    assert "index built by streaming the layer" in out  # the layer without a zTOC
    for layer, ztoc in img.ztocs.items():
        assert _blob_bytes(faulty, layer) == 0, "a layer with a zTOC was fetched at pull"
        assert _blob_bytes(faulty, ztoc) > 0
    layers = run(root, "layers", ref).stdout
    assert layers.count(SOCI) == len(WITH_ZTOC), layers

    rootfs = img.unpack(tmp_path / "unpacked")
    big = next(d for d in img.layers if d["digest"] in img.ztocs and d["size"] > 70_000)
    with mounted(root, ref, tmp_path / "mnt") as mnt:
        faulty.reset()
        data = (mnt / "big/part-0.log").read_bytes()
        moved = _blob_bytes(faulty, str(big["digest"]))
        print(f"read 2.5 MB file: {moved} of its layer's {big['size']} bytes")
        assert data == (rootfs / "big/part-0.log").read_bytes()
        assert 0 < moved < int(big["size"]) * 3 // 4  # one 4 MiB span of three
        assert _differences(mnt, rootfs) == []
    # A new mount inflates the spans the first one stored: no layer bytes move.
    faulty.reset()
    with mounted(root, ref, tmp_path / "mnt") as mnt:
        assert (mnt / "big/part-0.log").read_bytes() == (rootfs / "big/part-0.log").read_bytes()
        stats = run(root, "stats", str(mnt)).stdout
        assert "fetched:   0 B in 0 range requests" in stats, stats
        assert "SOCI spans inflated from the store" in stats, stats
    assert _blob_bytes(faulty, str(big["digest"])) == 0
    if version == "v1":  # a full pull streams the zTOC layers and indexes them itself
        run(root, "pull", ref)
        layers = run(root, "layers", ref).stdout
        assert SOCI not in layers, layers
        assert layers.count("100% (") == len(WITH_ZTOC) + 1, layers


def test_a_broken_ztoc_falls_back_and_a_bad_span_is_eio(registry, faulty, tmp_path) -> None:
    many, big = vector("many-l0"), vector("large-compressible-l1")
    bad_span = with_span_digest(big.ztoc, 1, bytes(32))
    img = _push(registry, tmp_path, "v2", "broken", {"many-l0": many.ztoc[:5000], **{
        "large-compressible-l1": bad_span}})  # fmt: skip
    ref = img.ref.replace(registry.host, faulty.host)
    root = tmp_path / "store"
    proc = run(root, "pull", "--lazy", ref)
    assert proc.stdout.count(SOCI) == len(WITH_ZTOC) - 1, proc.stdout
    warning = [line for line in proc.stderr.splitlines() if "SOCI zTOC" in line]
    assert len(warning) == 1, proc.stderr
    assert hashlib.sha256(many.blob).hexdigest()[:12] in warning[0]
    assert "malformed zTOC" in warning[0]
    assert "Traceback" not in proc.stderr

    rootfs = img.unpack(tmp_path / "unpacked")
    with mounted(root, ref, tmp_path / "mnt") as mnt:
        # The truncated zTOC's layer was indexed by streaming it: all there, all right.
        assert differences(disk_view(mnt / "many"), disk_view(rootfs / "many")) == []
        # part-0 lies in span 0, whose digest is right; part-2 in span 1, whose is not.
        assert (mnt / "big/part-0.log").read_bytes() == (rootfs / "big/part-0.log").read_bytes()
        with pytest.raises(OSError, match="Input/output error"):
            (mnt / "big/part-2.log").read_bytes()
        with pytest.raises(OSError, match="Input/output error"):
            (mnt / "big/part-2.log").read_bytes()  # still: failures are not remembered
        log = "".join(p.read_text() for p in (root / "mounts").rglob("daemon.log"))
        assert "zTOC span 1" in log, log
        assert "digest mismatch" in log


def _one_file_of(layer: Path, rootfs: Path) -> tuple[str, int]:
    """A regular file of gzip tar ``layer`` that the merged tree shows as the layer has it,
    from 256 KiB to 4 MiB (the largest such), and its size."""
    best: tuple[str, int] | None = None
    with tarfile.open(layer, mode="r:gz") as tf:
        for m in tf:
            if not m.isreg() or not 256 << 10 <= m.size <= 4 << 20:
                continue
            if best is not None and m.size <= best[1]:
                continue
            path = rootfs / m.name.lstrip("./")
            f = tf.extractfile(m)
            assert f is not None
            if path.is_file() and not path.is_symlink() and path.read_bytes() == f.read():
                best = (m.name.lstrip("./"), m.size)
    assert best is not None, f"no file of 256 KiB to 4 MiB in {layer.name}"
    return best


def test_debian_mounts_lazily_through_its_own_soci_index(registry, faulty, tmp_path) -> None:
    # A repository of its own: no fusesnap index artifact of this image anywhere (it would win).
    img = build_and_push("debian", registry, repo="soci-own/debian", tag="soci")
    out = run(tmp_path / "writer", "index", img.ref, "--push", "--format", "soci").stdout
    assert "pushed SOCI index" in out, out
    big = max(img.layers, key=lambda layer: layer.size)
    ref = img.ref.replace(registry.host, faulty.host)
    rootfs = img.unpack(tmp_path / "unpacked")
    path, size = _one_file_of(img.layout_dir / "blobs" / "sha256" / big.digest[7:], rootfs)

    root = tmp_path / "store"  # empty: the mount pulls lazily
    faulty.reset()
    with mounted(root, ref, tmp_path / "mnt") as mnt:
        assert _blob_bytes(faulty, big.digest) == 0, "the big layer was fetched at mount"
        layers = run(root, "layers", ref).stdout
        line = next(x for x in layers.splitlines() if big.digest[7:19] in x)
        assert SOCI in line, layers
        data = (mnt / path).read_bytes()
        moved = _blob_bytes(faulty, big.digest)
        print(f"read {path} ({size} B): {moved} of its layer's {big.size} bytes")
        assert data == (rootfs / path).read_bytes()
        assert 0 < moved < big.size
        assert differences(disk_view(mnt), disk_view(rootfs)) == []
