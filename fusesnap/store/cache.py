"""The size-capped chunk cache: a per-store limit, what may be evicted, and eviction
least recently used first.

What may go: a chunk that can be fetched again, i.e. listed by a layer marked
``remote`` (a lazy pull found its chunks can be read by range) and by no pinned
layer. Pinned, never evicted: the chunks of a layer marked ``keep`` (``pull
--all``), of a layer with no mode (a commit's, a layer streamed where no range
read is possible), and every gzip window (they are computed, not fetched). A
chunk no layer lists (a pull storing a layer right now, or garbage for gc) is
not evicted either. The limit counts every chunk, pinned ones too.

When: inside the write transaction that stores chunks (`ChunkStore.put_many`
asks `make_room`), so a batch never takes the store over the limit, whichever
process writes; and also, limit or not, when the disk under the store has less
than `DISK_RESERVE` free (at most an eighth of it), since on a disk that is
really full LMDB may not even commit the delete that would make room. If
evicting cannot make room, the new chunks that could be fetched again are not
stored (their readers have them already; they are fetched
again when next needed). New pinned chunks are stored regardless. And on demand
(`evict`): a writer whose disk is full frees what it needs and tries again.

An evicted chunk is only "not local" again: its layer record stays, a lazy read
fetches it again, gc is unaffected (it deletes what nothing links to; eviction
deletes what is linked but can be fetched). A mount serves a layer that may lose
chunks through a fetcher even when the layer is complete (`evictable_layer`).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterable, Set
from dataclasses import dataclass

from fusesnap.digest import Digest
from fusesnap.errors import StoreError
from fusesnap.store import access, chunks, layers
from fusesnap.store.access import KEEP, REMOTE
from fusesnap.store.blobs import Txn
from fusesnap.store.chunks import ChunkStats
from fusesnap.store.env import Env
from fusesnap.store.schema import CHUNKS, LAYER_CHUNKS_PART, LAYER_WINDOWS_PART

__all__ = ["KEEP", "REMOTE", "CacheUsage", "StoreCache"]

log = logging.getLogger(__name__)

# One eviction on demand frees at least this much (a full disk needs room for a batch).
MIN_EVICTION = 8 << 20
# Free disk kept under the store: below it, stores evict as if over the limit.
DISK_RESERVE = 64 << 20


def _short_of_disk(env: Env, adding: int) -> int:
    """How many bytes storing ``adding`` more would eat into the disk's reserve: the
    store keeps `DISK_RESERVE` (at most an eighth of the file system) free, evicting
    to stay clear of a full disk, where LMDB cannot even commit a delete."""
    try:
        fs = os.statvfs(env.root)
    except OSError:
        return 0
    reserve = min(DISK_RESERVE, fs.f_blocks * fs.f_frsize // 8)
    return reserve + adding - fs.f_bavail * fs.f_frsize


@dataclass(frozen=True, slots=True)
class CacheUsage:
    """Stored bytes of the chunk store: all of it, and in three parts (``fusesnap cache``)."""

    size: int
    limit: int | None
    pinned: int  # listed by a pinned layer: never evicted
    evictable: int  # can be fetched again
    unlisted: int  # listed by no layer (a pull under way, or garbage for gc)
    chunks: int


@dataclass(frozen=True, slots=True)
class _Sets:
    evictable: frozenset[bytes]
    listed: frozenset[bytes]


class StoreCache:
    """The limit and eviction of one store's chunks (`Store.cache`); thread-safe,
    each public method one transaction. Remembers each layer's chunk list (by its
    sha256) between calls, so deciding what may go reads layer headers only."""

    def __init__(self, env: Env) -> None:
        self._env = env
        self._lists: dict[Digest, tuple[bytes, bytes, frozenset[bytes], frozenset[bytes]]] = {}
        self._sets: tuple[tuple[object, ...], _Sets] | None = None
        self._lock = threading.Lock()
        self._warned = False

    # -- settings ------------------------------------------------------------------------------

    def limit(self) -> int | None:
        with self._env.txn() as txn:
            return access.get_limit(txn, self._env)

    def set_limit(self, limit: int | None) -> None:
        """Cap the chunk store at ``limit`` stored bytes (None: no cap). Takes effect
        at the next store of chunks by any process; nothing is evicted now."""
        if limit is not None and limit < 0:
            raise ValueError("cache limit must not be negative")
        with self._env.txn(write=True) as txn:
            access.set_limit(txn, self._env, limit)

    def mark(self, digests: Iterable[Digest], mode: bytes) -> None:
        """Mark layers ``REMOTE`` (chunks may be evicted; a ``KEEP`` layer stays
        ``KEEP``) or ``KEEP`` (never evicted)."""
        with self._env.txn(write=True) as txn:
            for digest in digests:
                if mode == REMOTE and access.layer_mode(txn, self._env, digest) == KEEP:
                    continue
                access.set_layer_mode(txn, self._env, digest, mode)

    def evictable_layer(self, digest: Digest) -> bool:
        """Whether the layer's chunks may be evicted (a reader must be able to fetch them)."""
        with self._env.txn() as txn:
            return access.layer_mode(txn, self._env, digest) == REMOTE

    # -- what is where -------------------------------------------------------------------------

    def usage(self, *, recount: bool = False) -> CacheUsage:
        """Size, limit and what is pinned or evictable (one pass over the chunks);
        ``recount`` also corrects the kept size if it drifted."""
        env = self._env
        with env.txn(write=recount, buffers=True) as txn:
            sets = self._compute(txn)
            pinned = evictable = unlisted = count = 0
            for key, value in txn.cursor(db=env.db(CHUNKS)):
                count += 1
                key = bytes(key)
                if key in sets.evictable:
                    evictable += len(value)
                elif key in sets.listed:
                    pinned += len(value)
                else:
                    unlisted += len(value)
            total = pinned + evictable + unlisted
            if recount and access.size(txn, env) != total:
                access.add_size(txn, env, total, 0)
            limit = access.get_limit(txn, env)
        return CacheUsage(total, limit, pinned, evictable, unlisted, count)

    def size(self) -> int:
        """Stored bytes of every chunk (kept, not counted)."""
        with self._env.txn() as txn:
            return access.size(txn, self._env)

    # -- eviction ------------------------------------------------------------------------------

    def make_room(self, txn: Txn, incoming: dict[bytes, int]) -> tuple[ChunkStats, set[bytes]]:
        """(inside a chunk store's write transaction) Before ``incoming`` ``{key:
        stored size}`` is written: evict what the limit asks; return what went and
        which of ``incoming`` must not be stored (evictable ones with no room)."""
        env = self._env
        limit = access.get_limit(txn, env)
        adding = sum(incoming.values())
        over = -1 if limit is None else access.size(txn, env) + adding - limit
        over = max(over, _short_of_disk(env, adding))
        if over <= 0:
            return ChunkStats(0, 0), set()
        evicted = self._evict(txn, over)
        over -= evicted.stored_bytes
        refused: set[bytes] = set()
        if over > 0:
            evictable = self._compute(txn).evictable
            for key in sorted(incoming, key=incoming.__getitem__, reverse=True):
                if over <= 0:
                    break
                if key in evictable:
                    refused.add(key)
                    over -= incoming[key]
            if over > 0 and limit is not None and not self._warned:
                self._warned = True
                log.warning(
                    "the store's pinned chunks take it over its cache limit (%d bytes); "
                    "chunks that can be fetched again are no longer kept",
                    limit,
                )
        return evicted, refused

    def evict(self, need: int) -> ChunkStats:
        """Evict at least ``need`` bytes (at least `MIN_EVICTION`) of evictable chunks,
        least recently used first, if there are so many. Then one small commit, which
        lets LMDB reuse the freed pages at once (it reuses a transaction's freed pages
        only after a later commit): on a full disk, the next write finds room."""
        with self._env.txn(write=True, buffers=True) as txn:
            gone = self._evict(txn, max(need, MIN_EVICTION))
        if gone.count:
            with self._env.txn(write=True) as txn:
                access.add_size(txn, self._env, access.size(txn, self._env), 0)
        return gone

    def _evict(self, txn: Txn, need: int, spare: Set[bytes] = frozenset()) -> ChunkStats:
        env = self._env
        evictable = self._compute(txn).evictable
        if not evictable:
            return ChunkStats(0, 0)
        db = env.db(CHUNKS)
        victims: list[bytes] = []
        freed = 0

        def take(keys: Iterable[bytes]) -> None:
            nonlocal freed
            for key in keys:
                if freed >= need:
                    return
                if key in evictable and key not in spare:
                    value = txn.get(key, db=db)
                    if value is not None:
                        victims.append(key)
                        freed += len(value)

        take(access.stamps_oldest_first(txn, env))
        if freed < need:  # chunks stored before stamps existed: older than any
            chosen = set(victims)
            rest = (k for k in sorted(evictable) if k not in chosen)
            take(k for k in rest if not access.stamped(txn, env, k))
        return chunks.delete_chunks(txn, env, victims)

    def _compute(self, txn: Txn) -> _Sets:
        """Which chunks may be evicted, and which any layer lists (cached while no
        layer, mode or chunk list changes). A chunk list that cannot be read makes
        nothing evictable: what that layer needs is unknown."""
        with self._lock:
            try:
                return self._compute_locked(txn)
            except StoreError as exc:
                log.warning("%s; evicting nothing", exc)
                return _Sets(frozenset(), frozenset())

    def _compute_locked(self, txn: Txn) -> _Sets:
        env = self._env
        state = []
        for info in layers.iter_infos(txn, env):
            mode = access.layer_mode(txn, env, info.digest)
            state.append((info.digest, info.chunks_sha256, info.windows_sha256, mode))
        key = tuple(state)
        if self._sets is not None and self._sets[0] == key:
            return self._sets[1]
        remote: set[bytes] = set()
        pinned: set[bytes] = set()
        seen = set()
        for digest, chunk_sha, window_sha, mode in state:
            seen.add(digest)
            got = self._lists.get(digest)
            if got is None or got[:2] != (chunk_sha, window_sha):
                info = layers.require_info(txn, env, digest)
                packed = layers.read_part(txn, env, info, LAYER_CHUNKS_PART)
                windows = layers.read_part(txn, env, info, LAYER_WINDOWS_PART)
                got = (
                    chunk_sha,
                    window_sha,
                    frozenset(layers.split_chunk_digests(packed)),
                    frozenset(layers.split_chunk_digests(windows)),
                )
                self._lists[digest] = got
            pinned.update(got[3])
            (remote if mode == REMOTE else pinned).update(got[2])
        for gone in set(self._lists) - seen:
            del self._lists[gone]
        sets = _Sets(frozenset(remote - pinned), frozenset(remote | pinned))
        self._sets = (key, sets)
        return sets
