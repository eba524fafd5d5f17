"""Finding an image's SOCI index (v2 by annotation or image-index entry, v1 by referrer) and
indexing layers from its zTOCs, against `FakeRegistry`."""

from __future__ import annotations

import gzip
import json

import pytest

from fusesnap import oci
from fusesnap.digest import Digest
from fusesnap.pull.indexsource import IndexSource, resolve_layer_index
from fusesnap.pull.socifind import find_soci_index
from fusesnap.pull.socispec import (
    INDEX_DIGEST_ANNOTATION,
    LAYER_DIGEST_ANNOTATION,
    LAYER_MEDIA_TYPE_ANNOTATION,
    MANIFEST_DIGEST_ANNOTATION,
    SOCI_INDEX_V1,
    SOCI_INDEX_V2,
)
from fusesnap.store import open_store
from tests.lazy.conftest import REF, Connect
from tests.lazy.fakeregistry import FakeRegistry
from tests.lazy.sociztoc import vector

REPO = REF.repository
VECTORS = ["basic-l9", "many-l0"]


def _layers(fake: FakeRegistry) -> list[oci.Descriptor]:
    return [fake.add_blob(vector(n).blob) for n in VECTORS]


def _soci_index(
    fake: FakeRegistry, layers: list[oci.Descriptor], kind: str, **extra: object
) -> oci.Descriptor:
    empty = fake.add_blob(b"{}", kind)
    ztocs = []
    for layer, name in zip(layers, VECTORS, strict=True):
        z = fake.add_blob(vector(name).ztoc, "application/octet-stream")
        notes = {LAYER_DIGEST_ANNOTATION: str(layer.digest),
                 LAYER_MEDIA_TYPE_ANNOTATION: oci.OCI_LAYER_GZIP}  # fmt: skip
        ztocs.append({**z.to_dict(), "annotations": notes})
    doc = {"schemaVersion": 2, "mediaType": oci.OCI_MANIFEST, "config": empty.to_dict(),
           "layers": ztocs, **extra}  # fmt: skip
    return fake.add_manifest(REPO, json.dumps(doc).encode(), oci.OCI_MANIFEST)


def _image(
    fake: FakeRegistry, layers: list[oci.Descriptor], annotations: dict[str, str] | None = None
) -> oci.Descriptor:
    diff_ids = [str(Digest.of(gzip.decompress(vector(n).blob))) for n in VECTORS]
    rootfs = {"type": "layers", "diff_ids": diff_ids}
    body = json.dumps({"architecture": "amd64", "os": "linux", "rootfs": rootfs}).encode()
    config = fake.add_blob(body, oci.OCI_CONFIG)
    doc: dict[str, object] = {
        "schemaVersion": 2,
        "mediaType": oci.OCI_MANIFEST,
        "config": config.to_dict(),
        "layers": [d.to_dict() for d in layers],
    }
    if annotations:
        doc["annotations"] = annotations
    return fake.add_manifest(REPO, json.dumps(doc).encode(), oci.OCI_MANIFEST, tags=("1.0",))


async def test_v2_through_the_image_manifest_annotation(fake, connect: Connect, tmp_path) -> None:
    layers = _layers(fake)
    index = _soci_index(fake, layers, SOCI_INDEX_V2, artifactType=SOCI_INDEX_V2)
    _image(fake, layers, {INDEX_DIGEST_ANNOTATION: str(index.digest)})
    async with connect() as client:
        resolved = await client.resolve(REF)
        found = await find_soci_index(client, REF, resolved)
        assert found is not None
        assert (found.version, found.digest) == ("v2", index.digest)
        assert set(found.ztocs) == {d.digest for d in layers}
        with open_store(tmp_path / "root") as store:
            got = await resolve_layer_index(
                client, REF, layers[1], Digest.of(b"d"), store, artifact=None, soci_index=found
            )
            assert got.source is IndexSource.SOCI
            assert got.describe() == "index from SOCI zTOC"
            assert got.index.span_verified
            assert store.layers.info(layers[1].digest).source == "soci"


async def test_v2_through_an_image_index_entry(fake, connect: Connect) -> None:
    layers = _layers(fake)
    manifest = _image(fake, layers)
    index = _soci_index(fake, layers, SOCI_INDEX_V2)
    entry = oci.Descriptor(oci.OCI_MANIFEST, index.digest, index.size, artifact_type=SOCI_INDEX_V2,
                           annotations={MANIFEST_DIGEST_ANNOTATION: str(manifest.digest)},
                           platform=oci.Platform("linux", "amd64"))  # fmt: skip
    image = oci.Descriptor(manifest.media_type, manifest.digest, manifest.size,
                           platform=oci.Platform("linux", "amd64"))  # fmt: skip
    fake.add_index(REPO, [image, entry], tags=("1.0",))
    async with connect() as client:
        resolved = await client.resolve(REF, platform=oci.Platform("linux", "amd64"))
        found = await find_soci_index(client, REF, resolved)
    assert found is not None
    assert (found.version, found.discovery) == ("v2", "image index")


@pytest.mark.parametrize("api", [True, False])
async def test_v1_through_referrers(fake, connect: Connect, api: bool) -> None:
    fake.referrers_api = api
    layers = _layers(fake)
    manifest = _image(fake, layers)
    subject = {"mediaType": manifest.media_type, "digest": str(manifest.digest),
               "size": manifest.size}  # fmt: skip
    index = _soci_index(fake, layers, SOCI_INDEX_V1, subject=subject)
    if not api:
        tag = "sha256-" + manifest.digest.hex
        listed = oci.Descriptor(
            oci.OCI_MANIFEST, index.digest, index.size, artifact_type=SOCI_INDEX_V1
        )
        fake.add_index(REPO, [listed], tags=(tag,))
    async with connect() as client:
        found = await find_soci_index(client, REF, await client.resolve(REF))
    assert found is not None
    assert found.version == "v1"
    assert found.discovery == ("referrers API" if api else "fallback tag")
    assert found.digest == index.digest


async def test_a_v1_index_of_another_image_is_ignored(fake, connect: Connect) -> None:
    layers = _layers(fake)
    _image(fake, layers)
    other = {"mediaType": oci.OCI_MANIFEST, "digest": str(Digest.of(b"other")), "size": 5}
    _soci_index(fake, layers, SOCI_INDEX_V1, subject=other)
    async with connect() as client:
        assert await find_soci_index(client, REF, await client.resolve(REF)) is None


async def test_a_corrupt_ztoc_blob_falls_back_to_streaming_the_layer(
    fake, connect: Connect, tmp_path, caplog
) -> None:
    layers = _layers(fake)
    index = _soci_index(fake, layers, SOCI_INDEX_V2)
    _image(fake, layers, {INDEX_DIGEST_ANNOTATION: str(index.digest)})
    async with connect() as client:
        found = await find_soci_index(client, REF, await client.resolve(REF))
        assert found is not None
        ztoc = found.ztocs[layers[1].digest]
        fake.blobs[ztoc.digest] = bytes(ztoc.size)  # the registry serves other bytes
        diff_id = Digest.of(gzip.decompress(vector(VECTORS[1]).blob))
        with open_store(tmp_path / "root") as store:
            got = await resolve_layer_index(
                client, REF, layers[1], diff_id, store, artifact=None, soci_index=found
            )
    assert got.source is IndexSource.BUILT
    assert "digest mismatch" in got.skipped[0]
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1
    assert layers[1].digest.short in warnings[0]
