"""The records the store keeps, as frozen values with their msgpack form.

`to_record()` returns plain dicts/lists/str/int/float so that msgpack (see
`schema.pack`) needs no hooks; each carries ``v`` so that a later layout can be
read next to this one. `from_record()` validates digests once, here, where
they come back into the program, and turns a malformed record into a
`StoreError` that names it instead of a `KeyError` from deep inside.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fusesnap.digest import Digest
from fusesnap.errors import InvalidDigestError, StoreError

RECORD_VERSION = 1

# Resource kinds a lease can hold. "ingest" protects a partial download;
# the rest protect the object of that kind with that key.
CONTENT = "content"
IMAGE = "image"
INGEST = "ingest"
LAYER = "layer"
SNAPSHOT = "snapshot"
CONTAINER = "container"
RESOURCE_KINDS = frozenset({CONTENT, IMAGE, INGEST, LAYER, SNAPSHOT, CONTAINER})
_DIGEST_KINDS = frozenset({CONTENT, INGEST, LAYER})


@contextmanager
def _decoding(what: str) -> Iterator[None]:
    try:
        yield
    except (KeyError, TypeError, ValueError, AttributeError, InvalidDigestError) as exc:
        raise StoreError(f"corrupt {what} record in store: {exc!r}") from None


def _check_version(d: Mapping[str, Any], what: str) -> None:
    if d.get("v") != RECORD_VERSION:
        raise StoreError(f"{what} record has version {d.get('v')!r}; want {RECORD_VERSION}")


def _labels(value: Any) -> dict[str, str]:
    return {str(k): str(v) for k, v in (value or {}).items()}


@dataclass(frozen=True, slots=True)
class ContentInfo:
    """A verified blob in the content store."""

    digest: Digest
    size: int
    media_type: str
    created: float
    segments: int
    labels: dict[str, str] = field(default_factory=dict, hash=False, compare=False)

    def to_record(self) -> dict[str, Any]:
        return {
            "v": RECORD_VERSION,
            "digest": str(self.digest),
            "size": self.size,
            "media_type": self.media_type,
            "created": self.created,
            "segments": self.segments,
            "labels": dict(self.labels),
        }

    @classmethod
    def from_record(cls, d: Mapping[str, Any]) -> ContentInfo:
        with _decoding("content"):
            _check_version(d, "content")
            return cls(
                digest=Digest(d["digest"]),
                size=int(d["size"]),
                media_type=str(d["media_type"]),
                created=float(d["created"]),
                segments=int(d["segments"]),
                labels=_labels(d.get("labels")),
            )


@dataclass(frozen=True, slots=True)
class ImageRecord:
    """A name pointing at content: the target (a manifest or an index) and the
    manifest picked from it for `platform`. Pointers only; no bytes.

    `created` and `updated` are filled in by `ImageStore.put`.
    """

    name: str
    target_digest: Digest
    target_media_type: str
    target_size: int
    manifest_digest: Digest
    platform: str
    created: float = 0.0
    updated: float = 0.0

    def to_record(self) -> dict[str, Any]:
        return {
            "v": RECORD_VERSION,
            "name": self.name,
            "target": {
                "digest": str(self.target_digest),
                "media_type": self.target_media_type,
                "size": self.target_size,
            },
            "manifest_digest": str(self.manifest_digest),
            "platform": self.platform,
            "created": self.created,
            "updated": self.updated,
        }

    @classmethod
    def from_record(cls, d: Mapping[str, Any]) -> ImageRecord:
        with _decoding("image"):
            _check_version(d, "image")
            target = d["target"]
            return cls(
                name=str(d["name"]),
                target_digest=Digest(target["digest"]),
                target_media_type=str(target["media_type"]),
                target_size=int(target["size"]),
                manifest_digest=Digest(d["manifest_digest"]),
                platform=str(d["platform"]),
                created=float(d["created"]),
                updated=float(d["updated"]),
            )


@dataclass(frozen=True, slots=True, order=True)
class Resource:
    """One thing a lease holds; ``(kind, key)`` is also the gc node."""

    kind: str
    key: str

    def __post_init__(self) -> None:
        if self.kind not in RESOURCE_KINDS:
            raise ValueError(f"unknown resource kind {self.kind!r}")
        if self.kind in _DIGEST_KINDS:
            object.__setattr__(self, "key", Digest(self.key))
        elif not self.key:
            raise ValueError(f"{self.kind} resource needs a key")

    @classmethod
    def content(cls, digest: Digest) -> Resource:
        return cls(CONTENT, digest)

    @classmethod
    def ingest(cls, digest: Digest) -> Resource:
        return cls(INGEST, digest)

    @classmethod
    def image(cls, name: str) -> Resource:
        return cls(IMAGE, name)

    @classmethod
    def layer(cls, digest: Digest) -> Resource:
        return cls(LAYER, digest)

    def node(self) -> tuple[str, str]:
        return (self.kind, str(self.key))


@dataclass(frozen=True, slots=True)
class LeaseRecord:
    """A hold on resources while work is in flight (a pull, a mount).

    `owner_start` is the owner's start time in clock ticks since boot
    (field 22 of /proc/PID/stat): a pid is reused after its process dies,
    the pair (pid, start time) is not.
    """

    id: str
    created: float
    expires: float | None
    labels: dict[str, str] = field(default_factory=dict, hash=False, compare=False)
    owner_pid: int | None = None
    owner_start: int | None = None
    resources: tuple[Resource, ...] = ()

    def to_record(self) -> dict[str, Any]:
        return {
            "v": RECORD_VERSION,
            "id": self.id,
            "created": self.created,
            "expires": self.expires,
            "labels": dict(self.labels),
            "owner_pid": self.owner_pid,
            "owner_start": self.owner_start,
            "resources": [[r.kind, str(r.key)] for r in self.resources],
        }

    @classmethod
    def from_record(cls, d: Mapping[str, Any]) -> LeaseRecord:
        with _decoding("lease"):
            _check_version(d, "lease")
            expires = d["expires"]
            pid = d.get("owner_pid")
            start = d.get("owner_start")
            return cls(
                id=str(d["id"]),
                created=float(d["created"]),
                expires=None if expires is None else float(expires),
                labels=_labels(d.get("labels")),
                owner_pid=None if pid is None else int(pid),
                owner_start=None if start is None else int(start),
                resources=tuple(Resource(str(k), str(key)) for k, key in d["resources"]),
            )


@dataclass(frozen=True, slots=True)
class IngestInfo:
    """A partial download in ``ROOT/ingest/`` (what a killed pull left behind)."""

    digest: Digest
    path: Path
    offset: int
    mtime: float
    locked: bool


# Where a layer's index came from (see DESIGN.md, "Layer index").
LAYER_SOURCES = frozenset({"built", "estargz", "zstd:chunked", "artifact"})


@dataclass(frozen=True, slots=True)
class LayerInfo:
    """A stored layer without its big parts: what `LayerStore.list` returns.

    `index_sha256` and `chunks_sha256` (raw sha256 of the two parts) let a
    read check that the parts are the ones written.
    """

    digest: Digest
    diff_id: Digest
    media_type: str
    size: int
    uncompressed_size: int
    entry_count: int
    source: str
    created: float
    index_size: int
    chunk_count: int
    index_sha256: bytes = field(repr=False)
    chunks_sha256: bytes = field(repr=False)
    window_count: int = 0
    windows_sha256: bytes = field(default=b"", repr=False)

    def to_record(self) -> dict[str, Any]:
        return {
            "v": RECORD_VERSION,
            "digest": str(self.digest),
            "diff_id": str(self.diff_id),
            "media_type": self.media_type,
            "size": self.size,
            "uncompressed_size": self.uncompressed_size,
            "entry_count": self.entry_count,
            "source": self.source,
            "created": self.created,
            "index_size": self.index_size,
            "chunk_count": self.chunk_count,
            "index_sha256": self.index_sha256,
            "chunks_sha256": self.chunks_sha256,
            "window_count": self.window_count,
            "windows_sha256": self.windows_sha256,
        }

    @classmethod
    def from_record(cls, d: Mapping[str, Any]) -> LayerInfo:
        with _decoding("layer"):
            _check_version(d, "layer")
            return cls(
                digest=Digest(d["digest"]),
                diff_id=Digest(d["diff_id"]),
                media_type=str(d["media_type"]),
                size=int(d["size"]),
                uncompressed_size=int(d["uncompressed_size"]),
                entry_count=int(d["entry_count"]),
                source=str(d["source"]),
                created=float(d["created"]),
                index_size=int(d["index_size"]),
                chunk_count=int(d["chunk_count"]),
                index_sha256=bytes(d["index_sha256"]),
                chunks_sha256=bytes(d["chunks_sha256"]),
                window_count=int(d.get("window_count", 0)),
                windows_sha256=bytes(d.get("windows_sha256", b"")),
            )


@dataclass(frozen=True, slots=True)
class LayerRecord:
    """A layer as the store keeps it: its index and the chunks it needs.

    `digest` is the layer blob's (compressed) digest, `size` its size;
    `index` is an encoded `LayerIndex`, opaque to the store; `chunks` is the
    sorted, unique, concatenated 32-byte sha256 of every chunk the layer's
    files are made of (`pack_chunk_digests` builds it), for gc and for
    "how much of this layer is here"; `windows` is the same for the gzip
    windows its index names (kept in the chunk store, for gc only).
    `created` is filled in by `LayerStore.put` when 0.
    """

    digest: Digest
    diff_id: Digest
    media_type: str
    size: int
    uncompressed_size: int
    entry_count: int
    source: str
    index: bytes = field(repr=False)
    chunks: bytes = field(repr=False)
    created: float = 0.0
    windows: bytes = field(default=b"", repr=False)

    @property
    def chunk_count(self) -> int:
        return len(self.chunks) // 32

    def info(self) -> LayerInfo:
        """The header to store (hashes both parts)."""
        return LayerInfo(
            digest=self.digest,
            diff_id=self.diff_id,
            media_type=self.media_type,
            size=self.size,
            uncompressed_size=self.uncompressed_size,
            entry_count=self.entry_count,
            source=self.source,
            created=self.created,
            index_size=len(self.index),
            chunk_count=self.chunk_count,
            index_sha256=hashlib.sha256(self.index).digest(),
            chunks_sha256=hashlib.sha256(self.chunks).digest(),
            window_count=len(self.windows) // 32,
            windows_sha256=hashlib.sha256(self.windows).digest() if self.windows else b"",
        )

    @classmethod
    def from_parts(
        cls, info: LayerInfo, index: bytes, chunks: bytes, windows: bytes = b""
    ) -> LayerRecord:
        return cls(
            digest=info.digest,
            diff_id=info.diff_id,
            media_type=info.media_type,
            size=info.size,
            uncompressed_size=info.uncompressed_size,
            entry_count=info.entry_count,
            source=info.source,
            index=index,
            chunks=chunks,
            created=info.created,
            windows=windows,
        )
