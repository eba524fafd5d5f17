"""eStargz and zstd:chunked images written by the real producers, read lazily from the real
registry: the TOC alone (a small fraction of each blob), every chunk fetched by its frame
range and verified, and the merged tree against ``umoci unpack`` of the original gzip image.

Producers: ``ctr-remote image convert --estargz`` / ``--zstdchunked`` (stargz-snapshotter,
against a private containerd: `tools.images.estargz`) and ``skopeo copy
--dest-compress-format zstd:chunked`` (`tools.images.catalog`).
"""

from __future__ import annotations

import io
import os
import tarfile
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from fusesnap.digest import Digest
from fusesnap.errors import NotFoundError
from fusesnap.fs import MergedTree
from fusesnap.index import TOC_DIGEST_ANNOTATION, LayerIndex, decode, encode
from fusesnap.index.toc import extract_chunk
from fusesnap.index.zstdchunked import POSITION_ANNOTATIONS
from fusesnap.oci import Descriptor, ImageConfig, Manifest
from fusesnap.pull import read_estargz_index, read_zstdchunked_index
from fusesnap.reference import Reference
from fusesnap.registry import RegistryClient, open_registry_client
from tests.oracle import differences, disk_view, tree_view
from tools.images.catalog import PushedImage, build_and_push
from tools.images.estargz import build_and_push_estargz, convert_to_estargz
from tools.images.layout import read_json_blob, resolve_tag
from tools.images.push import push_tar_layers, skopeo

pytestmark = pytest.mark.requires("docker-registry", "skopeo", "umoci")

AS_ROOT = os.geteuid() == 0
IMAGES = ["busybox", "crafted-whiteouts", "crafted-opaque", "crafted-hardlinks",
          "crafted-replace", "crafted-xattrs", "crafted-modes", "crafted-devices",
          "crafted-longnames", "crafted-misc"]  # fmt: skip
# Owners, devices and security.* xattrs need root to unpack; the rest of these do not.
NEEDS_ROOT = {"crafted-xattrs", "crafted-modes", "crafted-devices"}
PRODUCERS = ["estargz", "zstd:chunked", "zstd:chunked/ctr-remote"]


def needs_ctr_remote() -> None:
    if not AS_ROOT:
        pytest.skip("ctr-remote needs a containerd, which needs root")
    from tools.testenv import require

    require("containerd", "ctr-remote")


def push(producer: str, name: str, registry, **kw) -> PushedImage:
    if producer == "zstd:chunked":
        return build_and_push(name, registry, compression="zstd:chunked")
    needs_ctr_remote()
    return build_and_push_estargz(name, registry, zstdchunked=producer != "estargz", **kw)


class Chunks:
    """A dict-backed `ChunkSource` that `tree_view` reads the files from."""

    def __init__(self) -> None:
        self.data: dict[bytes, bytes] = {}

    def get(self, digest: bytes) -> bytes:
        try:
            return self.data[digest]
        except KeyError:
            raise NotFoundError(f"chunk {digest.hex()[:12]}: not found") from None


@dataclass
class Counted:
    """A fetch that counts requests and bytes."""

    fetch: Callable[[int, int], Awaitable[bytes]]
    requests: int = 0
    nbytes: int = 0
    ranges: list[tuple[int, int]] = field(default_factory=list)

    async def __call__(self, offset: int, length: int) -> bytes:
        self.requests += 1
        self.nbytes += length
        self.ranges.append((offset, length))
        return await self.fetch(offset, length)


@dataclass
class Read:
    indexes: list[LayerIndex]
    counted: list[Counted]
    blob_sizes: list[int]


async def read_indexes(client: RegistryClient, image: str) -> Read:
    """The index of every layer of ``image`` (``HOST/REPO:TAG``), read through counted fetches."""
    ref = Reference.parse(image)
    resolved = await client.resolve(ref)
    manifest = resolved.parsed
    assert isinstance(manifest, Manifest)
    config = ImageConfig.parse(await client.get_blob(ref, manifest.config))
    out = Read([], [], [])
    for layer, diff_id in zip(manifest.layers, config.diff_ids, strict=True):
        counted = Counted(partial(client.read_range, ref, layer.digest))
        if TOC_DIGEST_ANNOTATION in layer.annotations and layer.media_type.endswith("gzip"):
            idx = await read_estargz_index(counted, layer=layer, diff_id=diff_id)
        else:
            assert any(k in layer.annotations for k in POSITION_ANNOTATIONS), layer.annotations
            idx = await read_zstdchunked_index(counted, layer=layer, diff_id=diff_id)
        out.indexes.append(idx)
        out.counted.append(counted)
        out.blob_sizes.append(layer.size)
    return out


async def fetch_all_chunks(client: RegistryClient, image: str, read: Read) -> Chunks:
    """Every chunk of every file: fetch its frame range, decompress, slice, verify."""
    ref = Reference.parse(image)
    chunks = Chunks()
    for idx in read.indexes:
        for e in idx.entries:
            for c in e.chunks:
                assert c.framed
                assert c.clength > 0
                data = await client.read_range(ref, idx.layer_digest, c.coffset, c.clength)
                chunks.data[c.digest] = extract_chunk(idx.compression, data, c, what=e.path)
    return chunks


