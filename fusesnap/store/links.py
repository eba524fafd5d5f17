"""The store's gc graph: roots and typed links, read from LMDB (the
algorithm is in `gc`, the sweeping in `collect`).

Roots are every image, every live lease's resources, and (`snapshots.gc_roots`)
every committed snapshot's ("layer", digest) and container's ("content",
manifest). Links::

    ("image", name)        -> ("content", target), ("content", platform manifest)
    ("content", index)     -> ("content", manifest) for each entry
    ("content", manifest)  -> ("content", config), and for each layer
                              descriptor ("content", digest) and ("layer", digest)
    ("content", artifact)  -> ("content", blob) for each of its blobs
    ("layer", digest)      -> every chunk and gzip window its record lists
                              (leaves: raw sha256 keys in one set, see `gc`)

A layer is usually stored as a layer record plus chunks, not as a blob;
the ("content", digest) link keeps a layer blob stored as content too. A
manifest's ``subject`` is not followed: a referrer (say, an index artifact)
is kept by its own image or lease, never by the image it refers to.

One `Marker` serves every re-mark of a collection, so it caches what
cannot change under it: parsed manifests by digest (content is immutable),
and which layers' chunk lists (by their sha256) are already in the marked
chunk set. A re-mark thus reads image, lease and layer headers only.

While a live lease holds ``("layer", d)`` and ``d`` has no record yet,
`Marks.hold` says so, and `collect` deletes no chunk (see there).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass

from fusesnap.digest import Digest
from fusesnap.errors import InvalidDigestError, ManifestError, StoreError
from fusesnap.oci import INDEX_TYPES, MANIFEST_TYPES, Descriptor, Manifest, parse_manifest
from fusesnap.store import gc, layers
from fusesnap.store.blobs import Txn, get_info, read_all
from fusesnap.store.env import Env
from fusesnap.store.images import get_image, iter_images
from fusesnap.store.leases import is_live, iter_leases
from fusesnap.store.records import CONTENT, IMAGE, LAYER, ContentInfo
from fusesnap.store.schema import LAYER_CHUNKS_PART, LAYER_WINDOWS_PART
from fusesnap.store.snapshots import gc_roots as snapshot_roots

log = logging.getLogger(__name__)

ARTIFACT_MANIFEST = "application/vnd.oci.artifact.manifest.v1+json"
PARENT_TYPES = frozenset({*MANIFEST_TYPES, *INDEX_TYPES, ARTIFACT_MANIFEST})


@dataclass(frozen=True, slots=True)
class Marks:
    """What one mark reached: nodes, chunk digests, and (if not empty) why
    no chunk may be deleted now."""

    nodes: set[gc.Node]
    chunks: set[bytes]
    hold: str


class Marker:
    """Roots and links of one store; remembers the children of each blob
    and which layers' chunks are already in the marked chunk set."""

    def __init__(self, env: Env, now: float) -> None:
        self._env = env
        self._now = now
        self._children: dict[Digest, tuple[gc.Node, ...]] = {}
        # Grows only during one collection: a chunk marked once stays
        # marked, which can only spare too much, never delete too much.
        self._chunks: set[bytes] = set()
        self._chunk_lists: dict[str, tuple[bytes, bytes]] = {}  # layer -> lists marked
        self._corrupt = ""

    def mark(self, txn: Txn) -> Marks:
        roots: list[gc.Node] = [(IMAGE, image.name) for image in iter_images(txn, self._env)]
        roots.extend(snapshot_roots(txn, self._env))  # snapshots' layers, containers' manifests
        hold = ""
        for lease in iter_leases(txn, self._env):
            if not is_live(lease, self._now):
                continue
            for resource in lease.resources:
                roots.append(resource.node())
                if resource.kind == LAYER and not hold:
                    digest = Digest(resource.key)
                    if not layers.has_layer(txn, self._env, digest):
                        hold = f"lease {lease.id} is storing layer {digest.short}"
        nodes = gc.mark(roots, lambda node: self._refs(txn, node))
        layer_nodes = (node for node in nodes if node[0] == LAYER)
        gc.mark_leaves(layer_nodes, lambda node: self._new_chunks(txn, node), self._chunks)
        return Marks(nodes, self._chunks, hold or self._corrupt)

    def _new_chunks(self, txn: Txn, node: gc.Node) -> Iterable[bytes]:
        try:
            info = layers.get_info(txn, self._env, Digest(node[1]))
            lists = (b"", b"") if info is None else (info.chunks_sha256, info.windows_sha256)
            if info is None or self._chunk_lists.get(info.digest) == lists:
                return ()
            packed = layers.read_part(txn, self._env, info, LAYER_CHUNKS_PART)
            packed += layers.read_part(txn, self._env, info, LAYER_WINDOWS_PART)
        except StoreError as exc:
            log.warning("gc: %s; not sweeping chunks", exc)
            self._corrupt = str(exc)
            return ()
        self._chunk_lists[info.digest] = lists
        return layers.split_chunk_digests(packed)

    def _refs(self, txn: Txn, node: gc.Node) -> tuple[gc.Node, ...]:
        kind, key = node
        if kind == IMAGE:
            image = get_image(txn, self._env, key)
            if image is None:
                return ()
            return ((CONTENT, image.target_digest), (CONTENT, image.manifest_digest))
        if kind != CONTENT:
            return ()  # layers: their chunks are leaves, see mark
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
                return tuple((CONTENT, str(d.digest)) for d in _artifact_blobs(data, what))
            parsed = parse_manifest(data, info.media_type, what=what)
        except ManifestError as exc:
            # A blob we cannot parse keeps nothing alive; gc must not stop.
            log.warning("gc: %s", exc)
            return ()
        children = [(CONTENT, str(d.digest)) for d in parsed.children()]
        if isinstance(parsed, Manifest):
            children.extend((LAYER, str(d.digest)) for d in parsed.layers)
        return tuple(children)


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
