"""`push_soci_index` with an in-memory registry: which layers get a zTOC, what is pushed,
and the errors (the real registry is in tests/e2e/test_soci_push.py)."""

from __future__ import annotations

import gzip
import io
import json
import tarfile
from pathlib import Path

import pytest

from fusesnap import oci
from fusesnap.digest import Digest
from fusesnap.errors import DigestMismatchError, LayerError, ManifestError
from fusesnap.index.ztoc import parse_ztoc
from fusesnap.pull import SociOptions, push_soci_index
from fusesnap.pull.socispec import INDEX_DIGEST_ANNOTATION, SOCI_INDEX_V2
from fusesnap.reference import Reference
from fusesnap.registry import Resolved

VECTORS = Path(__file__).parent.parent / "fixtures" / "soci-ztoc"
REF = Reference.parse("127.0.0.1:5000/app:v1")
AMD64 = {"os": "linux", "architecture": "amd64"}


class FakeRegistry:
    def __init__(self, layers: list[tuple[bytes, str]], *, lie: bool = False) -> None:
        self.blobs: dict[str, bytes] = {}
        self.manifests: dict[str, bytes] = {}
        self.tags: dict[str, str] = {}
        descs = []
        for data, media_type in layers:
            d = str(Digest.of(data))
            self.blobs[d] = b"x" + data[1:] if lie else data
            descs.append({"mediaType": media_type, "digest": d, "size": len(data)})
        config = json.dumps({"architecture": "amd64", "os": "linux",
                             "rootfs": {"type": "layers", "diff_ids": []}}).encode()  # fmt: skip
        self.blobs[str(Digest.of(config))] = config
        self.manifest = json.dumps({
            "schemaVersion": 2, "mediaType": oci.DOCKER_MANIFEST,
            "config": {"mediaType": oci.DOCKER_CONFIG, "digest": str(Digest.of(config)),
                       "size": len(config)},
            "layers": descs,
            "annotations": {"keep": "me"},
        }).encode()  # fmt: skip

    async def resolve(self, ref: Reference, *, platform: object = None) -> Resolved:
        desc = oci.Descriptor(oci.DOCKER_MANIFEST, Digest.of(self.manifest), len(self.manifest))
        parsed = oci.parse_manifest(self.manifest, oci.DOCKER_MANIFEST)
        assert isinstance(parsed, oci.Manifest)
        return Resolved(desc, self.manifest, desc, self.manifest, parsed, None)

    async def download_blob(self, ref: Reference, desc: oci.Descriptor, sink) -> None:
        await sink.write(self.blobs[str(desc.digest)])

    async def get_blob(self, ref: Reference, desc: oci.Descriptor) -> bytes:
        return self.blobs[str(desc.digest)]

    async def blob_exists(self, ref: Reference, digest: Digest) -> bool:
        return str(digest) in self.blobs

    async def put_blob(self, ref: Reference, data: bytes, digest: Digest) -> None:
        assert Digest.of(data) == digest
        self.blobs[str(digest)] = data

    async def put_manifest(
        self, ref: Reference, data: bytes, media_type: str, *, tag: str | None
    ) -> Digest:
        digest = Digest.of(data)
        assert json.loads(data)["mediaType"] == media_type
        self.manifests[str(digest)] = data
        if tag:
            self.tags[tag] = str(digest)
        return digest

    def doc(self, digest: str) -> dict:
        return json.loads(self.manifests[digest])


def _layer(name: str) -> bytes:
    return (VECTORS / name).read_bytes()


async def test_layers_over_the_threshold_get_a_ztoc_and_the_image_is_bound() -> None:
    big, small = _layer("large-compressible-l6.tar.gz"), _layer("basic-l9.tar.gz")
    zstd = b"(\xb5/\xfd" + bytes(100)
    reg = FakeRegistry([(big, oci.DOCKER_LAYER_GZIP), (small, oci.OCI_LAYER_GZIP),
                        (zstd, oci.OCI_LAYER_ZSTD)])  # fmt: skip
    lines: list[str] = []
    pushed = await push_soci_index(
        reg,  # type: ignore[arg-type]
        REF,
        options=SociOptions(span=1 << 20, min_layer_size=len(small) + 1, build_tool="t"),
        on_step=lines.append,
    )
    assert (pushed.ztocs, pushed.skipped, pushed.tag) == (1, 2, "v1")
    assert any("no zTOC (not gzip" in line for line in lines), lines
    assert any("no zTOC (" in line and "fetched whole" in line for line in lines), lines

    index = reg.doc(reg.tags["v1"])
    assert index["mediaType"] == oci.OCI_INDEX
    image, soci = index["manifests"]
    assert image["platform"] == soci["platform"] == AMD64
    assert soci["artifactType"] == SOCI_INDEX_V2
    manifest = reg.doc(image["digest"])
    assert manifest["annotations"] == {"keep": "me", INDEX_DIGEST_ANNOTATION: soci["digest"]}
    assert manifest["mediaType"] == oci.OCI_MANIFEST
    assert manifest["config"]["mediaType"] == oci.OCI_CONFIG
    assert manifest["layers"] == json.loads(reg.manifest)["layers"]
    (ztoc_desc,) = reg.doc(soci["digest"])["layers"]
    assert ztoc_desc["annotations"]["com.amazon.soci.image-layer-mediaType"] == (
        oci.DOCKER_LAYER_GZIP
    )
    z = parse_ztoc(reg.blobs[ztoc_desc["digest"]])
    assert z.compressed_size == len(big)
    assert z.build_tool == "t"
    assert z.span_size == 1 << 20
    assert len(z.points) == len(z.span_digests) > 1  # ~8 MiB of tar


async def test_a_layer_soci_would_refuse_is_skipped_with_a_line() -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT,
                      pax_headers={"comment": "global"}) as tf:  # fmt: skip
        tf.addfile(tarfile.TarInfo("a"))
    odd = gzip.compress(buf.getvalue(), mtime=0)
    good = _layer("many-l6.tar.gz")
    reg = FakeRegistry([(odd, oci.OCI_LAYER_GZIP), (good, oci.OCI_LAYER_GZIP)])
    lines: list[str] = []
    pushed = await push_soci_index(
        reg,  # type: ignore[arg-type]
        REF,
        options=SociOptions(min_layer_size=1),
        on_step=lines.append,
    )
    assert (pushed.ztocs, pushed.skipped) == (1, 1)
    assert any("global PAX header" in line for line in lines), lines


async def test_nothing_to_index_and_no_tag_and_a_lying_blob_are_errors() -> None:
    small = _layer("basic-l9.tar.gz")
    with pytest.raises(LayerError, match="no layer gets a zTOC"):
        await push_soci_index(FakeRegistry([(small, oci.OCI_LAYER_GZIP)]), REF,  # type: ignore[arg-type]
                              options=SociOptions())  # fmt: skip
    with pytest.raises(ManifestError, match="no tag"):
        await push_soci_index(FakeRegistry([(small, oci.OCI_LAYER_GZIP)]),  # type: ignore[arg-type]
                              Reference.parse("127.0.0.1:5000/app@sha256:" + "1" * 64),
                              options=SociOptions())  # fmt: skip
    reg = FakeRegistry([(small, oci.OCI_LAYER_GZIP)], lie=True)
    with pytest.raises(DigestMismatchError):
        await push_soci_index(reg, REF, options=SociOptions(min_layer_size=1))  # type: ignore[arg-type]
    assert not reg.manifests  # nothing pushed
