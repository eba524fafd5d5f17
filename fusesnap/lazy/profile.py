"""Access profiles: which chunks an image's start reads, in order, to prefetch next time.

``fusesnap mount --record`` makes the daemon note, in order of first access,
every chunk that FUSE reads ask for (`Recorder`, fed by `ChunkStorage.on_access`).
At unmount it stores an `AccessProfile`::

    {"v": 1, "image": "<manifest digest>", "chunks": [[layer position, "<sha256 hex>"], ...]}

as a blob in the content store (media type `MEDIA_TYPE`, canonical JSON), held
from gc by a lease that never expires and has no owner, labelled
``fusesnap.profile=<manifest digest>`` (`save`): gc keeps what a live lease
holds, ``fusesnap lease ls`` shows it, and ``fusesnap lease rm`` forgets it. A
new profile for the same image replaces the old lease (the old blob is then
gc's). `load` finds the newest one.

``fusesnap run`` records one on its own when the image has none and is not
wholly local. ``fusesnap index REF --push`` pushes the image's profile with
its index artifact (`fusesnap.pull.artifact`), and a lazy pull that finds one
there keeps it, unless the store has a profile of its own for the image.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from contextlib import suppress
from dataclasses import dataclass

from fusesnap.digest import Digest
from fusesnap.errors import FusesnapError, NotFoundError
from fusesnap.index import LayerIndex
from fusesnap.store import CONTENT, Resource, Store

__all__ = [
    "LABEL",
    "MEDIA_TYPE",
    "AccessProfile",
    "ProfileError",
    "Recorder",
    "decode",
    "encode",
    "load",
    "save",
]

log = logging.getLogger(__name__)

MEDIA_TYPE = "application/vnd.fusesnap.access-profile.v1+json"
LABEL = "fusesnap.profile"
VERSION = 1


class ProfileError(FusesnapError):
    """A profile blob that is not a valid access profile."""


@dataclass(frozen=True, slots=True)
class AccessProfile:
    """``chunks``: (position of the layer in the manifest, raw sha256), first access first."""

    image: str
    chunks: tuple[tuple[int, bytes], ...]


def encode(profile: AccessProfile) -> bytes:
    doc = {
        "v": VERSION,
        "image": profile.image,
        "chunks": [[pos, digest.hex()] for pos, digest in profile.chunks],
    }
    return json.dumps(doc, separators=(",", ":"), sort_keys=True).encode()


def decode(data: bytes) -> AccessProfile:
    """`ProfileError` unless ``data`` is a version-1 profile."""
    try:
        doc = json.loads(data)
        if not isinstance(doc, dict) or doc.get("v") != VERSION:
            raise ProfileError(f"access profile: unsupported version {doc.get('v')!r}")
        image = doc["image"]
        if not isinstance(image, str):
            raise ProfileError("access profile: image is not a string")
        chunks: list[tuple[int, bytes]] = []
        for item in doc["chunks"]:
            pos, hexdigest = item
            if not isinstance(pos, int) or pos < 0 or not isinstance(hexdigest, str):
                raise ProfileError(f"access profile: bad chunk {item!r}")
            raw = bytes.fromhex(hexdigest)
            if len(raw) != 32:
                raise ProfileError(f"access profile: bad chunk digest {hexdigest!r}")
            chunks.append((pos, raw))
    except ProfileError:
        raise
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise ProfileError(f"access profile: {exc}") from None
    return AccessProfile(image=image, chunks=tuple(chunks))


class Recorder:
    """Chunk digests in order of first access (`ChunkStorage.on_access` calls `note`)."""

    def __init__(self) -> None:
        self._seen: dict[bytes, None] = {}

    def note(self, digest: bytes) -> None:
        if digest not in self._seen:
            self._seen[digest] = None

    def __len__(self) -> int:
        return len(self._seen)

    def profile(self, image: str, indexes: Sequence[LayerIndex]) -> AccessProfile:
        """The profile of what was noted; a chunk is attributed to the first layer
        that has it (as the mount loads it)."""
        where: dict[bytes, int] = {}
        for pos, index in enumerate(indexes):
            for entry in index.entries:
                for ref in entry.chunks:
                    where.setdefault(ref.digest, pos)
        chunks = tuple((where[d], d) for d in self._seen if d in where)
        return AccessProfile(image=image, chunks=chunks)


def save(store: Store, profile: AccessProfile) -> Digest:
    """Store ``profile`` and make it the image's profile (module docstring); its digest."""
    data = encode(profile)
    digest = Digest.of(data)
    store.content.put(data, digest=digest, media_type=MEDIA_TYPE)
    old = [le for le in store.leases.list() if le.labels.get(LABEL) == profile.image]
    lease = store.leases.create(expires_in=None, labels={LABEL: profile.image})
    store.leases.add_resource(lease.id, Resource.content(digest))
    for le in old:
        with suppress(NotFoundError):
            store.leases.delete(le.id)
    return digest


def load(store: Store, image: str) -> AccessProfile | None:
    """The newest profile recorded for manifest digest ``image``; None if there is none
    (or it cannot be read: logged)."""
    leases = sorted(
        (le for le in store.leases.list() if le.labels.get(LABEL) == image),
        key=lambda le: le.created,
        reverse=True,
    )
    for le in leases:
        for res in le.resources:
            if res.kind != CONTENT:
                continue
            try:
                profile = decode(store.content.read(Digest(res.key)))
            except (FusesnapError, ValueError) as exc:
                log.warning("access profile %s: %s", res.key, exc)
                continue
            if profile.image == image:
                return profile
    return None
