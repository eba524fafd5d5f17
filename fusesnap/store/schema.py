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
     │    ├── layers                reserved: layer digest -> LayerIndex
     │    ├── chunks                reserved: chunk sha256 -> zstd chunk
     │    ├── snapshots             reserved: chain id -> snapshot
     │    └── containers            reserved: container id -> container
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

Migrations: `MIGRATIONS[n]` upgrades a store from version ``n`` to ``n + 1``
inside the write transaction that opens it; there are none yet.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import lmdb
import msgpack

from fusesnap.digest import Digest
from fusesnap.errors import InvalidDigestError, StoreError

SCHEMA_VERSION = 1

META = b"meta"
CONTENT = b"content"
BLOBS = b"blobs"
IMAGES = b"images"
LEASES = b"leases"
LAYERS = b"layers"
CHUNKS = b"chunks"
SNAPSHOTS = b"snapshots"
CONTAINERS = b"containers"

DATABASES = (META, CONTENT, BLOBS, IMAGES, LEASES, LAYERS, CHUNKS, SNAPSHOTS, CONTAINERS)

SCHEMA_VERSION_KEY = b"schema_version"
SEGMENT_SIZE = 1024 * 1024

# LMDB's compiled-in limit (mdb_env_get_maxkeysize); a longer key fails deep
# inside a transaction with a message that names nothing.
MAX_KEY_SIZE = 511

Databases = Mapping[bytes, Any]  # name -> lmdb _Database handle
Migration = Callable[[lmdb.Transaction, Databases], None]
MIGRATIONS: dict[int, Migration] = {}


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


def image_key(name: str) -> bytes:
    return _checked(name.encode("utf-8"), f"image {name!r}")


def decode_image_key(key: bytes) -> str:
    return key.decode("utf-8")


def lease_key(lease_id: str) -> bytes:
    return _checked(lease_id.encode("utf-8"), f"lease {lease_id!r}")


def decode_lease_key(key: bytes) -> str:
    return key.decode("utf-8")


def ingest_name(digest: Digest) -> str:
    """File name of a partial ingest: ``sha256-<hex>`` (no ``:`` in paths)."""
    return f"{digest.algorithm}-{digest.hex}"


def decode_ingest_name(name: str) -> Digest:
    """Raise `InvalidDigestError` for a file that is not an ingest."""
    algorithm, sep, hexpart = name.partition("-")
    if not sep:
        raise InvalidDigestError(f"invalid ingest file name {name!r}")
    return Digest(f"{algorithm}:{hexpart}")
