"""A lazy fetcher wired to a registry: what a lazy mount and ``cat`` read through."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fusesnap.digest import Digest
from fusesnap.lazy import ChunkFetcher, ChunkStorage, FetchLimits, open_chunk_fetcher
from fusesnap.reference import Reference
from fusesnap.registry import RegistryOptions, open_registry_client

__all__ = ["open_registry_fetcher"]


@asynccontextmanager
async def open_registry_fetcher(
    ref: Reference,
    chunks: ChunkStorage,
    *,
    registry: RegistryOptions | None = None,
    limits: FetchLimits | None = None,
) -> AsyncIterator[ChunkFetcher]:
    """A `ChunkFetcher` reading image ``ref``'s blobs from its registry (a client of its
    own, open as long as the block)."""
    options = registry or RegistryOptions()
    async with open_registry_client(
        insecure_registries=options.insecure_registries,
        ca_file=options.ca_file,
        hosts_dirs=options.hosts_dirs,
    ) as client:

        async def fetch_range(digest: Digest, offset: int, length: int) -> bytes:
            return await client.read_range(ref, digest, offset, length)

        async with open_chunk_fetcher(fetch_range, chunks, limits=limits) as fetcher:
            yield fetcher
