"""What a lazy mount fetches in the background once it is ready, and how far it got.

In order: the eStargz landmark files (`LayerIndex.prefetch`), then the image's
recorded access profile (`fusesnap.lazy.profile`) in recorded order, then, with
``all``, every chunk. Best effort: failures are counted and logged; a read of a
chunk still on its way waits for it rather than asking again.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import trio

from fusesnap.errors import FusesnapError
from fusesnap.index import ChunkRef, Entry, LayerIndex
from fusesnap.lazy import profile as profiles
from fusesnap.lazy.chunks import LazyChunks

__all__ = ["PrefetchPlan", "run_prefetch"]

log = logging.getLogger(__name__)


@dataclass(slots=True)
class PrefetchPlan:
    """What a mount fetches in the background once ready, and how far it got (``stats``)."""

    mode: str = "auto"
    profile: profiles.AccessProfile | None = None
    startup: bool = False  # a container's root: what every start reads may come ahead
    state: str = "idle"  # idle -> running -> done; "done" at once when all is local
    landmark_chunks: int = 0
    profile_chunks: int = 0
    already_stored: int = 0
    fetched: int = 0
    failed: int = 0
    opened_files: int = 0  # files fetched whole when opened
    linked_files: int = 0  # of which: named by an opened ELF object (its loader's next opens)
    startup_files: int = 0  # of which: what every container start reads (fewer with a profile)
    runtime_files: int = 0  # of which: what an opened language runtime reads as it starts

    def wants_startup_files(self, lazy: LazyChunks) -> bool:
        """Whether a container's root mount should fetch all that every container start
        reads (`startup`, ``auto``): when there is nothing better to go by, no access
        profile and no landmark files (what containerd reads comes ahead anyway)."""
        return (
            self.startup
            and self.mode == "auto"
            and self.profile is None
            and (not lazy.has_landmarks)
        )

    def snapshot(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "state": self.state,
            "profile": self.profile is not None,
            "landmark_chunks": self.landmark_chunks,
            "profile_chunks": self.profile_chunks,
            "already_stored": self.already_stored,
            "fetched": self.fetched,
            "failed": self.failed,
            "opened_files": self.opened_files,
            "linked_files": self.linked_files,
            "startup_files": self.startup_files,
            "runtime_files": self.runtime_files,
        }


_PROFILE_BATCH = 64


def _profile_batches(
    lazy: LazyChunks, plan: PrefetchPlan
) -> Iterator[tuple[LayerIndex, list[ChunkRef]]]:
    """The profile's chunks in recorded order, in batches of consecutive chunks of one
    layer (counted in ``plan.profile_chunks``)."""
    assert plan.profile is not None
    batch: list[ChunkRef] = []
    batch_index: LayerIndex | None = None
    for position, digest in plan.profile.chunks:
        located = lazy.locate(position, digest)
        if located is None:
            continue
        index, ref = located
        if batch and (index is not batch_index or len(batch) >= _PROFILE_BATCH):
            assert batch_index is not None
            yield batch_index, batch
            batch = []
        batch_index = index
        batch.append(ref)
        plan.profile_chunks += 1
    if batch:
        assert batch_index is not None
        yield batch_index, batch


async def run_prefetch(lazy: LazyChunks, plan: PrefetchPlan) -> None:
    """In the background of a ready mount: landmark files, then the access profile's
    chunks in recorded order (batches of consecutive chunks of one layer), then, for
    ``all``, every chunk. Best effort: failures are counted and logged."""
    assert lazy.fetcher is not None
    fetcher = lazy.fetcher
    plan.state = "running"

    async def fetch(index: LayerIndex, items: Sequence[Entry | ChunkRef], what: str) -> None:
        try:
            result = await fetcher.prefetch(index, items)
        except FusesnapError as exc:
            plan.failed += len(items)
            log.warning("prefetch (%s) of layer %s: %s", what, index.layer_digest.short, exc)
            return
        plan.already_stored += result.already_stored
        plan.fetched += result.fetched
        plan.failed += result.failed
        if result.failed:
            log.warning("prefetch (%s) of layer %s: %s", what, index.layer_digest.short, result)

    for index, entries in lazy.landmarks():
        plan.landmark_chunks += len({r.digest for e in entries for r in e.chunks})
        await fetch(index, entries, "landmarks")
    if plan.profile is not None:
        # All at once, in recorded order: the fetcher's request slots bound the parallelism,
        # and a read of a chunk on its way waits for it rather than asking again.
        async with trio.open_nursery() as nursery:
            for index, batch in _profile_batches(lazy, plan):
                nursery.start_soon(fetch, index, batch, "profile")
    if plan.mode == "all":
        for index, refs in lazy.by_layer():
            await fetch(index, refs, "all")
    plan.state = "done"
    log.info("prefetch done: %s", plan.snapshot())
