"""``fusesnap index --push --format soci`` against the real registry: what lands there is a
SOCI index v2 as soci-snapshotter reads it, and its zTOCs describe the layers.

Everything is read back with plain HTTP calls and checked on its own terms: the image
index under the tag, the annotated manifest (same config and layers as the original), the
SOCI index manifest, each zTOC blob (digest, parsed TOC against the layer's tar, span
digests against the layer's bytes, inflating from checkpoints against the tar's bytes).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import re
import tarfile
import zlib
from pathlib import Path

import httpx
import pytest

from fusesnap.index.ztoc import parse_ztoc
from tests.e2e.cli import run
from tools.images.catalog import build_and_push

pytestmark = pytest.mark.e2e

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
SOCI_V2 = "application/vnd.amazon.soci.index.v2+json"
ACCEPT = ", ".join((OCI_INDEX, OCI_MANIFEST))
_INDEX_LINE = re.compile(r"pushed SOCI index (sha256:[0-9a-f]{64}) \((\d+) zTOC")


class _Repo:
    def __init__(self, host: str, repo: str) -> None:
        self.base = f"http://{host}/v2/{repo}"
        self.http = httpx.Client(timeout=60)

    def manifest(self, ref: str) -> tuple[str, dict]:
        r = self.http.get(f"{self.base}/manifests/{ref}", headers={"Accept": ACCEPT})
        r.raise_for_status()
        digest = "sha256:" + hashlib.sha256(r.content).hexdigest()
        if ref.startswith("sha256:"):
            assert digest == ref
        return digest, r.json()

    def blob(self, digest: str) -> bytes:
        r = self.http.get(f"{self.base}/blobs/{digest}", follow_redirects=True)
        r.raise_for_status()
        assert "sha256:" + hashlib.sha256(r.content).hexdigest() == digest
        return r.content


_KINDS = {
    tarfile.REGTYPE: "reg",
    tarfile.DIRTYPE: "dir",
    tarfile.SYMTYPE: "symlink",
    tarfile.LNKTYPE: "hardlink",
}


def _data(tar: bytes, m: tarfile.TarInfo) -> bytes:
    with tarfile.open(fileobj=io.BytesIO(tar)) as tf:
        f = tf.extractfile(m)
        assert f is not None
        return f.read()


def _check_ztoc(ztoc: bytes, layer: bytes, span: int) -> int:
    """The zTOC describes ``layer``; return how many checkpoints were inflated from."""
    z = parse_ztoc(ztoc)
    tar = gzip.decompress(layer)
    assert z.compressed_size == len(layer)
    assert z.build_tool == "fusesnap"
    with tarfile.open(fileobj=io.BytesIO(tar)) as tf:
        members = tf.getmembers()
    assert len(z.files) == len(members)
    for e, m in zip(z.files, members, strict=True):
        name = e.name.decode()
        assert name.rstrip("/") == m.name, (name, m.name)
        assert e.offset == m.offset_data, name
        assert e.size == (m.size if m.isreg() else e.size), name
        assert e.mode & 0o7777 == m.mode, name
        assert (e.uid, e.gid) == (m.uid, m.gid), name
        assert e.linkname.decode() == m.linkname, name
        assert e.type == _KINDS.get(m.type, e.type), name
        if m.isreg():
            assert tar[e.offset : e.offset + e.size] == _data(tar, m), name
    assert z.uncompressed_size <= len(tar)
    assert z.span_size == span
    assert len(z.points) == len(z.span_digests)
    assert z.points[0].uoffset == 0
    inflated = 0
    for i, p in enumerate(z.points):
        start = p.coffset - (1 if p.bits else 0)
        end = z.points[i + 1].coffset if i + 1 < len(z.points) else len(layer)
        assert z.span_digests[i] == hashlib.sha256(layer[start:end]).digest(), f"span {i}"
        want_window = bytes(max(0, 32768 - p.uoffset)) + tar[max(0, p.uoffset - 32768) : p.uoffset]
        assert p.window == want_window
        if i and not p.bits:  # Python's zlib cannot prime the odd bits; byte-aligned ones inflate
            d = zlib.decompressobj(-15, zdict=p.window)
            out = d.decompress(layer[p.coffset : p.coffset + 65536], 32768)
            assert out, f"checkpoint {i}"
            assert out == tar[p.uoffset : p.uoffset + len(out)], f"checkpoint {i}"
            inflated += 1
    return inflated


def test_soci_index_v2_of_debian(registry, tmp_path: Path) -> None:
    img = build_and_push("debian", registry, tag="soci-src")
    repo = _Repo(registry.host, img.repo)
    old_digest, old = repo.manifest(img.manifest_digest)
    big = max(img.layers, key=lambda layer: layer.size)
    small = min(img.layers, key=lambda layer: layer.size)
    assert big.size > 20 << 20 > small.size
    args = ("--span-size", "1M", "--min-layer-size", "20M")
    out = run(tmp_path / "a", "index", img.ref, "--push", "--format", "soci", *args).stdout
    print(out)
    m = _INDEX_LINE.search(out)
    assert m, out
    soci_digest, ztocs = m.group(1), int(m.group(2))
    assert ztocs == 1
    assert f"layer {small.digest[:19]}: no zTOC" in out

    tag_digest, image_index = repo.manifest("soci-src")
    assert image_index["mediaType"] == OCI_INDEX
    image_entry, soci_entry = image_index["manifests"]
    assert soci_entry["artifactType"] == SOCI_V2
    assert soci_entry["digest"] == soci_digest
    assert soci_entry["platform"] == image_entry["platform"]
    assert image_entry["platform"] == {"os": "linux", "architecture": "amd64"}
    bound = {"com.amazon.soci.image-manifest-digest": image_entry["digest"]}
    assert soci_entry["annotations"] == bound
    assert image_entry["annotations"] == {"com.amazon.soci.index-digest": soci_digest}

    _, manifest = repo.manifest(image_entry["digest"])
    assert manifest["annotations"]["com.amazon.soci.index-digest"] == soci_digest
    assert manifest["mediaType"] == OCI_MANIFEST
    assert manifest["layers"] == old["layers"]
    assert manifest["config"]["digest"] == old["config"]["digest"]
    assert image_entry["digest"] != old_digest

    _, soci = repo.manifest(soci_digest)
    assert soci["config"]["mediaType"] == SOCI_V2
    assert json.loads(repo.blob(soci["config"]["digest"])) == {}
    assert "subject" not in soci
    (ztoc_desc,) = soci["layers"]
    assert ztoc_desc["mediaType"] == "application/octet-stream"
    assert ztoc_desc["annotations"] == {
        "com.amazon.soci.image-layer-digest": big.digest,
        "com.amazon.soci.image-layer-mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
    }
    ztoc = repo.blob(ztoc_desc["digest"])
    assert len(ztoc) == ztoc_desc["size"]
    inflated = _check_ztoc(ztoc, repo.blob(big.digest), 1 << 20)
    print(f"zTOC {len(ztoc)} B for a {big.size} B layer; inflated from {inflated} checkpoints")
    assert inflated > 0

    # The SOCI-enabled image is still an image: a cold lazy pull takes its manifest, not the index.
    pulled = run(tmp_path / "b", "pull", "--lazy", img.ref).stdout
    assert image_entry["digest"] in pulled, pulled
    assert tag_digest != img.manifest_digest


def test_soci_index_v2_of_a_multi_platform_image(registry, tmp_path: Path) -> None:
    img = build_and_push("busybox-multi", registry, tag="soci-multi")
    repo = _Repo(registry.host, img.repo)
    _, original = repo.manifest("soci-multi")
    args = ("--platform", "linux/amd64", "--min-layer-size", "1K", "--tag", "soci-multi-soci")
    out = run(tmp_path / "a", "index", img.ref, "--push", "--format", "soci", *args).stdout
    m = _INDEX_LINE.search(out)
    assert m, out
    _, still = repo.manifest("soci-multi")
    assert still == original  # the source tag is left alone
    _, converted = repo.manifest("soci-multi-soci")
    entries = converted["manifests"]
    assert len(entries) == len(original["manifests"]) + 1
    amd64 = dict(img.manifests)["linux/amd64"]
    arm64 = dict(img.manifests)["linux/arm64/v8"]
    assert [e for e in entries if e["digest"] == arm64] == [
        e for e in original["manifests"] if e["digest"] == arm64
    ]
    assert all(e["digest"] != amd64 for e in entries)
    soci = [e for e in entries if e.get("artifactType") == SOCI_V2]
    assert len(soci) == 1
    assert soci[0]["platform"]["architecture"] == "amd64"
    bound = soci[0]["annotations"]["com.amazon.soci.image-manifest-digest"]
    image = next(e for e in entries if e["digest"] == bound)
    assert image["annotations"]["com.amazon.soci.index-digest"] == m.group(1)

    # Converted again: the SOCI index of that platform is replaced, not added.
    converted_ref = img.ref.rsplit(":", 1)[0] + ":soci-multi-soci"
    args = ("--platform", "linux/amd64", "--min-layer-size", "1K", "--span-size", "64K")
    out = run(tmp_path / "a", "index", converted_ref, "--push", "--format", "soci", *args).stdout
    m = _INDEX_LINE.search(out)
    assert m, out
    _, again = repo.manifest("soci-multi-soci")
    assert len(again["manifests"]) == len(original["manifests"]) + 1
    assert [e["digest"] for e in again["manifests"] if e.get("artifactType")] == [m.group(1)]


def test_nothing_to_index_is_one_clear_error(registry, tmp_path: Path) -> None:
    img = build_and_push("busybox", registry, tag="soci-none")
    proc = run(tmp_path / "a", "index", img.ref, "--push", "--format", "soci", check=False)
    assert proc.returncode != 0
    assert "no layer gets a zTOC" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    by_digest = f"{img.ref.rsplit(':', 1)[0]}@{img.manifest_digest}"
    proc = run(tmp_path / "a", "index", by_digest, "--push", "--format", "soci", check=False)
    assert proc.returncode == 2
    assert "names no tag" in proc.stderr, proc.stderr
