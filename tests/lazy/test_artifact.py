"""The index artifact: its format, discovery through the referrers API and the fallback tag
(merged with what the tag already lists), newest first, and everything untrusted refused:
tampered blobs, another subject, an index of another layer. Against `FakeRegistry`."""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Mapping, Sequence

import pytest
import zstandard

from fusesnap import oci
from fusesnap.digest import Digest
from fusesnap.errors import LayerError, ManifestError
from fusesnap.index import LayerIndex, decode, encode
from fusesnap.lazy import AccessProfile
from fusesnap.lazy import profile as profiles
from fusesnap.oci import Descriptor
from fusesnap.pull.artifact import (
    ARTIFACT_TYPE,
    CREATED_ANNOTATION,
    EMPTY_CONFIG,
    LAYER_DIGEST_ANNOTATION,
    LAYER_INDEX_MEDIA_TYPE,
    WINDOWS_MEDIA_TYPE,
    fallback_tag,
    push_index_artifact,
)
from fusesnap.pull.artifactfind import find_index_artifact
from fusesnap.reference import Reference
from fusesnap.registry import RegistryClient
from fusesnap.registry.credentials import Credentials
from tests.lazy.conftest import REF, Connect
from tests.lazy.fakeregistry import FakeRegistry
from tests.lazy.fetcherhelpers import Layer, gzip_layer, text

REPO = REF.repository


def small_layer(seed: int) -> Layer:
    return gzip_layer([(f"f{seed}/{i}", text(5000 + i, seed * 10 + i)) for i in range(5)])


def add_image(
    fake: FakeRegistry,
    layers: Sequence[Layer],
    *,
    ref: Reference = REF,
    media_types: Sequence[str] = (),
) -> tuple[Descriptor, list[Descriptor]]:
    """Push config, layer blobs and manifest (tagged as ``ref``); (manifest, layer descriptors)."""
    config = fake.add_blob(json.dumps({
        "architecture": "amd64", "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [str(lay.index.diff_id) for lay in layers]},
    }).encode(), oci.OCI_CONFIG)  # fmt: skip
    kinds = list(media_types) or [oci.OCI_LAYER_GZIP] * len(layers)
    descs = [fake.add_blob(lay.blob, kind) for lay, kind in zip(layers, kinds, strict=True)]
    doc = {"schemaVersion": 2, "mediaType": oci.OCI_MANIFEST, "config": config.to_dict(),
           "layers": [d.to_dict() for d in descs]}  # fmt: skip
    manifest = fake.add_manifest(ref.repository, json.dumps(doc).encode(), oci.OCI_MANIFEST,
                                 tags=(str(ref.tag),))  # fmt: skip
    return manifest, descs


@pytest.fixture
def image(fake: FakeRegistry) -> tuple[Descriptor, list[LayerIndex]]:
    layers = [small_layer(1), small_layer(2)]
    manifest, _ = add_image(fake, layers)
    return manifest, [lay.index for lay in layers]


def same(a: Mapping[Digest, LayerIndex], b: Mapping[Digest, LayerIndex]) -> bool:
    """The same indexes, whether the gzip windows are carried or only named."""

    def plain(index: LayerIndex) -> LayerIndex:
        index = index.without_windows()
        cp = index.checkpoints
        if cp is None:
            return index
        points = tuple(dataclasses.replace(p, wclength=0) for p in cp.points)
        cp = dataclasses.replace(cp, points=points, windows_blob=None)
        return dataclasses.replace(index, checkpoints=cp)

    return {k: plain(v) for k, v in a.items()} == {k: plain(v) for k, v in b.items()}


def manifest_doc(fake: FakeRegistry, digest: Digest) -> dict:
    body, _ = fake.manifests[(REPO, str(digest))]
    return json.loads(body)


async def push(client: RegistryClient, image, created: str | None = None):
    manifest, indexes = image
    return await push_index_artifact(client, REF, manifest, indexes, created=created)


