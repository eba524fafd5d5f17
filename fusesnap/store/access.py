"""The cache limit's bookkeeping in the ``cache`` database, inside a caller's
transaction: the chunk store's size, the limit, when each chunk was last
used, and which layers can be fetched again.

- ``size``: the stored (compressed) bytes of every chunk, kept by every
  transaction that adds or deletes chunks (`fusesnap.store.chunks`), so that a
  writer knows where it stands without a pass over the chunks. A store that
  has none yet (older, or written by an older fusesnap) is counted once.
- Access stamps: a chunk's last use as a coarse time bucket (`BUCKET_SECONDS`),
  under two keys: ``a`` + chunk -> bucket, and ``t`` + bucket + chunk, so that
  a cursor walks the chunks least recently used first. A chunk is stamped when
  it is stored, and again when read from the store in a later bucket; readers
  hand their stamps to the fetcher's background writer, which writes them in
  batches (no write per read).
- A layer's mode: ``remote`` (its chunks can be fetched again by range: a lazy
  pull said so) or ``keep`` (``pull --all``: keep it local). A layer with no
  mode (a commit's, one streamed where no range read is possible, or one stored
  before this existed) is pinned: its chunks are never evicted.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from fusesnap.digest import Digest
from fusesnap.store.blobs import Txn
from fusesnap.store.env import Env
from fusesnap.store.schema import CACHE, CHUNKS

__all__ = [
    "BUCKET_SECONDS",
    "KEEP",
    "REMOTE",
    "add_size",
    "bucket",
    "forget",
    "get_limit",
    "layer_mode",
    "set_layer_mode",
    "set_limit",
    "size",
    "stamp",
    "stamps_oldest_first",
]

BUCKET_SECONDS = 60
REMOTE = b"remote"
KEEP = b"keep"

_SIZE = b"size"
_LIMIT = b"limit"
_STAMP = b"a"
_ORDER = b"t"
_MODE = b"l"


def bucket(now: float | None = None) -> int:
    """The access bucket of ``now`` (default: the clock)."""
    return int((time.time() if now is None else now) // BUCKET_SECONDS) & 0xFFFFFFFF


def _u64(value: object) -> int:
    return int.from_bytes(bytes(value), "big")  # type: ignore[call-overload]


def size(txn: Txn, env: Env) -> int:
    """Stored bytes of every chunk (counted by one pass if never counted)."""
    raw = txn.get(_SIZE, db=env.db(CACHE))
    if raw is not None:
        return _u64(raw)
    return sum(len(value) for _key, value in txn.cursor(db=env.db(CHUNKS)))


def add_size(txn: Txn, env: Env, before: int, delta: int) -> None:
    """(write) The size is now ``before + delta`` (``before``: `size` read in this
    transaction before its chunks changed)."""
    txn.put(_SIZE, max(0, before + delta).to_bytes(8, "big"), db=env.db(CACHE))


def recount(txn: Txn, env: Env) -> int:
    """(write) Count the chunks' bytes again and keep that as the size."""
    total = sum(len(value) for _key, value in txn.cursor(db=env.db(CHUNKS)))
    txn.put(_SIZE, total.to_bytes(8, "big"), db=env.db(CACHE))
    return total


def get_limit(txn: Txn, env: Env) -> int | None:
    raw = txn.get(_LIMIT, db=env.db(CACHE))
    return None if raw is None else _u64(raw)


def set_limit(txn: Txn, env: Env, limit: int | None) -> None:
    db = env.db(CACHE)
    if limit is None:
        txn.delete(_LIMIT, db=db)
    else:
        txn.put(_LIMIT, limit.to_bytes(8, "big"), db=db)


def stamp(txn: Txn, env: Env, keys: Iterable[bytes], when: int) -> None:
    """(write) ``keys`` were used in bucket ``when`` (a later stamp replaces an
    earlier one; an earlier one is ignored)."""
    db = env.db(CACHE)
    new = when.to_bytes(4, "big")
    for key in keys:
        old = txn.get(_STAMP + key, db=db)
        if old is not None:
            if bytes(old) >= new:
                continue
            txn.delete(_ORDER + bytes(old) + key, db=db)
        txn.put(_STAMP + key, new, db=db)
        txn.put(_ORDER + new + key, b"", db=db)


def forget(txn: Txn, env: Env, keys: Iterable[bytes]) -> None:
    """(write) Drop the stamps of deleted chunks."""
    db = env.db(CACHE)
    for key in keys:
        old = txn.get(_STAMP + key, db=db)
        if old is not None:
            txn.delete(_ORDER + bytes(old) + key, db=db)
            txn.delete(_STAMP + key, db=db)


def stamps_oldest_first(txn: Txn, env: Env) -> Iterable[bytes]:
    """Every stamped chunk, least recently used first."""
    cursor = txn.cursor(db=env.db(CACHE))
    if not cursor.set_range(_ORDER):
        return
    for key in cursor.iternext(values=False):
        key = bytes(key)
        if not key.startswith(_ORDER):
            return
        yield key[len(_ORDER) + 4 :]


def stamped(txn: Txn, env: Env, key: bytes) -> bool:
    return txn.get(_STAMP + key, db=env.db(CACHE)) is not None


def layer_mode(txn: Txn, env: Env, digest: Digest) -> bytes | None:
    raw = txn.get(_MODE + digest.encode("ascii"), db=env.db(CACHE))
    return None if raw is None else bytes(raw)


def set_layer_mode(txn: Txn, env: Env, digest: Digest, mode: bytes | None) -> None:
    """(write) ``REMOTE``, ``KEEP`` or None (forget it: the layer is gone)."""
    key = _MODE + digest.encode("ascii")
    if mode is None:
        txn.delete(key, db=env.db(CACHE))
    else:
        txn.put(key, mode, db=env.db(CACHE))
