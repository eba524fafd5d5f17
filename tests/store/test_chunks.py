"""The chunk store on a real LMDB: formats, dedup, verification on put and get.

The stored format itself (frames, their table, what rot it catches) is tested in
``test_chunkformat``."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable

import pytest
import zstandard

from fusesnap.errors import DigestMismatchError, InvalidDigestError, NotFoundError, StoreError
from fusesnap.store import ChunkPutStats, ChunkStats, Store
from fusesnap.store.chunkformat import encode
from fusesnap.store.chunks import FRAME_SIZE
from fusesnap.store.schema import CHUNK_FRAMES, CHUNK_RAW, CHUNK_ZSTD, CHUNKS

from .helpers import MiB, blob, chunk

TEXT = b"".join(b"line %d of a very compressible file\n" % i for i in range(30_000))[:MiB]


def stored_value(store: Store, digest: bytes) -> bytes:
    with store.env.txn() as txn:
        value = txn.get(digest, db=store.env.db(CHUNKS))
    assert value is not None
    return bytes(value)


def overwrite(store: Store, digest: bytes, value: bytes) -> None:
    with store.env.txn(write=True) as txn:
        txn.put(digest, value, db=store.env.db(CHUNKS))


@pytest.mark.parametrize(
    "data",
    [TEXT, blob(MiB, 1), b"", b"x", blob(3 * MiB + 5, 2)],
    ids=["text", "random", "empty", "one-byte", "over-a-frame-boundary"],
)
def test_round_trip_and_format(store: Store, data: bytes) -> None:
    digest, _ = chunk(data)
    stats = store.chunks.put_many([chunk(data)])
    value = stored_value(store, digest)
    assert value[0] == CHUNK_FRAMES
    assert stats == ChunkPutStats(new=1, existing=0, raw_bytes=len(data), stored_bytes=len(value))
    if data is TEXT:
        assert len(value) < len(data) // 4
    else:  # random bytes: raw zstd blocks, a few bytes of framing per 64 KiB
        assert len(value) <= len(data) + 64 + 32 * (len(data) // (64 << 10) + 1)
    assert store.chunks.get(digest) == data
    assert store.chunks.exists(digest)


@pytest.mark.parametrize(("fmt", "data"), [(CHUNK_RAW, blob(MiB, 1)), (CHUNK_ZSTD, TEXT)])
def test_chunks_of_older_stores_are_read_and_checked_by_sha256(
    store: Store, fmt: int, data: bytes
) -> None:
    digest, _ = chunk(data)
    payload = data if fmt == CHUNK_RAW else zstandard.ZstdCompressor().compress(data)
    overwrite(store, digest, bytes([fmt]) + payload)
    assert store.chunks.get(digest) == data
    assert store.chunks.read(digest, 5000, 9000) == (0, data)  # whole: one sha256 covers it
    overwrite(store, digest, bytes([fmt]) + _flip_middle(payload))
    with pytest.raises(StoreError, match="corrupt in store"):
        store.chunks.read(digest, 0, 10)


def test_a_range_read_decodes_only_the_frames_it_needs(store: Store) -> None:
    data = TEXT[: MiB - 100]
    digest, _ = chunk(data)
    store.chunks.put_many([chunk(data)])
    frame = FRAME_SIZE
    assert store.chunks.read(digest, 0, 4096) == (0, data[:frame])
    assert store.chunks.read(digest, 3 * frame + 7, 3 * frame + 4103) == (
        3 * frame,
        data[3 * frame : 4 * frame],
    )
    lo, got = store.chunks.read(digest, frame - 1, frame + 1)  # straddles two frames
    assert (lo, got) == (0, data[: 2 * frame])
    lo, got = store.chunks.read(digest, len(data) - 10, len(data) + 100)  # the short last frame
    assert (lo, got) == (15 * frame, data[15 * frame :])
    assert store.chunks.read(digest, 0, len(data)) == (0, data)
    with pytest.raises(NotFoundError):
        store.chunks.read(chunk(b"absent")[0], 0, 1)


def test_put_many_verified_trusts_the_callers_hash(store: Store) -> None:
    items = [chunk(blob(1000, i)) for i in range(3)]
    assert store.chunks.put_many(items, verified=True).new == 3
    assert store.chunks.get_many(d for d, _ in items) == dict(items)


def test_same_chunk_is_stored_once(store: Store) -> None:
    text, rnd = chunk(TEXT), chunk(blob(MiB, 2))
    first = store.chunks.put_many([text, rnd])
    size = store.chunks.stats()
    again = store.chunks.put_many([rnd, text, rnd])  # another layer, another image
    assert first.new == 2
    assert again == ChunkPutStats(new=0, existing=3, raw_bytes=0, stored_bytes=0)
    assert store.chunks.stats() == size
    assert size.count == 2
    assert size.stored_bytes == len(stored_value(store, text[0])) + len(stored_value(store, rnd[0]))
    assert size.stored_bytes < MiB + MiB // 4  # the text chunk is compressed
    assert sorted(store.chunks.iter_digests()) == sorted([text[0], rnd[0]])


def test_a_bad_chunk_fails_the_whole_batch(store: Store) -> None:
    good = [chunk(blob(1000, i)) for i in range(5)]
    bad_digest = hashlib.sha256(b"what was promised").digest()
    batch = [*good[:3], (bad_digest, b"what arrived"), *good[3:]]
    with pytest.raises(DigestMismatchError) as exc:
        store.chunks.put_many(batch)
    assert str(exc.value).startswith(f"chunk {bad_digest.hex()[:12]}: digest mismatch")
    assert store.chunks.stats() == ChunkStats(0, 0)
    assert store.chunks.missing(d for d, _ in batch) == {d for d, _ in batch}


def test_put_many_at_another_level_with_digests_the_caller_checked(store: Store) -> None:
    digest, data = chunk(TEXT)
    store.chunks.put_many([(digest, data)], level=1, verified=True)
    fast = stored_value(store, digest)
    assert fast[0] == CHUNK_FRAMES
    assert store.chunks.get(digest) == TEXT
    # the level was used
    assert fast == encode(TEXT, 1, digest=digest) != encode(TEXT, store.chunks.level, digest=digest)


def test_invalid_digests_are_rejected(store: Store) -> None:
    for digest in (b"short", "a" * 32, hashlib.sha256(b"x").hexdigest().encode()):
        with pytest.raises(InvalidDigestError, match="want 32 raw sha256 bytes"):
            store.chunks.get(digest)  # type: ignore[arg-type]


def test_missing_exists_get_many(store: Store) -> None:
    present = [chunk(blob(100 + i, i)) for i in range(4)]
    absent = [chunk(blob(50, 100 + i))[0] for i in range(3)]
    store.chunks.put_many(present)
    everything = [d for d, _ in present] + absent
    assert store.chunks.missing(everything) == set(absent)
    assert store.chunks.missing([]) == set()
    assert not store.chunks.exists(absent[0])
    got = store.chunks.get_many([*everything, present[0][0]])
    assert got == dict(present)
    with pytest.raises(NotFoundError) as exc:
        store.chunks.get(absent[0])
    assert str(exc.value) == f"chunk {absent[0].hex()[:12]}: not found"


def test_delete_many_and_stats(store: Store) -> None:
    items = [chunk(blob(1000, i)) for i in range(10)]
    store.chunks.put_many(items)
    before = store.chunks.stats()
    removed = store.chunks.delete_many([d for d, _ in items[:4]] + [chunk(b"never stored")[0]])
    each = len(stored_value(store, items[5][0]))  # random 1000 bytes: one raw frame
    assert removed == ChunkStats(4, 4 * each)
    assert store.chunks.stats() == ChunkStats(6, before.stored_bytes - 4 * each)
    assert store.chunks.missing(d for d, _ in items) == {d for d, _ in items[:4]}


def _flip_middle(value: bytes) -> bytes:
    i = len(value) // 2
    return value[:i] + bytes([value[i] ^ 0x40]) + value[i + 1 :]


@pytest.mark.parametrize(
    ("data", "damage"),
    [
        (TEXT, _flip_middle),  # inside a zstd frame
        (blob(MiB, 3), _flip_middle),  # inside a frame of raw blocks
        (TEXT, lambda v: v[: len(v) // 2]),  # truncated
        (TEXT, lambda v: b""),
        (TEXT, lambda v: b"\x07" + v[1:]),  # unknown format byte
        (blob(10, 4), lambda v: bytes([CHUNK_ZSTD]) + v[1:]),  # frames taken for one frame
        (TEXT, lambda v: bytes([CHUNK_RAW]) + v[1:]),  # frames taken for raw bytes
    ],
    ids=["zstd-bitflip", "raw-bitflip", "truncated", "empty", "format", "not-zstd", "not-raw"],
)
def test_corruption_on_disk_is_detected_on_read(
    store: Store, data: bytes, damage: Callable[[bytes], bytes]
) -> None:
    digest, _ = chunk(data)
    other = chunk(b"an intact neighbour")
    store.chunks.put_many([chunk(data), other])
    overwrite(store, digest, damage(stored_value(store, digest)))
    with pytest.raises(StoreError) as exc:
        store.chunks.get(digest)
    assert str(exc.value).startswith(f"chunk {digest.hex()[:12]}: corrupt in store (")
    with pytest.raises(StoreError, match="corrupt in store"):
        store.chunks.get_many([other[0], digest])
    with pytest.raises(StoreError, match="corrupt in store"):
        store.chunks.read(digest, 0, len(data))
    assert store.chunks.get(other[0]) == other[1]


def test_chunks_from_many_threads(store: Store) -> None:
    """Callers compress in worker threads; zstd contexts are per thread."""
    datas = [TEXT[: MiB - i * 1000] + bytes([i]) for i in range(24)] + [blob(MiB // 4, 9)]
    errors: list[BaseException] = []

    def work(k: int) -> None:
        try:
            for start in range(k % 3, len(datas), 3):
                store.chunks.put_many([chunk(d) for d in datas[start : start + 3]])
            for d in datas:
                got = store.chunks.get_many([chunk(d)[0]])
                assert got in ({}, {chunk(d)[0]: d})
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert store.chunks.stats().count == len(datas)
    assert store.chunks.get_many(chunk(d)[0] for d in datas) == dict(map(chunk, datas))