@pytest.mark.parametrize("producer", PRODUCERS)
@pytest.mark.parametrize("name", IMAGES)
async def test_lazy_index_matches_umoci_unpack(registry, tmp_path: Path, producer, name) -> None:
    if name in NEEDS_ROOT and not AS_ROOT:
        pytest.skip("owners, devices and security.* xattrs need root to unpack")
    img = push(producer, name, registry)
    async with open_registry_client() as client:
        read = await read_indexes(client, img.ref)
        chunks = await fetch_all_chunks(client, img.ref, read)
    for idx, counted, size in zip(read.indexes, read.counted, read.blob_sizes, strict=True):
        assert idx.compression == idx.source == producer.split("/")[0]
        assert decode(encode(idx)) == idx
        # Footer and TOC only: two requests for eStargz, one for zstd:chunked.
        assert counted.requests == (2 if idx.compression == "estargz" else 1)
        if name == "busybox":
            assert counted.nbytes < size // 100, (counted.nbytes, size)
    tree = MergedTree.build(read.indexes)
    want = disk_view(img.unpack(tmp_path / "unpacked"))
    got = tree_view(tree, chunks)
    assert differences(got, want) == []
    assert list(got) == list(want)


async def test_estargz_chunks_and_prefetch_landmark(registry, tmp_path: Path) -> None:
    """Small chunks (many per file, fixed size) and prioritized files before a
    ``.prefetch.landmark``: the landmark is hidden, the files before it are the prefetch set."""
    needs_ctr_remote()
    first = ["etc/passwd", "bin/busybox"]
    img = build_and_push_estargz("busybox", registry, chunk_size=64 << 10, prioritized=first)
    async with open_registry_client() as client:
        read = await read_indexes(client, img.ref)
        chunks = await fetch_all_chunks(client, img.ref, read)
    (idx,) = read.indexes
    assert idx.prefetch == tuple(first)
    assert not {".prefetch.landmark", ".no.prefetch.landmark"} & set(idx.by_path)
    busybox = idx.by_path["bin/busybox"]
    assert len(busybox.chunks) == -(-busybox.size // (64 << 10))
    assert {c.length for c in busybox.chunks[:-1]} == {64 << 10}
    assert idx.chunk_size == 64 << 10
    assert read.counted[0].nbytes < read.blob_sizes[0] // 50
    want = disk_view(img.unpack(tmp_path / "unpacked"))
    assert differences(tree_view(MergedTree.build(read.indexes), chunks), want) == []


async def test_chunk_digests_are_of_uncompressed_bytes_and_dedupe_across_formats(
    registry,
) -> None:
    """The digests every producer writes name the same uncompressed bytes: a file's chunk
    in eStargz is the chunk store object of the same file in skopeo's zstd:chunked."""
    needs_ctr_remote()
    got: dict[str, dict[str, bytes]] = {}
    for producer in PRODUCERS:
        img = push(producer, "crafted-misc", registry)
        async with open_registry_client() as client:
            read = await read_indexes(client, img.ref)
        got[producer] = {e.path: e.chunks[0].digest for idx in read.indexes
                         for e in idx.entries if len(e.chunks) == 1}  # fmt: skip
    assert got["estargz"] == got["zstd:chunked"] == got["zstd:chunked/ctr-remote"]
    assert len(got["estargz"]) > 5


async def test_diff_id_is_the_callers(registry) -> None:
    img = push("zstd:chunked", "crafted-whiteouts", registry)
    async with open_registry_client() as client:
        ref = Reference.parse(img.ref)
        manifest = (await client.resolve(ref)).parsed
        assert isinstance(manifest, Manifest)
        layer = manifest.layers[0]
        fake = Digest("sha256:" + "7" * 64)
        idx = await read_zstdchunked_index(
            partial(client.read_range, ref, layer.digest), layer=layer, diff_id=fake
        )
    assert idx.diff_id == fake
    assert idx.layer_digest == layer.digest
    assert idx.compressed_size == layer.size


async def test_subsecond_mtimes(registry, tmp_path: Path) -> None:
    """zstd:chunked keeps nanoseconds; ctr-remote rounds eStargz's ``modtime`` to the
    nearest second (so .5 and up show one second later than the tar, and umoci, say)."""
    needs_ctr_remote()
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name, mtime in (("a", "1700000000.7"), ("b", "1700000000.2")):
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.pax_headers = 1, float(mtime), {"mtime": mtime}
            tf.addfile(info, io.BytesIO(b"x"))
    repo = f"{registry.host}/fusesnap-test/mtimes"
    push_tar_layers([out.getvalue()], registry.host, "fusesnap-test/mtimes", "gzip")
    convert_to_estargz(f"{repo}:gzip", f"{repo}:estargz")
    # Through a layout: pushing to the registry that has the gzip blob, skopeo would reuse it.
    skopeo(["copy", "--quiet", "--src-tls-verify=false", "--dest-compress",
            "--dest-compress-format=zstd:chunked", f"docker://{repo}:gzip",
            f"oci:{tmp_path / 'zc'}:latest"])  # fmt: skip
    async with open_registry_client() as client:
        esgz = await read_indexes(client, f"{repo}:estargz")
    (esgz_index,) = esgz.indexes
    times = {e.path: (e.mtime, e.mtime_nsec) for e in esgz_index.entries}
    assert times == {"a": (1700000001, 0), "b": (1700000000, 0)}

    layout = tmp_path / "zc"
    manifest: Any = read_json_blob(layout, resolve_tag(layout, "latest").digest)
    layer = Descriptor.from_dict(manifest["layers"][0], where="test")
    blob = (layout / "blobs" / "sha256" / layer.digest.hex).read_bytes()

    async def fetch(offset: int, length: int) -> bytes:
        return blob[offset : offset + length]

    zc = await read_zstdchunked_index(fetch, layer=layer, diff_id=layer.digest)
    times = {e.path: (e.mtime, e.mtime_nsec) for e in zc.entries}
    assert times == {"a": (1700000000, 700_000_000), "b": (1700000000, 200_000_000)}
