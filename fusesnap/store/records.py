"""The records the store keeps, as frozen values with their msgpack form.

`to_record()` returns plain dicts/lists/str/int/float so that msgpack (see
`schema.pack`) needs no hooks; each carries ``v`` so that a later layout can be
read next to this one. `from_record()` validates digests once, here, where
they come back into the program, and turns a malformed record into a
`StoreError` that names it instead of a `KeyError` from deep inside.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, Self, TypeVar

from fusesnap.digest import Digest
from fusesnap.errors import InvalidDigestError, StoreError
from fusesnap.store.schema import unpack

if TYPE_CHECKING:
    import lmdb

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


_PARSE: dict[str, Callable[[Any], Any]] = {
    "Digest": lambda v: Digest(str(v)),
    "str": str,
    "int": int,
    "float": float,
    "bytes": bytes,
    "dict[str, str]": _labels,
}


class FlatRecord:
    """A record whose msgpack form is its fields, one key each (`Digest` as text).

    `from_record` converts each field by its annotation (``X | None`` allows nil) and
    fills in a missing field from its default; `what` names the record in errors.
    """

    __slots__ = ()
    what: ClassVar[str] = "record"

    def to_record(self) -> dict[str, Any]:
        out: dict[str, Any] = {"v": RECORD_VERSION}
        for f in fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            out[f.name] = dict(value) if isinstance(value, dict) else _plain(value)
        return out

    @classmethod
    def from_record(cls, d: Mapping[str, Any]) -> Self:
        with _decoding(cls.what):
            _check_version(d, cls.what)
            kwargs = {}
            for f in fields(cls):  # type: ignore[arg-type]
                if f.name not in d:
                    if f.default is MISSING and f.default_factory is MISSING:
                        raise KeyError(f.name)
                    continue
                kind = str(f.type)
                value = d[f.name]
                if kind.endswith(" | None"):
                    kwargs[f.name] = None if value is None else _PARSE[kind[:-7]](value)
                else:
                    kwargs[f.name] = _PARSE[kind](value)
            return cls(**kwargs)


class _Decodable(Protocol):
    @classmethod
    def from_record(cls, d: Mapping[str, Any]) -> Self: ...


R = TypeVar("R", bound=_Decodable)


def get_record(txn: lmdb.Transaction[Any], db: Any, key: bytes, cls: type[R]) -> R | None:
    """The record at ``key`` of LMDB database ``db`` in ``txn``, decoded; None if absent."""
    raw = txn.get(key, db=db)
    return None if raw is None else cls.from_record(unpack(bytes(raw)))


def iter_records(txn: lmdb.Transaction[Any], db: Any, cls: type[R]) -> Iterator[R]:
    """Every record of ``db``, decoded, in key order, within ``txn``."""
    for _key, raw in txn.cursor(db=db):
        yield cls.from_record(unpack(bytes(raw)))


def _plain(value: Any) -> Any:
    return str(value) if isinstance(value, Digest) else value


@dataclass(frozen=True, slots=True)
class ContentInfo(FlatRecord):
    """A verified blob in the content store."""

    what: ClassVar[str] = "content"

    digest: Digest
    size: int
    media_type: str
    created: float
    segments: int
    labels: dict[str, str] = field(default_factory=dict, hash=False, compare=False)


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


# Where a layer's index came from: built here, a TOC in the blob, or an index artifact.
LAYER_SOURCES = frozenset({"built", "estargz", "zstd:chunked", "artifact", "soci"})


@dataclass(frozen=True, slots=True)
class LayerHead:
    """What a layer's stored header and its full record both say of it.

    `digest` is the layer blob's (compressed) digest, `size` its size; `source`
    one of `LAYER_SOURCES`.
    """

    digest: Digest
    diff_id: Digest
    media_type: str
    size: int
    uncompressed_size: int
    entry_count: int
    source: str


@dataclass(frozen=True, slots=True)
class LayerInfo(LayerHead, FlatRecord):
    """A stored layer without its big parts: what `LayerStore.list` returns.

    `index_sha256` and `chunks_sha256` (raw sha256 of the two parts) let a
    read check that the parts are the ones written.
    """

    what: ClassVar[str] = "layer"

    created: float
    index_size: int
    chunk_count: int
    index_sha256: bytes = field(repr=False)
    chunks_sha256: bytes = field(repr=False)
    window_count: int = 0
    windows_sha256: bytes = field(default=b"", repr=False)


@dataclass(frozen=True, slots=True)
class LayerRecord(LayerHead):
    """A layer as the store keeps it: its index and the chunks it needs.

    `digest` is the layer blob's (compressed) digest, `size` its size;
    `index` is an encoded `LayerIndex`, opaque to the store; `chunks` is the
    sorted, unique, concatenated 32-byte sha256 of every chunk the layer's
    files are made of (`pack_chunk_digests` builds it), for gc and for
    "how much of this layer is here"; `windows` is the same for the gzip
    windows its index names (kept in the chunk store, for gc only).
    `created` is filled in by `LayerStore.put` when 0.
    """

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
            **{name: getattr(self, name) for name in _LAYER_SHARED},
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
        shared = {name: getattr(info, name) for name in _LAYER_SHARED}
        return cls(**shared, index=index, chunks=chunks, windows=windows)


_LAYER_SHARED = (*(f.name for f in fields(LayerHead)), "created")
