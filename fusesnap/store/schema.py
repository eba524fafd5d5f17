"""The LMDB layout, its version and migrations, and every key encoder.

Everything that knows how a key or value is laid out in bytes lives here, so a
change of layout is one diff next to `SCHEMA_VERSION` and its migration::

    ROOT/                           --root, see `default_root()`
     ├── store.lmdb/                one LMDB environment (data.mdb, lock.mdb)
     │    ├── meta                  b"schema_version" -> msgpack int
     │    ├── content               digest -> ContentInfo           (msgpack, v=1)
     │    ├── blobs                 digest \\0 u32be(segment) -> raw bytes (<= 1 MiB)
     │    ├── images                name -> ImageRecord              (msgpack, v=1)
     │    ├── leases                id -> LeaseRecord                (msgpack, v=1)
     │    ├── layers                digest -> LayerInfo              (msgpack, v=1)     v2
     │    ├── layer_data            digest \\0 part u32be(segment) -> raw bytes          v2
     │    │                           part b"i": the encoded LayerIndex (opaque here)
     │    │                           part b"c": sorted unique 32-byte chunk digests
     │    ├── chunks                sha256(chunk), 32 raw bytes -> format byte + payload   v2
     │    │                           0: the chunk as is (zstd did not shrink it)
     │    │                           1: one zstd frame, content size in its header
     │    │                           2: 64 KiB zstd frames with checksums, and their table  v4
     │    │                              (`fusesnap.store.chunkformat`)
     │    ├── snapshots             key -> SnapshotRecord            (msgpack, v=1)     v3
     │    │                           committed: named by chain id; active/view: any key
     │    ├── containers            name -> ContainerRef             (msgpack, v=1)     v3
     │    └── cache                 the cache limit's bookkeeping (`fusesnap.store.access`)
     │                                b"size": stored bytes of all chunks (u64be)
     │                                b"limit": the cap, if any (u64be)
     │                                b"a" + chunk -> its access bucket (u32be)
     │                                b"t" + bucket + chunk -> b"" (oldest first)
     │                                b"l" + layer digest -> b"remote" or b"keep"
     └── ingest/                    partial downloads, one file per digest
          └── sha256-<hex>          bytes so far; flock-ed while a writer has it

Blobs are cut into 1 MiB segments because LMDB keeps a value contiguous in
the map: one 2 GiB value would need 2 GiB of contiguous free pages, and a
read of 4 KiB from it would still touch its whole overflow chain. A blob's
`ContentInfo` and its segments are always written and deleted in the same
write transaction, so a reader never sees one without the other.

Digests are ASCII and never contain ``\\0``, so ``digest + b"\\0"`` is a
prefix that matches exactly one blob's segments, in order (big-endian
segment numbers sort numerically).

Layers (v2) are kept in two databases so that listing them is cheap: the
small header (`LayerInfo`: sizes, diffID, source, and the sha256 of each
big part) in ``layers``, the big parts — the index and the chunk list, each
up to megabytes — cut into 1 MiB segments in ``layer_data``, for the same
reason as blobs. Header and parts are written and deleted in one
transaction. A layer's file bytes are not here but in ``chunks``, shared
by every layer: a chunk is stored once whichever layers list it.

Migrations: `MIGRATIONS[n]` upgrades a store from version ``n`` to ``n + 1``
inside the write transaction that opens it (every database in `DATABASES`
is opened, so created, in that same transaction before it runs):

- v1 -> v2: adds ``layer_data`` and gives ``layers`` and ``chunks`` their
  layout. v1 only reserved those names and never wrote them; anything found
  there is not ours and is dropped (logged), since v2 would misread it.
- v2 -> v3: gives ``snapshots`` and ``containers`` their layout (records in
  `fusesnap.store.snapshots`), as v2 did for layers: they were reserved and
  never written, so anything found there is dropped. A version bump rather
  than a silent use of the reserved names: snapshots and containers are gc
  roots, and an older fusesnap that ignored them would sweep their layers.
- v3 -> v4: chunks are written in format 2 (checksummed frames). Nothing is
  rewritten (formats 0 and 1 are still read); the bump keeps an older
  fusesnap, which would take format 2 for corruption, from opening the store.

``cache`` came without a version bump: it is created when a store is opened,
holds only bookkeeping (an older fusesnap that ignores it evicts nothing and
at worst leaves the size counter behind, which ``fusesnap cache`` recounts).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

import lmdb
import msgpack

from fusesnap.digest import Digest
from fusesnap.errors import InvalidDigestError, StoreError

log = logging.getLogger(__name__)

SCHEMA_VERSION = 4

META = b"meta"
CONTENT = b"content"
BLOBS = b"blobs"
IMAGES = b"images"
LEASES = b"leases"
LAYERS = b"layers"
LAYER_DATA = b"layer_data"
CHUNKS = b"chunks"
SNAPSHOTS = b"snapshots"
CONTAINERS = b"containers"
CACHE = b"cache"

DATABASES = (
    META,
    CONTENT,
    BLOBS,
    IMAGES,
    LEASES,
    LAYERS,
    LAYER_DATA,
    CHUNKS,
    SNAPSHOTS,
    CONTAINERS,
    CACHE,
)

SCHEMA_VERSION_KEY = b"schema_version"
SEGMENT_SIZE = 1024 * 1024

# LMDB's compiled-in limit (mdb_env_get_maxkeysize); a longer key fails deep
# inside a transaction with a message that names nothing.
MAX_KEY_SIZE = 511

# A layer's big parts in ``layer_data``.
LAYER_INDEX_PART = b"i"
LAYER_CHUNKS_PART = b"c"
LAYER_WINDOWS_PART = b"w"  # gzip windows the index names (records without it: none)
CHUNK_DIGEST_SIZE = 32  # raw sha256
# Format byte in front of a stored chunk.
CHUNK_RAW = 0
CHUNK_ZSTD = 1
CHUNK_FRAMES = 2

Databases = Mapping[bytes, Any]  # name -> lmdb _Database handle
Migration = Callable[[lmdb.Transaction, Databases], None]


def _v1_to_v2(txn: lmdb.Transaction, dbs: Databases) -> None:
    for name in (LAYERS, LAYER_DATA, CHUNKS):
        entries = txn.stat(dbs[name])["entries"]
        if entries:
            log.warning("schema v2: dropping %d unknown entries of %s", entries, name.decode())
            txn.drop(dbs[name], delete=False)


def _v2_to_v3(txn: lmdb.Transaction, dbs: Databases) -> None:
    for name in (SNAPSHOTS, CONTAINERS):
        entries = txn.stat(dbs[name])["entries"]
        if entries:
            log.warning("schema v3: dropping %d unknown entries of %s", entries, name.decode())
            txn.drop(dbs[name], delete=False)


def _v3_to_v4(txn: lmdb.Transaction, dbs: Databases) -> None:
    pass  # formats 0 and 1 stay readable; new chunks are written in format 2


MIGRATIONS: dict[int, Migration] = {1: _v1_to_v2, 2: _v2_to_v3, 3: _v3_to_v4}


def ensure_schema(txn: lmdb.Transaction, dbs: Databases, *, where: str) -> None:
    """Stamp a new store, migrate an older one, refuse a newer one.

    Runs inside the write transaction that opens the store, so a migration
    that fails leaves the store as it was.
    """
    raw = txn.get(SCHEMA_VERSION_KEY, db=dbs[META])
    if raw is None:
        txn.put(SCHEMA_VERSION_KEY, pack(SCHEMA_VERSION), db=dbs[META])
        return
    version = unpack(bytes(raw))
    if not isinstance(version, int) or version < 1:
        raise StoreError(f"store at {where} has an unreadable schema version {version!r}")
    if version > SCHEMA_VERSION:
        raise StoreError(
            f"store at {where} has schema v{version}; "
            f"this fusesnap understands up to v{SCHEMA_VERSION}"
        )
    if version == SCHEMA_VERSION:
        return  # no write: opening must not cost an fsync
    while version < SCHEMA_VERSION:
        MIGRATIONS[version](txn, dbs)
        version += 1
    txn.put(SCHEMA_VERSION_KEY, pack(SCHEMA_VERSION), db=dbs[META])


# -- values ------------------------------------------------------------------


def pack(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def unpack(data: bytes) -> Any:
    try:
        return msgpack.unpackb(data, raw=False, strict_map_key=False)
    except (ValueError, msgpack.UnpackException) as exc:
        raise StoreError(f"corrupt record in store: {exc}") from None


def delete_prefix(txn: lmdb.Transaction, db: Any, prefix: bytes) -> None:
    """Delete every key of ``db`` that starts with ``prefix`` (a blob's segments, a
    layer's parts), whatever a record says there should be."""
    cursor = txn.cursor(db=db)
    if cursor.set_range(prefix):
        while bytes(cursor.key()).startswith(prefix):
            if not cursor.delete():
                break


# -- keys ----------------------------------------------------------------------


def _checked(key: bytes, what: str) -> bytes:
    if not key or len(key) > MAX_KEY_SIZE or b"\0" in key:
        raise StoreError(f"{what}: not usable as a store key (empty, NUL, or over 511 bytes)")
    return key


def content_key(digest: Digest) -> bytes:
    return digest.encode("ascii")


def decode_content_key(key: bytes) -> Digest:
    try:
        return Digest(key.decode("ascii"))
    except (UnicodeDecodeError, InvalidDigestError):
        raise StoreError(f"corrupt content key in store: {key[:80]!r}") from None


def blob_prefix(digest: Digest) -> bytes:
    return digest.encode("ascii") + b"\0"


def blob_key(digest: Digest, segment: int) -> bytes:
    return blob_prefix(digest) + segment.to_bytes(4, "big")


def decode_blob_key(key: bytes) -> tuple[Digest, int]:
    head, sep, tail = key.rpartition(b"\0")
    if not sep or len(tail) != 4:
        raise StoreError(f"corrupt blob key in store: {key[:80]!r}")
    return decode_content_key(head), int.from_bytes(tail, "big")


def layer_key(digest: Digest) -> bytes:
    return digest.encode("ascii")


def layer_data_prefix(digest: Digest, part: bytes = b"") -> bytes:
    """All of a layer's parts (``part`` empty), or one of them, in order."""
    return digest.encode("ascii") + b"\0" + part


def layer_data_key(digest: Digest, part: bytes, segment: int) -> bytes:
    return layer_data_prefix(digest, part) + segment.to_bytes(4, "big")


def chunk_key(digest: bytes) -> bytes:
    """A chunk's raw sha256; `InvalidDigestError` unless 32 bytes."""
    if not isinstance(digest, bytes) or len(digest) != CHUNK_DIGEST_SIZE:
        size = len(digest) if isinstance(digest, bytes | bytearray | memoryview) else None
        raise InvalidDigestError(
            f"invalid chunk digest {type(digest).__name__} of length {size}: "
            "want 32 raw sha256 bytes"
        )
    return digest


def image_key(name: str) -> bytes:
    return _checked(name.encode("utf-8"), f"image {name!r}")


def decode_image_key(key: bytes) -> str:
    return key.decode("utf-8")


def lease_key(lease_id: str) -> bytes:
    return _checked(lease_id.encode("utf-8"), f"lease {lease_id!r}")


def decode_lease_key(key: bytes) -> str:
    return key.decode("utf-8")


# A namespaced snapshot's key: SEP_NS + namespace + SEP_KEY + key. fusesnap's own
# snapshots (namespace "") are keyed by their name alone, which never starts with SEP_NS.
SEP_NS, SEP_KEY = "\x1e", "\x1f"


def snapshot_key(key: str, namespace: str = "") -> bytes:
    """The LMDB key of snapshot ``key`` in ``namespace`` ("": fusesnap's own)."""
    if key.startswith(SEP_NS) or (namespace and SEP_KEY in namespace):
        raise StoreError(f"snapshot {key!r} of namespace {namespace!r}: not a usable name")
    name = f"{SEP_NS}{namespace}{SEP_KEY}{key}" if namespace else key
    return _checked(name.encode("utf-8"), f"snapshot {key!r}")


def container_key(name: str) -> bytes:
    return _checked(name.encode("utf-8"), f"container {name!r}")


def ingest_name(digest: Digest) -> str:
    """File name of a partial ingest: ``sha256-<hex>`` (no ``:`` in paths)."""
    return f"{digest.algorithm}-{digest.hex}"


def decode_ingest_name(name: str) -> Digest:
    """Raise `InvalidDigestError` for a file that is not an ingest."""
    algorithm, sep, hexpart = name.partition("-")
    if not sep:
        raise InvalidDigestError(f"invalid ingest file name {name!r}")
    return Digest(f"{algorithm}:{hexpart}")