async def test_push_then_find_through_the_referrers_api(fake, connect: Connect, image) -> None:
    manifest, indexes = image
    async with connect() as client:
        pushed = await push(client, image)
        found = await find_index_artifact(client, REF, manifest.digest)
    assert pushed.discovery == "referrers"
    assert pushed.describe() == "the referrers API"
    assert (REPO, fallback_tag(manifest.digest)) not in fake.manifests

    doc = manifest_doc(fake, pushed.digest)
    assert doc["mediaType"] == oci.OCI_MANIFEST
    assert doc["artifactType"] == ARTIFACT_TYPE
    assert doc["config"] == {
        "mediaType": "application/vnd.oci.empty.v1+json",
        "digest": str(EMPTY_CONFIG.digest),
        "size": 2,
        "data": "e30=",
    }
    assert fake.blobs[EMPTY_CONFIG.digest] == b"{}"
    assert doc["subject"] == {"mediaType": manifest.media_type, "digest": str(manifest.digest),
                              "size": manifest.size}  # fmt: skip
    assert CREATED_ANNOTATION in doc["annotations"]
    # Per layer: its windows blob, then its index, which points into it.
    kinds = [WINDOWS_MEDIA_TYPE, LAYER_INDEX_MEDIA_TYPE]
    assert [b["mediaType"] for b in doc["layers"]] == kinds * 2
    pairs = zip(doc["layers"][::2], doc["layers"][1::2], strict=True)
    for (wblob, blob), index in zip(pairs, indexes, strict=True):
        assert blob["annotations"] == {LAYER_DIGEST_ANNOTATION: str(index.layer_digest)}
        assert wblob["annotations"] == blob["annotations"]
        pushed_index = decode(fake.blobs[blob["digest"]])
        assert pushed_index.entries == index.entries
        cp, orig = pushed_index.checkpoints, index.checkpoints
        assert cp is not None
        assert orig is not None
        assert cp.windows_blob == Digest(wblob["digest"])
        windows = fake.blobs[wblob["digest"]]
        assert not any(p.window for p in cp.points)  # only named, not carried
        for i, (p, q) in enumerate(zip(cp.points, orig.points, strict=True)):
            assert (p.coffset, p.bits, p.uoffset, p.digest) == (
                q.coffset,
                q.bits,
                q.uoffset,
                q.digest,
            )
            offset, length = cp.window_range(i)
            frame = windows[offset : offset + length]
            assert (zstandard.ZstdDecompressor().decompress(frame) if length else b"") == q.window
        assert sum(p.wclength for p in cp.points) == len(windows)

    assert found is not None
    assert (found.digest, found.discovery) == (pushed.digest, "referrers")
    assert found.indexes == {
        index.layer_digest: decode(fake.blobs[blob["digest"]])
        for index, blob in zip(indexes, doc["layers"][1::2], strict=True)
    }
    assert found.fetched_bytes >= pushed.size + pushed.index_bytes


async def test_push_takes_windows_from_the_store_and_refuses_without_them(fake, connect, image):
    manifest, indexes = image
    stripped = [index.without_windows() for index in indexes]
    windows = {d: w for index in indexes for d, w in index.checkpoints.inline_windows().items()}
    async with connect() as client:
        with pytest.raises(LayerError, match=r"gzip window sha256:\w+ is not in the store"):
            await push_index_artifact(client, REF, manifest, stripped)
        pushed = await push_index_artifact(
            client, REF, manifest, stripped, load_windows=lambda ds: {d: windows[d] for d in ds}
        )
        found = await find_index_artifact(client, REF, manifest.digest)
    assert pushed.layers == 2
    assert found is not None
    got = found.indexes[indexes[0].layer_digest].checkpoints
    assert got is not None
    assert got.windows_blob is not None


async def test_fallback_tag_is_merged_not_replaced_and_newest_wins(fake, connect, image) -> None:
    """Distribution 2.8's case: no referrers API; the tag lists every referrer."""
    fake.referrers_api = False
    manifest, indexes = image
    tag = fallback_tag(manifest.digest)
    assert tag == f"sha256-{manifest.digest.hex}"
    foreign = {"mediaType": oci.OCI_MANIFEST, "digest": str(Digest.of(b"signature")), "size": 9,
               "artifactType": "application/vnd.dev.cosign.artifact.sig.v1+json",
               "x-unknown-field": [1, 2]}  # fmt: skip
    fake.add_manifest(REPO, json.dumps({"schemaVersion": 2, "mediaType": oci.OCI_INDEX,
                                        "manifests": [foreign]}).encode(),
                      oci.OCI_INDEX, tags=(tag,))  # fmt: skip
    async with connect() as client:
        older = await push(client, image, created="2024-05-01T10:00:00.000Z")
        newer = await push(client, image, created="2025-05-01T10:00:00.000Z")
        again = await push(client, image, created="2025-05-01T10:00:00.000Z")  # same digest
        oldest = await push(client, image, created="2023-01-01T00:00:00Z")  # listed last
        found = await find_index_artifact(client, REF, manifest.digest)
    assert (older.discovery, older.tag) == ("tag", tag)
    assert newer.describe() == f"the fallback tag {tag}"
    assert again.digest == newer.digest

    body, media_type = fake.manifests[(REPO, tag)]
    listed = json.loads(body)["manifests"]
    assert media_type == oci.OCI_INDEX
    assert listed[0] == foreign  # unknown fields survive
    assert [d["digest"] for d in listed[1:]] == [older.digest, newer.digest, oldest.digest]
    for d in listed[1:]:
        assert d["artifactType"] == ARTIFACT_TYPE
        assert d["mediaType"] == oci.OCI_MANIFEST
        assert CREATED_ANNOTATION in d["annotations"]

    assert found is not None
    assert (found.digest, found.discovery) == (newer.digest, "tag")
    assert same(found.indexes, {index.layer_digest: index for index in indexes})


