"""Which layers fusesnap can serve lazily: an image reference resolved to its indexes.

When containerd prepares a layer's snapshot with labels naming its image
(`fusesnap.containerd.labels`), the snapshotter asks `RemoteImages.resolve` for
that image: a lazy pull (`fusesnap.pull.pull`) that stores the manifest, the
config and each layer's index from the best source there is (the store, an
eStargz or zstd:chunked TOC, an index artifact, a SOCI zTOC) and builds none by
streaming a layer, records no image, and protects what it stored by a lease until the
remote snapshots that need it are committed (those are gc roots of their own:
`RemoteImages.done`), or `HOLD` seconds at most. A layer with no index anywhere
is not remote; containerd's diff service fills its snapshot instead.

An image is resolved once until then (containerd prepares its layers one after
another, each with the same labels) and once at a time: concurrent Prepares of
the same image wait for one pull (single flight).

An image whose every layer promises a TOC will, as a rule, be remote as a whole: once
the pull has its manifest and config, `RemoteImages.early` (the snapshotter's lower
mounts) is told to start the mount of the image's whole chain, whose daemon then waits
for the indexes the pull is making; if the image resolves to another top (a TOC that
turns out unusable, a failure), that mount is abandoned.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Sequence
from contextlib import suppress
from dataclasses import dataclass
from typing import Protocol

import trio

from fusesnap.digest import Digest
from fusesnap.errors import NotFoundError
from fusesnap.oci import Descriptor, chain_ids
from fusesnap.pull import pull, toc_source
from fusesnap.reference import Reference
from fusesnap.registry import RegistryOptions, open_registry_client
from fusesnap.store import Store

__all__ = ["HOLD", "EarlyMounts", "RemoteImage", "RemoteImages"]

log = logging.getLogger(__name__)

HOLD = 600.0


@dataclass(frozen=True, slots=True)
class RemoteImage:
    """An image as resolved for the snapshotter, its layers bottom first: blob digests,
    diff IDs, chain IDs, and which have an index in the store."""

    ref: Reference
    manifest: Digest
    layers: tuple[Digest, ...]
    diff_ids: tuple[Digest, ...]
    chains: tuple[str, ...]
    indexed: tuple[bool, ...]
    resolved: float
    lease: str

    @property
    def top(self) -> int:
        """The position of the highest layer that can be served lazily (-1: none)."""
        n = 0
        while n < len(self.indexed) and self.indexed[n]:
            n += 1
        return n - 1

    def position(self, layer: Digest, chain: str) -> int | None:
        """Where layer ``layer`` with chain ID ``chain`` stands in this image, if it does
        and it and every layer under it are indexed; else None."""
        for n, (digest, chain_id) in enumerate(zip(self.layers, self.chains, strict=True)):
            if digest == layer and chain_id == chain:
                return n if all(self.indexed[: n + 1]) else None
        return None


class EarlyMounts(Protocol):
    """Lower mounts started while their image is resolved (module docstring). Neither
    call may block: the pull waits."""

    def start_early(self, chain: str, source: str, manifest: Digest, depth: int) -> None: ...

    def abandon(self, chain: str) -> None: ...


class RemoteImages:
    """Image references resolved to `RemoteImage` (module docstring)."""

    def __init__(self, registry: RegistryOptions, *, hold: float = HOLD) -> None:
        self.registry = registry
        self.hold = hold
        self.early: EarlyMounts | None = None  # set by the snapshotter that mounts them
        self._lock = threading.Lock()
        self._flights: dict[str, threading.Lock] = {}
        self._resolved: dict[str, RemoteImage] = {}

    def resolve(self, store: Store, ref: Reference) -> RemoteImage:
        """(blocking) Image ``ref``, its layers' indexes in ``store``: a `FusesnapError`
        if the registry or an index fails."""
        key = str(ref)
        with self._lock:
            flight = self._flights.setdefault(key, threading.Lock())
        with flight:
            known = self._resolved.get(key)
            if known is not None and time.monotonic() - known.resolved < self.hold:
                return known
            image = self._pull(store, ref)
            with self._lock:
                self._resolved[key] = image
            return image

    def done(self, store: Store, image: RemoteImage) -> None:
        """Every layer of ``image`` that can be remote is committed: drop its lease (the
        snapshots keep what they need) and resolve it afresh next time."""
        with self._lock:
            if self._resolved.get(str(image.ref)) is image:
                del self._resolved[str(image.ref)]
        with suppress(NotFoundError):
            store.leases.delete(image.lease)

    def _pull(self, store: Store, ref: Reference) -> RemoteImage:
        lease = store.leases.create(
            expires_in=self.hold + 60,
            labels={"fusesnap/snapshotter": str(ref)},
            owner_pid=os.getpid(),
        )
        options = self.registry
        announced: list[str] = []  # the chain whose mount was started early

        def on_layers(manifest: Descriptor, layers: Sequence[tuple[Descriptor, Digest]]) -> None:
            if self.early is None or not layers or not all(toc_source(d) for d, _ in layers):
                return
            chain = chain_ids([diff_id for _, diff_id in layers])[-1]
            announced.append(chain)
            self.early.start_early(chain, str(ref), manifest.digest, len(layers))

        async def run() -> RemoteImage:
            async with open_registry_client(
                insecure_registries=options.insecure_registries,
                ca_file=options.ca_file,
                hosts_dirs=options.hosts_dirs,
            ) as client:
                result = await pull(
                    store,
                    client,
                    ref,
                    lazy=True,
                    build=False,
                    record=False,
                    lease_id=lease.id,
                    on_layers=on_layers,
                )
            return RemoteImage(
                ref=ref,
                manifest=result.manifest.digest,
                layers=tuple(layer.digest for layer in result.layers),
                diff_ids=result.diff_ids,
                chains=tuple(chain_ids(result.diff_ids)),
                indexed=tuple(o.action != "none" for o in result.outcomes),
                resolved=time.monotonic(),
                lease=lease.id,
            )

        started = time.monotonic()
        image: RemoteImage | None = None
        try:
            image = trio.run(run)
        except BaseException:
            with suppress(NotFoundError):
                store.leases.delete(lease.id)
            raise
        finally:
            if announced and self.early is not None and _top_chain(image) != announced[0]:
                self.early.abandon(announced[0])
        log.info(
            "%s: resolved in %.2fs, %d of %d layers indexed",
            ref,
            time.monotonic() - started,
            sum(image.indexed),
            len(image.layers),
        )
        return image


def _top_chain(image: RemoteImage | None) -> str | None:
    """The chain of ``image``'s top layer, if every layer of it is remote."""
    if image is None or image.top != len(image.layers) - 1:
        return None
    return image.chains[-1]
