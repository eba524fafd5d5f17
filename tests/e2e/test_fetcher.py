"""The lazy fetcher against the real registry, through the request-counting fault proxy:
a cold read of a small file costs a sliver of the image, every byte matches ``umoci unpack``,
transient faults are ridden out, a registry that stays down fails fast and recovery follows."""

from __future__ import annotations

import posixpath
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio

from fusesnap.digest import Digest
from fusesnap.errors import RegistryError
from fusesnap.fs import chunk_span
from fusesnap.index import Entry, EntryType, LayerIndex, build_index
from fusesnap.lazy import ChunkFetcher, open_chunk_fetcher
from fusesnap.oci import Descriptor
from fusesnap.reference import Reference
from fusesnap.registry import open_registry_client
from fusesnap.registry.retry import RetryPolicy
from fusesnap.store import open_store
from tools.faultproxy import FaultProxy
from tools.images.catalog import PushedImage, build_and_push
from tools.registry import Registry

pytestmark = pytest.mark.e2e

MiB = 1 << 20
PYTHON = "usr/bin/python3.11"


@dataclass(frozen=True)
class Indexed:
    image: PushedImage
    layers: list[LayerIndex]  # base first
    rootfs: Path  # umoci's unpack: the ground truth

    @property
    def compressed_size(self) -> int:
        return sum(layer.size for layer in self.image.layers)

    def lookup(self, path: str) -> tuple[LayerIndex, Entry]:
        """The entry the merged tree shows at ``path``, symlinks followed (upper layers win)."""
        for _ in range(40):
            for index in reversed(self.layers):
                entry = index.by_path.get(path)
                if entry is not None:
                    break
            else:
                raise FileNotFoundError(path)
            if entry.type is not EntryType.SYMLINK:
                return index, entry
            path = posixpath.normpath(posixpath.join(posixpath.dirname(path), entry.linkname))
            path = path.lstrip("/")
        raise RuntimeError(f"{path}: symlink loop")


class _FileSink:
    def __init__(self, path: Path) -> None:
        self._file = path.open("wb")

    @property
    def offset(self) -> int:
        return self._file.tell()

    async def write(self, data: bytes) -> None:
        self._file.write(data)

    async def reset(self) -> None:
        self._file.seek(0)
        self._file.truncate()

    def close(self) -> None:
        self._file.close()


async def _index_layers(img: PushedImage, workdir: Path) -> list[LayerIndex]:
    """Index every layer by streaming it once, as the no-index-anywhere path does."""
    ref = Reference.parse(img.ref)
    indexes = []
    async with open_registry_client() as client:
        for layer in img.layers:
            path = workdir / Digest(layer.digest).hex
            sink = _FileSink(path)
            try:
                desc = Descriptor(layer.media_type, Digest(layer.digest), layer.size)
                await client.download_blob(ref, desc, sink)
            finally:
                sink.close()

            def index(
                p: Path = path, digest: str = layer.digest, media_type: str = layer.media_type
            ) -> LayerIndex:
                with p.open("rb") as f:
                    return build_index(f, layer_digest=digest, media_type=media_type)

            indexes.append(await trio.to_thread.run_sync(index))
            path.unlink()
    return indexes


@pytest.fixture(scope="module")
def debian(registry: Registry, tmp_path_factory: pytest.TempPathFactory) -> Indexed:
    img = build_and_push("debian", registry)
    work = tmp_path_factory.mktemp("debian-fetcher")
    layers = trio.run(_index_layers, img, work)
    assert all(index.checkpoints is not None for index in layers)
    return Indexed(img, layers, img.unpack(work / "unpacked"))


@asynccontextmanager
async def cold_fetcher(
    debian: Indexed, proxy: FaultProxy, root: Path, *, retry: RetryPolicy | None = None
) -> AsyncIterator[ChunkFetcher]:
    """A fetcher over a fresh store, reading through the proxy."""
    ref = Reference.parse(debian.image.ref.replace(debian.image.host, proxy.host))
    with open_store(root) as store:
        async with open_registry_client(retry=retry or RetryPolicy()) as client:

            async def fetch(digest: Digest, offset: int, length: int) -> bytes:
                return await client.read_range(ref, digest, offset, length)

            async with open_chunk_fetcher(fetch, store.chunks) as fetcher:
                yield fetcher


async def read(fetcher: ChunkFetcher, debian: Indexed, path: str, size: int | None = None) -> bytes:
    index, entry = debian.lookup(path)
    refs = chunk_span(entry, 0, entry.size if size is None else size)
    got = await fetcher.get_many(index, refs)
    data = b"".join(got[r.digest] for r in refs)
    return data if size is None else data[:size]


async def test_cold_reads_fetch_a_sliver_and_match_umoci(debian, faulty, tmp_path) -> None:
    total = debian.compressed_size
    async with cold_fetcher(debian, faulty, tmp_path / "store") as fetcher:
        faulty.reset()
        os_release = await read(fetcher, debian, "etc/os-release")
        os_bytes, os_requests = faulty.bytes_sent("blob"), faulty.count("blob")
        python = await read(fetcher, debian, PYTHON, MiB)
        py_bytes = faulty.bytes_sent("blob") - os_bytes
        stats = fetcher.stats
    assert os_release == (debian.rootfs / "usr/lib/os-release").read_bytes()
    assert b"bookworm" in os_release
    assert python == (debian.rootfs / PYTHON).read_bytes()[:MiB]
    print(
        f"\nimage {total / MiB:.1f} MiB compressed; /etc/os-release: {os_requests} request(s), "
        f"{os_bytes / 1024:.0f} KiB ({100 * os_bytes / total:.2f}%); first MiB of "
        f"{PYTHON}: {py_bytes / 1024:.0f} KiB ({100 * py_bytes / total:.2f}%); {stats}"
    )
    assert os_requests == 1
    assert os_bytes < 0.02 * total
    assert py_bytes < 0.06 * total
    assert stats.bytes_fetched == faulty.bytes_sent("blob")
    assert stats.verify_failures == 0


async def test_transient_server_errors_are_ridden_out(debian, faulty, tmp_path) -> None:
    async with cold_fetcher(
        debian, faulty, tmp_path / "store", retry=RetryPolicy(attempts=4, backoff=0.05)
    ) as fetcher:
        faulty.fail_next(2, 500, kind="blob")
        data = await read(fetcher, debian, "etc/debian_version")
    assert data == (debian.rootfs / "etc/debian_version").read_bytes()
    assert [r.status for r in faulty.records if r.kind == "blob"][:3] == [500, 500, 206]


async def test_a_registry_that_stays_down_fails_fast_then_recovers(
    debian, faulty, tmp_path
) -> None:
    retry = RetryPolicy(attempts=3, backoff=0.05, max_backoff=0.2)
    async with cold_fetcher(debian, faulty, tmp_path / "store", retry=retry) as fetcher:
        faulty.fail_next(1000, 503, kind="blob")
        t0 = time.monotonic()
        with pytest.raises(RegistryError, match="503"):
            await read(fetcher, debian, "etc/os-release")
        assert time.monotonic() - t0 < 10
        assert faulty.count("blob") == 3
        faulty.reset()
        data = await read(fetcher, debian, "etc/os-release")
    assert data == (debian.rootfs / "usr/lib/os-release").read_bytes()
