from __future__ import annotations

import json

import pytest

from fusesnap import oci
from fusesnap.digest import Digest
from fusesnap.errors import (
    DigestMismatchError,
    InvalidDigestError,
    ManifestError,
    PlatformNotFoundError,
)

D1 = "sha256:" + "1" * 64
D2 = "sha256:" + "2" * 64


def _manifest(**extra) -> bytes:
    doc = {
        "schemaVersion": 2,
        "mediaType": oci.OCI_MANIFEST,
        "config": {"mediaType": oci.OCI_CONFIG, "digest": D1, "size": 10},
        "layers": [{"mediaType": oci.OCI_LAYER_GZIP, "digest": D2, "size": 20}],
        **extra,
    }
    return json.dumps(doc).encode()


def test_parse_manifest() -> None:
    m = oci.parse_manifest(_manifest())
    assert isinstance(m, oci.Manifest)
    assert [d.digest for d in m.children()] == [D1, D2]


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"not json", "not valid JSON"),
        (b"[]", "not a JSON object"),
        (json.dumps({"schemaVersion": 1, "config": {}, "layers": []}).encode(), "schemaVersion"),
        (
            _manifest(layers=[{"mediaType": "x", "digest": "sha256:zz", "size": 1}]),
            "invalid digest",
        ),
        (_manifest(layers=[{"mediaType": "x", "digest": D2, "size": -1}]), "invalid size"),
        (_manifest(layers=[{"digest": D2, "size": 1}]), "lacks 'mediaType'"),
        (b" " * (oci.MAX_MANIFEST_SIZE + 1), "too large"),
    ],
)
def test_parse_manifest_rejects(data: bytes, match: str) -> None:
    with pytest.raises(ManifestError, match=match):
        oci.parse_manifest(data)


def test_index_platform_selection() -> None:
    idx = oci.parse_manifest(
        json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": oci.OCI_INDEX,
                "manifests": [
                    {
                        "mediaType": oci.OCI_MANIFEST,
                        "digest": D1,
                        "size": 1,
                        "platform": {"os": "linux", "architecture": "amd64"},
                    },
                    {
                        "mediaType": oci.OCI_MANIFEST,
                        "digest": D2,
                        "size": 1,
                        "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"},
                    },
                ],
            }
        ).encode()
    )
    assert isinstance(idx, oci.Index)
    assert idx.select(oci.Platform.parse("linux/amd64")).digest == D1
    assert idx.select(oci.Platform.parse("linux/arm64")).digest == D2
    with pytest.raises(PlatformNotFoundError, match="linux/amd64, linux/arm64"):
        idx.select(oci.Platform.parse("linux/s390x"))


def test_index_selection_passes_over_artifacts() -> None:
    """A SOCI index v2 sits in the image index with its image's platform, maybe first."""
    amd64 = {"os": "linux", "architecture": "amd64"}
    idx = oci.parse_manifest(
        json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": oci.OCI_INDEX,
                "manifests": [
                    {
                        "mediaType": oci.OCI_MANIFEST,
                        "digest": D2,
                        "size": 1,
                        "platform": amd64,
                        "artifactType": "application/vnd.amazon.soci.index.v2+json",
                    },
                    {"mediaType": oci.OCI_MANIFEST, "digest": D1, "size": 1, "platform": amd64},
                ],
            }
        ).encode()
    )
    assert isinstance(idx, oci.Index)
    assert idx.select(oci.Platform.parse("linux/amd64")).digest == D1


def test_layer_compression() -> None:
    assert oci.layer_compression(oci.OCI_LAYER_GZIP) == "gzip"
    assert oci.layer_compression(oci.DOCKER_LAYER_GZIP) == "gzip"
    assert oci.layer_compression(oci.OCI_LAYER_ZSTD) == "zstd"
    assert oci.layer_compression(oci.OCI_LAYER_TAR) == "none"
    with pytest.raises(ManifestError):
        oci.layer_compression("application/x-foo")


def test_digest_validation_and_verify() -> None:
    d = Digest.of(b"hello")
    d.verify(b"hello")
    with pytest.raises(DigestMismatchError, match=d.short):
        d.verify(b"hellO")
    for bad in ["sha256:abc", "md5:" + "0" * 32, "sha256:" + "G" * 64, "nocolon"]:
        with pytest.raises(InvalidDigestError):
            Digest(bad)