async def test_nothing_to_find(fake, connect, image) -> None:
    manifest, _ = image
    async with connect() as client:
        assert await find_index_artifact(client, REF, manifest.digest) is None
        fake.referrers_api = False
        assert await find_index_artifact(client, REF, manifest.digest) is None


async def test_tampered_blob_is_skipped_with_a_warning(fake, connect, image, caplog) -> None:
    manifest, indexes = image
    async with connect() as client:
        pushed = await push(client, image)
        first, second = manifest_doc(fake, pushed.digest)["layers"][1::2]  # the index blobs
        data = bytearray(fake.blobs[first["digest"]])
        data[len(data) // 2] ^= 0xFF
        fake.blobs[first["digest"]] = bytes(data)
        with caplog.at_level(logging.WARNING):
            found = await find_index_artifact(client, REF, manifest.digest)
        assert found is not None
        assert same(found.indexes, {indexes[1].layer_digest: indexes[1]})
        assert "digest mismatch" in caplog.text

        fake.blobs[second["digest"]] = fake.blobs[first["digest"]]
        assert await find_index_artifact(client, REF, manifest.digest) is None


async def test_a_bad_newest_artifact_falls_back_to_an_older_one(fake, connect, image) -> None:
    fake.referrers_api = False
    manifest, indexes = image
    async with connect() as client:
        older = await push(client, image, created="2024-01-01T00:00:00Z")
        newer = await push(client, image, created="2025-01-01T00:00:00Z")
        body, media_type = fake.manifests[(REPO, str(newer.digest))]
        fake.manifests[(REPO, str(newer.digest))] = (body.replace(b"2025", b"2026"), media_type)
        found = await find_index_artifact(client, REF, manifest.digest)
    assert found is not None
    assert found.digest == older.digest
    assert len(found.indexes) == len(indexes)


async def test_wrong_subject_and_index_of_another_layer_are_refused(
    fake, connect, image, caplog
) -> None:
    """A hand-made artifact: listed under the image's tag but about another manifest; and a
    blob annotated for layer A that holds the index of layer B."""
    fake.referrers_api = False
    manifest, indexes = image
    a, b = indexes
    other = Descriptor(oci.OCI_MANIFEST, Digest.of(b"another image"), 13)
    async with connect() as client:
        # The index of b, under a's name; and a sound index of b.
        blob_b = fake.add_blob(encode(b), LAYER_INDEX_MEDIA_TYPE)
        swapped = Descriptor(
            LAYER_INDEX_MEDIA_TYPE,
            blob_b.digest,
            blob_b.size,
            annotations={LAYER_DIGEST_ANNOTATION: str(a.layer_digest)},
        )
        honest = Descriptor(
            LAYER_INDEX_MEDIA_TYPE,
            blob_b.digest,
            blob_b.size,
            annotations={LAYER_DIGEST_ANNOTATION: str(b.layer_digest)},
        )
        annotations = {CREATED_ANNOTATION: "2025-01-01T00:00:00Z"}
        for subject, blobs in ((other, [honest]), (manifest, [swapped, honest])):
            doc = {"schemaVersion": 2, "mediaType": oci.OCI_MANIFEST,
                   "artifactType": ARTIFACT_TYPE, "config": EMPTY_CONFIG.to_dict(),
                   "layers": [d.to_dict() for d in blobs], "subject": subject.to_dict(),
                   "annotations": annotations}  # fmt: skip
            body = json.dumps(doc).encode()
            digest = await client.put_manifest(REF, body, oci.OCI_MANIFEST, tag=None)
            index_doc = {"schemaVersion": 2, "mediaType": oci.OCI_INDEX, "manifests": [
                Descriptor(oci.OCI_MANIFEST, digest, len(body), artifact_type=ARTIFACT_TYPE,
                           annotations=annotations).to_dict()]}  # fmt: skip
            await client.put_manifest(REF, json.dumps(index_doc).encode(), oci.OCI_INDEX,
                                      tag=fallback_tag(manifest.digest))  # fmt: skip
            with caplog.at_level(logging.WARNING):
                found = await find_index_artifact(client, REF, manifest.digest)
            if subject is other:
                assert found is None
                assert "its subject is not manifest" in caplog.text
            else:
                assert found is not None
                assert same(found.indexes, {b.layer_digest: b})
                assert "holds the index of" in caplog.text


async def test_only_the_wanted_layers_are_fetched(fake, connect, image) -> None:
    manifest, indexes = image
    async with connect() as client:
        pushed = await push(client, image)
        blobs = [d["digest"] for d in manifest_doc(fake, pushed.digest)["layers"]]
        fake.requests.clear()
        found = await find_index_artifact(client, REF, manifest.digest,
                                          layers=[indexes[1].layer_digest])  # fmt: skip
    assert found is not None
    assert list(found.indexes) == [indexes[1].layer_digest]
    fetched = [r.url.path.rsplit("/", 1)[-1] for r in fake.api_requests("/blobs/")]
    # The second layer's index blob only: no other index, and no windows (read by range later).
    assert [d for d in fetched if d in blobs] == [blobs[3]]


async def test_a_fallback_tag_that_is_no_index_is_not_overwritten(fake, connect, image) -> None:
    fake.referrers_api = False
    manifest, _ = image
    tag = fallback_tag(manifest.digest)
    body, media_type = fake.manifests[(REPO, str(manifest.digest))]
    fake.manifests[(REPO, tag)] = (body, media_type)
    async with connect() as client:
        with pytest.raises(ManifestError, match="not overwriting it"):
            await push(client, image)
    assert fake.manifests[(REPO, tag)] == (body, media_type)


async def test_push_has_push_scope_and_skips_blobs_already_there(fake, connect, image) -> None:
    fake.auth = "bearer"
    fake.users["alice"] = "pw"
    async with connect(credentials=Credentials(username="alice", password="pw")) as client:
        await push(client, image)
        uploads = len(fake.api_requests("/blobs/uploads/"))
        await push(client, image, created="2030-01-01T00:00:00Z")
    assert uploads == 2 * 5  # POST + PUT for two indexes, their windows and the empty config
    assert len(fake.api_requests("/blobs/uploads/")) == uploads  # nothing uploaded again
    assert "repository:team/app:pull,push" in {r.url.params["scope"] for r in fake.token_requests}


async def test_an_index_from_an_artifact_is_pushed_again_with_the_same_windows_blob(
    fake, connect, image
) -> None:
    """``index --push`` on a machine that got the indexes from an artifact: the windows are
    not local, but their blob is in the repository already."""
    manifest, indexes = image
    async with connect() as client:
        await push(client, image)
        found = await find_index_artifact(client, REF, manifest.digest)
        assert found is not None
        again = [found.indexes[i.layer_digest] for i in indexes]
        uploads = len(fake.api_requests("/blobs/uploads/"))
        pushed = await push_index_artifact(
            client, REF, manifest, again, created="2030-01-01T00:00:00Z"
        )
        assert len(fake.api_requests("/blobs/uploads/")) == uploads  # nothing new to upload
        doc = manifest_doc(fake, pushed.digest)
        wanted = {str(i.checkpoints.windows_blob) for i in again if i.checkpoints is not None}
        assert {
            b["digest"] for b in doc["layers"] if b["mediaType"] == WINDOWS_MEDIA_TYPE
        } == wanted
        del fake.blobs[Digest(next(iter(wanted)))]
        with pytest.raises(LayerError, match=r"windows blob \S+ of its index is not in"):
            await push_index_artifact(client, REF, manifest, again)


async def test_an_access_profile_travels_with_the_artifact(fake, connect, image, caplog) -> None:
    manifest, indexes = image
    first = indexes[0].entries[-1].chunks or next(e.chunks for e in indexes[0].entries if e.chunks)
    profile = AccessProfile(str(manifest.digest), tuple((0, c.digest) for c in first))
    async with connect() as client:
        with pytest.raises(ValueError, match="not this image"):
            await push_index_artifact(client, REF, manifest, indexes,
                                      profile=AccessProfile("sha256:" + "0" * 64, ()))  # fmt: skip
        pushed = await push_index_artifact(client, REF, manifest, indexes, profile=profile)
        assert pushed.profile
        found = await find_index_artifact(client, REF, manifest.digest)
        assert found is not None
        assert found.profile == profile
        # A profile blob that is not one is ignored, the indexes still used.
        doc = manifest_doc(fake, pushed.digest)
        blob = next(b for b in doc["layers"] if b["mediaType"] == profiles.MEDIA_TYPE)
        fake.blobs[blob["digest"]] = b"not json"
        with caplog.at_level(logging.WARNING):
            found = await find_index_artifact(client, REF, manifest.digest)
    assert found is not None
    assert found.profile is None
    assert len(found.indexes) == len(indexes)
    assert "access profile ignored" in caplog.text
