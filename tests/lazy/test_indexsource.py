"""Index sources best first, and the pull around them: the store, an index artifact, a TOC
that turns out unusable (passed over with a warning), the streaming build; then a full pull
that fetches only the missing chunks by range (or the whole blob for plain zstd).
Against `FakeRegistry` and a real store."""

from __future__ import annotations

import dataclasses
import io
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
import zstandard

from fusesnap import oci
from fusesnap.digest import Digest
from fusesnap.errors import DigestMismatchError
from fusesnap.index import TOC_DIGEST_ANNOTATION, build_index, decode
from fusesnap.index.zstdchunked import POSITION_ANNOTATIONS
from fusesnap.lazy import open_chunk_fetcher
from fusesnap.oci import Descriptor
from fusesnap.pull import pull
from fusesnap.pull.artifact import ArtifactIndexes, push_index_artifact
from fusesnap.pull.indexsource import IndexSource, resolve_layer_index
from fusesnap.store import Store, collect_garbage, open_store
from fusesnap.termui import human_size
from tests.lazy.conftest import REF, Connect
from tests.lazy.fakeregistry import FakeRegistry
from tests.lazy.fetcherhelpers import (
    Layer,
    MiB,
    frame_layer,
    frame_layout_files,
    gzip_layer,
    sample_files,
    sha,
)
from tests.lazy.test_artifact import add_image, small_layer


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with open_store(tmp_path / "root") as s:
        yield s


def artifact_of(*layers: Layer) -> ArtifactIndexes:
    return ArtifactIndexes(Digest.of(b"artifact"), "tag",
                           {lay.index.layer_digest: lay.index for lay in layers})  # fmt: skip


def layer_gets(fake: FakeRegistry, *layers: Descriptor) -> list[str | None]:
    """The Range header (None: whole blob) of every GET of these layer blobs."""
    paths = {f"/blobs/{d.digest}" for d in layers}
    return [r.headers.get("range") for r in fake.requests
            if r.method == "GET" and any(r.url.path.endswith(p) for p in paths)]  # fmt: skip


async def test_store_then_artifact_sources(fake, connect: Connect, store: Store) -> None:
    lay = small_layer(1)
    _, (desc,) = add_image(fake, [lay])
    async with connect() as client:
        got = await resolve_layer_index(client, REF, desc, lay.index.diff_id, store,
                                        artifact=artifact_of(lay))  # fmt: skip
        assert got.source is IndexSource.ARTIFACT
        assert got.describe() == "index from the index artifact"
        assert got.index == lay.index.without_windows()
        info = store.layers.info(desc.digest)
        assert (info.source, info.diff_id, info.size) == ("artifact", lay.index.diff_id, desc.size)
        presence = store.layers.present_chunks(desc.digest)
        assert presence.present == 0 < presence.total == len(lay.index.chunk_digests())
        # Stored with its gzip windows moved to the chunk store, named by digest.
        assert decode(store.layers.index(desc.digest)) == lay.index.without_windows()
        assert lay.index.checkpoints is not None
        windows = lay.index.checkpoints.inline_windows()
        assert windows
        assert store.chunks.get_many(windows) == windows

        again = await resolve_layer_index(client, REF, desc, lay.index.diff_id, store,
                                          artifact=None)  # fmt: skip
    assert again.source is IndexSource.STORE
    assert again.index == lay.index.without_windows()
    assert layer_gets(fake, desc) == []


@pytest.mark.parametrize("wrong", ["diff_id", "layer", "size"])
async def test_a_mismatching_artifact_index_is_passed_over(
    fake, connect: Connect, store: Store, caplog, wrong
) -> None:
    lay, other = small_layer(1), small_layer(2)
    _, (desc,) = add_image(fake, [lay])
    index = {
        "diff_id": dataclasses.replace(lay.index, diff_id=other.index.diff_id),
        "layer": other.index,
        "size": dataclasses.replace(lay.index, compressed_size=desc.size + 1),
    }[wrong]
    artifact = ArtifactIndexes(Digest.of(b"a"), "tag", {desc.digest: index})
    announced: list[str] = []
    async with connect() as client:
        with caplog.at_level(logging.WARNING):
            got = await resolve_layer_index(
                client,
                REF,
                desc,
                lay.index.diff_id,
                store,
                artifact=artifact,
                announce=announced.append,
            )
    assert got.source is IndexSource.BUILT
    assert "ignoring the index artifact's index" in caplog.text
    assert len(got.skipped) == 1
    assert "index artifact" in got.skipped[0]
    assert announced == [f"building index: streaming {human_size(desc.size)}"]
    assert got.index.entries == lay.index.entries
    assert got.fetched_bytes == desc.size
    assert layer_gets(fake, desc) == [None]  # streamed once
    assert store.layers.info(desc.digest).source == "built"
    presence = store.layers.present_chunks(desc.digest)
    assert presence.present == presence.total


