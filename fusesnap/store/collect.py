"""Garbage collection of a real store: `gc.mark`/`gc.sweep` wired to LMDB.

Roots are every image and every live lease's resources. Links are typed:
image -> its target and its platform manifest; a manifest or index (or OCI
artifact manifest) -> the content its descriptors name. A manifest's
``subject`` is not followed: a referrer (say, an index artifact) is kept by
its own image or lease, never by the image it refers to.

Concurrency. Marking on one snapshot and deleting later would race a pull
that starts using a blob in between (e.g. an image that shares a layer with
the one just removed). So every deletion batch re-marks inside its own write
transaction — LMDB's single writer lock means no image, lease or content can
change while it runs — and deletes only what is still unreachable. Parsed
manifests are cached by digest (content is immutable), so a re-mark only
reads image and lease records. Each batch is one transaction in which a
blob's info and segments go together: gc killed at any point leaves a
consistent store, and the next run finishes the job.

Ingests are removed last, and only those that no live lease (or image)
protects and no writer holds (a non-blocking flock says so).

Freed space is reused by LMDB; its data file does not shrink.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass

from fusesnap.digest import Digest
from fusesnap.errors import AlreadyExistsError, InvalidDigestError, ManifestError, NotFoundError
from fusesnap.oci import INDEX_TYPES, MANIFEST_TYPES, Descriptor, parse_manifest
from fusesnap.store import gc
from fusesnap.store.blobs import Txn, delete_blob, get_info, iter_infos, read_all
from fusesnap.store.env import Env
from fusesnap.store.images import get_image, iter_images
from fusesnap.store.ingest import list_ingests, remove_ingest
from fusesnap.store.leases import delete_lease, is_live, iter_leases
from fusesnap.store.records import CONTENT, IMAGE, INGEST, ContentInfo, IngestInfo, LeaseRecord
from fusesnap.store.store import Store

log = logging.getLogger(__name__)

ARTIFACT_MANIFEST = "application/vnd.oci.artifact.manifest.v1+json"
PARENT_TYPES = frozenset({*MANIFEST_TYPES, *INDEX_TYPES, ARTIFACT_MANIFEST})
DEFAULT_BATCH = 256


@dataclass(frozen=True, slots=True)
class GCResult:
    """What a collection removed (or, with ``dry_run``, would remove)."""

    removed_content: tuple[ContentInfo, ...]
    removed_leases: tuple[LeaseRecord, ...]
    removed_ingests: tuple[IngestInfo, ...]
    dry_run: bool = False

    @property
    def bytes_freed(self) -> int:
        return sum(c.size for c in self.removed_content) + sum(
            i.offset for i in self.removed_ingests
        )


class _Marker:
    """Roots and links of one store; remembers the children of each blob."""

    def __init__(self, env: Env, now: float) -> None:
        self._env = env
        self._now = now
        self._children: dict[Digest, tuple[gc.Node, ...]] = {}

    def mark(self, txn: Txn) -> set[gc.Node]:
        roots: list[gc.Node] = [(IMAGE, image.name) for image in iter_images(txn, self._env)]
        for lease in iter_leases(txn, self._env):
            if is_live(lease, self._now):
                roots.extend(r.node() for r in lease.resources)
        return gc.mark(roots, lambda node: self._refs(txn, node))

    def _refs(self, txn: Txn, node: gc.Node) -> tuple[gc.Node, ...]:
        kind, key = node
        if kind == IMAGE:
            image = get_image(txn, self._env, key)
            if image is None:
                return ()
            return ((CONTENT, image.target_digest), (CONTENT, image.manifest_digest))
        if kind != CONTENT:
            return ()
        digest = Digest(key)
        children = self._children.get(digest)
        if children is None:
            info = get_info(txn, self._env, digest)
            if info is None:
                return ()  # not cached: it may be stored before the next mark
            children = self._parse(txn, info)
            self._children[digest] = children
        return children

    def _parse(self, txn: Txn, info: ContentInfo) -> tuple[gc.Node, ...]:
        if info.media_type not in PARENT_TYPES:
            return ()
        what = f"content {info.digest.short}"
        data = read_all(txn, self._env, info)
        try:
            if info.media_type == ARTIFACT_MANIFEST:
                descriptors = _artifact_blobs(data, what)
            else:
                descriptors = parse_manifest(data, info.media_type, what=what).children()
        except ManifestError as exc:
            # A blob we cannot parse keeps nothing alive; gc must not stop.
            log.warning("gc: %s", exc)
            return ()
        return tuple((CONTENT, str(d.digest)) for d in descriptors)


def _artifact_blobs(data: bytes, what: str) -> tuple[Descriptor, ...]:
    """The ``blobs`` of an OCI 1.1-rc artifact manifest (oci.py does not
    parse that short-lived format; registries still hold some)."""
    try:
        doc = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ManifestError(f"{what}: not valid JSON ({exc})") from None
    entries = doc.get("blobs") if isinstance(doc, dict) else None
    if not isinstance(entries, list):
        raise ManifestError(f"{what}: artifact manifest has no blobs list")
    try:
        return tuple(Descriptor.from_dict(e, where=what) for e in entries)
    except InvalidDigestError as exc:
        raise ManifestError(f"{what}: {exc}") from None


def collect_garbage(
    store: Store,
    *,
    dry_run: bool = False,
    now: float | None = None,
    batch_size: int = DEFAULT_BATCH,
) -> GCResult:
    """Delete dead leases, unreachable content, and unprotected ingests.

    With ``dry_run`` nothing changes and the result lists what would go.
    ``now`` (default: the clock) decides which leases have expired.
    """
    env = store.env
    now = time.time() if now is None else now
    marker = _Marker(env, now)

    with env.txn(write=not dry_run) as txn:
        dead = [lease for lease in iter_leases(txn, env) if not is_live(lease, now)]
        if not dry_run:
            for lease in dead:
                delete_lease(txn, env, lease.id)

    with env.txn() as txn:
        marked = marker.mark(txn)
        candidates = [info for info in iter_infos(txn, env) if (CONTENT, info.digest) not in marked]

    removed: list[ContentInfo] = []
    if dry_run:
        removed = candidates
    for start in range(0, 0 if dry_run else len(candidates), batch_size):
        batch: list[ContentInfo] = []
        with env.txn(write=True) as txn:
            marked = marker.mark(txn)
            for info in candidates[start : start + batch_size]:
                if (CONTENT, info.digest) in marked:
                    continue  # a pull took it up since the first mark
                gone = delete_blob(txn, env, info.digest)
                if gone is not None:
                    batch.append(gone)
        removed.extend(batch)  # only once the transaction has committed

    with env.txn() as txn:
        marked = marker.mark(txn)
    removed_ingests: list[IngestInfo] = []
    for ingest in list_ingests(env):
        if ingest.locked or {(INGEST, ingest.digest), (CONTENT, ingest.digest)} & marked:
            continue
        if not dry_run:
            try:
                remove_ingest(env, ingest.digest)
            except (AlreadyExistsError, NotFoundError):
                continue  # a writer took it, or it was committed, since we looked
        removed_ingests.append(ingest)

    result = GCResult(tuple(removed), tuple(dead), tuple(removed_ingests), dry_run)
    log.info(
        "gc: %s %d blobs, %d leases, %d ingests (%d bytes)",
        "would remove" if dry_run else "removed",
        len(result.removed_content),
        len(result.removed_leases),
        len(result.removed_ingests),
        result.bytes_freed,
    )
    return result