@pytest.mark.parametrize("kind", ["estargz", "zstd:chunked"])
async def test_an_unusable_toc_falls_back_to_streaming(
    fake, connect: Connect, store: Store, caplog, kind
) -> None:
    """A layer that claims a TOC it does not have (a plain gzip / zstd blob)."""
    if kind == "estargz":
        lay = small_layer(3)
        media_type, annotations = oci.OCI_LAYER_GZIP, {TOC_DIGEST_ANNOTATION: str(sha(b"toc"))}
    else:
        lay = zstd_layer(small_layer(3))
        media_type = oci.OCI_LAYER_ZSTD
        annotations = {POSITION_ANNOTATIONS[1]: f"{len(lay.blob) - 40}:30:100:1"}
    _, (desc,) = add_image(fake, [lay], media_types=[media_type])
    desc = dataclasses.replace(desc, annotations=annotations)
    async with connect() as client:
        with caplog.at_level(logging.WARNING):
            got = await resolve_layer_index(client, REF, desc, lay.index.diff_id, store,
                                            artifact=None)  # fmt: skip
    assert got.source is IndexSource.BUILT
    assert f"cannot use its {kind} TOC" in caplog.text
    assert got.skipped[0].startswith(f"{kind} TOC: ")
    assert layer_gets(fake, desc)[-1] is None  # the TOC ranges, then the whole blob once
    assert got.fetched_bytes == desc.size


async def test_a_streamed_layer_must_match_the_diff_id(fake, connect, store: Store) -> None:
    lay = small_layer(4)
    _, (desc,) = add_image(fake, [lay])
    async with connect() as client:
        with pytest.raises(DigestMismatchError, match="diff_id"):
            await resolve_layer_index(client, REF, desc, sha(b"not it"), store, artifact=None)
    assert not store.layers.exists(desc.digest)


def zstd_layer(base: Layer) -> Layer:
    blob = zstandard.ZstdCompressor().compress(base.tar)
    index = build_index(io.BytesIO(blob), layer_digest=sha(blob),
                        media_type=oci.OCI_LAYER_ZSTD)  # fmt: skip
    return Layer(blob, base.tar, index)


def frame_image_layer() -> Layer:
    lay = frame_layer(frame_layout_files(), "gzip")
    return dataclasses.replace(lay, index=dataclasses.replace(lay.index, diff_id=sha(b"frames")))


async def test_lazy_pull_then_full_pull_fetches_only_what_is_missing(
    fake, connect: Connect, store: Store
) -> None:
    """Three layers with indexes in an artifact: gzip with checkpoints (ranges), a frame
    layout (ranges), plain zstd (no random access: the whole blob)."""
    fake.referrers_api = False
    gz = gzip_layer(sample_files(), spacing=MiB)
    frames = frame_image_layer()
    zst = zstd_layer(small_layer(5))
    layers = [gz, frames, zst]
    manifest, descs = add_image(
        fake, layers, media_types=[oci.OCI_LAYER_GZIP, oci.OCI_LAYER_GZIP, oci.OCI_LAYER_ZSTD]
    )
    async with connect() as client:
        await push_index_artifact(client, REF, manifest, [lay.index for lay in layers])
        fake.requests.clear()
        lazy = await pull(store, client, REF, lazy=True)
        assert [o.action for o in lazy.outcomes] == ["artifact"] * 3
        assert lazy.artifact is not None
        assert layer_gets(fake, *descs) == []
        assert store.images.get(str(REF)).manifest_digest == manifest.digest
        for desc in descs:
            assert store.layers.present_chunks(desc.digest).present == 0
        # gc keeps the lazily pulled layers: the image points at them
        assert collect_garbage(store).removed_layers == ()

        # A read fetches one file of the gzip layer; the full pull fetches the rest.
        async def fetch(digest: Digest, offset: int, length: int) -> bytes:
            return await client.read_range(REF, digest, offset, length)

        async with open_chunk_fetcher(fetch, store.chunks) as fetcher:
            entry = gz.index.by_path["big/text1.txt"]
            await fetcher.get_many(gz.index, entry.chunks)
        read = store.layers.present_chunks(descs[0].digest).present
        assert 0 < read < store.layers.present_chunks(descs[0].digest).total

        fake.requests.clear()
        full = await pull(store, client, REF)
    assert [o.action for o in full.outcomes] == ["ranges", "ranges", "download"]
    gets = layer_gets(fake, descs[0]) + layer_gets(fake, descs[1])
    assert gets
    assert all(gets)
    assert layer_gets(fake, descs[2]) == [None]
    assert full.fetched_bytes < sum(d.size for d in descs) * 1.3
    for desc, lay in zip(descs, layers, strict=True):
        presence = store.layers.present_chunks(desc.digest)
        assert presence.present == presence.total
        for ref in lay.refs:
            assert store.chunks.get(ref.digest) == lay.truth(ref)
    assert store.layers.info(descs[2].digest).source == "built"  # re-indexed from the blob
    assert store.leases.list() == []

    fake.requests.clear()
    async with connect() as client:
        again = await pull(store, client, REF)
    assert [o.action for o in again.outcomes] == ["complete"] * 3
    assert layer_gets(fake, *descs) == []
