"""Layer records on a real LMDB, and storing a downloaded layer as an index
plus chunks (`ContentWriter.verified_path`)."""

from __future__ import annotations

import dataclasses
import hashlib
import time

import pytest

from fusesnap.digest import Digest
from fusesnap.errors import AlreadyExistsError, DigestMismatchError, NotFoundError, StoreError
from fusesnap.store import ChunkPresence, LayerRecord, Resource, Store, collect_garbage
from fusesnap.store.schema import LAYER_DATA, SEGMENT_SIZE, layer_data_key

from .helpers import MiB, blob, chunk, image, layer_digest, layer_record, put_layer_manifest


def data_keys(store: Store) -> list[bytes]:
    return [k for k, _ in store.env.iter_items(LAYER_DATA)]


def test_put_get_info_exists_delete(store: Store) -> None:
    digests = [chunk(blob(10, i))[0] for i in range(5)]
    record = layer_record("a", digests)
    before = time.time()
    info = store.layers.put(record)
    assert before <= info.created <= time.time()
    assert (info.index_size, info.chunk_count) == (len(record.index), 5)
    got = store.layers.get(record.digest)
    assert got == dataclasses.replace(record, created=info.created)
    assert store.layers.info(record.digest) == info
    assert store.layers.index(record.digest) == record.index
    assert list(store.layers.chunk_digests(record.digest)) == sorted(digests)
    assert store.layers.exists(record.digest)
    assert store.layers.delete(record.digest) == info
    assert not store.layers.exists(record.digest)
    assert data_keys(store) == []


def test_missing_layer_raises_not_found_naming_it(store: Store) -> None:
    digest = layer_digest("nope")
    for call in (
        lambda: store.layers.get(digest),
        lambda: store.layers.info(digest),
        lambda: store.layers.index(digest),
        lambda: store.layers.chunk_digests(digest),  # eagerly
        lambda: store.layers.present_chunks(digest),
        lambda: store.layers.delete(digest),
    ):
        with pytest.raises(NotFoundError) as exc:
            call()
        assert str(exc.value) == f"layer {digest.short}: not found"


def test_list_reads_headers_only(store: Store) -> None:
    big_index = blob(3 * MiB + 5, 1)  # segmented: 4 segments
    a = store.layers.put(layer_record("a", [chunk(b"1")[0]], index=big_index))
    b = store.layers.put(layer_record("b", []))
    assert len([k for k in data_keys(store) if k.startswith(a.digest.encode())]) == 4 + 1
    assert store.layers.get(a.digest).index == big_index
    # Wipe every index and chunk list: listing must not notice.
    with store.env.txn(write=True) as txn:
        txn.drop(store.env.db(LAYER_DATA), delete=False)
    assert store.layers.list() == sorted([a, b], key=lambda i: i.digest)
    with pytest.raises(StoreError, match=f"layer {a.digest.short}: index segment 0 missing"):
        store.layers.get(a.digest)


def test_corrupt_index_or_chunk_list_is_detected(store: Store) -> None:
    record = layer_record("a", [chunk(b"1")[0], chunk(b"2")[0]])
    store.layers.put(record)
    with store.env.txn(write=True) as txn:
        key = layer_data_key(record.digest, b"i", 0)
        txn.put(key, b"X" + record.index[1:], db=store.env.db(LAYER_DATA))
    with pytest.raises(StoreError) as exc:
        store.layers.get(record.digest)
    assert (
        str(exc.value) == f"layer {record.digest.short}: index corrupt in store (digest mismatch)"
    )
    assert len(list(store.layers.chunk_digests(record.digest))) == 2  # the other part is fine
    with store.env.txn(write=True) as txn:
        key = layer_data_key(record.digest, b"c", 0)
        txn.put(key, record.chunks[:-1] + b"\0", db=store.env.db(LAYER_DATA))
    with pytest.raises(StoreError, match="chunk list corrupt in store"):
        store.layers.chunk_digests(record.digest)


def test_put_replaces_the_old_record_and_its_parts(store: Store) -> None:
    old = layer_record("a", [chunk(b"1")[0]], index=blob(2 * MiB + 1, 2))
    store.layers.put(old)
    new = dataclasses.replace(
        layer_record("a", [chunk(b"2")[0], chunk(b"3")[0]], index=b"small"), source="artifact"
    )
    store.layers.put(new)
    got = store.layers.get(old.digest)
    assert (got.index, got.chunks, got.source) == (new.index, new.chunks, "artifact")
    assert len(data_keys(store)) == 2  # old segments 1 and 2 are gone
    assert len(store.layers.list()) == 1


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ({"source": "guessed"}, "unknown source 'guessed'"),
        ({"size": -1}, "negative size"),
        ({"chunks": b"x" * 33}, "not a multiple of 32 bytes"),
        ({"chunks": b"b" * 32 + b"a" * 32}, "not sorted and unique"),
        ({"chunks": b"a" * 64}, "not sorted and unique"),
    ],
)
def test_put_rejects_malformed_records(store: Store, change: dict[str, object], error: str) -> None:
    with pytest.raises(ValueError, match=error):
        store.layers.put(dataclasses.replace(layer_record("a", []), **change))  # type: ignore[arg-type]
    assert store.layers.list() == []


def test_present_chunks(store: Store) -> None:
    text = b"compressible " * 50_000
    rnd = blob(70_000, 3)
    absent = chunk(b"not fetched yet")[0]
    store.chunks.put_many([chunk(text), chunk(rnd)])
    record = layer_record("a", [chunk(text)[0], chunk(rnd)[0], absent])
    store.layers.put(record)
    presence = store.layers.present_chunks(record.digest)
    assert presence[:3] == (2, 3, len(text) + len(rnd))
    assert presence == ChunkPresence(2, 3, len(text) + len(rnd), store.chunks.stats().stored_bytes)
    assert presence.stored_bytes < len(text) // 10 + len(rnd) + 2


# -- a downloaded layer becomes an index plus chunks -----------------------------


def download(store: Store, data: bytes, digest: Digest | None = None) -> Digest:
    """Start a pull: write ``data`` to a writer for ``digest`` and keep it."""
    digest = digest or Digest.of(data)
    with store.content.writer(digest, size=len(data), media_type="layer") as w:
        w.write(data)
    return digest


def test_verified_path_flow_stores_index_and_chunks_not_a_blob(store: Store) -> None:
    data = blob(3 * MiB + 123, 5) + b"tail " * 1000
    with store.leases.lease() as lease:
        digest = download(store, data)
        store.leases.add_resource(lease.id, Resource.layer(digest))
        with store.content.writer(digest, size=len(data), media_type="layer") as w:
            path = w.verified_path()
            assert path == w.path
            assert path.read_bytes() == data
            with pytest.raises(AlreadyExistsError):  # still locked against other writers
                store.content.writer(digest, size=len(data), media_type="layer", wait=0)
            with pytest.raises(ValueError, match="no more writes"):
                w.write(b"more")
            # The caller's index builder: here, fixed 1 MiB chunks.
            with path.open("rb") as f:
                pieces = list(iter(lambda: f.read(SEGMENT_SIZE), b""))
            store.chunks.put_many(chunk(p) for p in pieces)
            store.layers.put(
                LayerRecord(
                    digest=digest,
                    diff_id=Digest.of(data),
                    media_type="layer",
                    size=len(data),
                    uncompressed_size=len(data),
                    entry_count=1,
                    source="built",
                    index=b"one file",
                    chunks=b"".join(sorted({chunk(p)[0] for p in pieces})),
                )
            )
            w.abort()
        assert not path.exists()
        store.images.put(image("img", put_layer_manifest(store, b"{}", [digest])))
    assert not store.content.exists(digest)  # never a blob
    assert collect_garbage(store).removed_chunks.count == 0
    chunks = list(store.layers.chunk_digests(digest))
    assert b"".join(store.chunks.get_many(chunks)[hashlib.sha256(p).digest()] for p in pieces) == (
        data
    )


def test_verified_path_mismatch_deletes_the_file_and_stores_nothing(store: Store) -> None:
    promised = Digest.of(b"the layer the manifest names")
    download(store, b"something else, same length!", promised)
    with store.content.writer(promised, size=28, media_type="layer") as w:
        assert w.offset == 28
        path = w.path
        with pytest.raises(DigestMismatchError, match=f"content {promised.short}: digest mismatch"):
            w.verified_path()
        with pytest.raises(ValueError, match="closed"):
            w.verified_path()
    assert not path.exists()
    assert store.content.ingests() == []
    assert not store.content.exists(promised)


def test_verified_path_rehashes_the_file_on_disk(store: Store) -> None:
    data = blob(100_000, 6)
    digest = Digest.of(data)
    with store.content.writer(digest, size=len(data), media_type="layer") as w:
        w.write(data)
        with w.path.open("r+b") as f:  # changed behind the writer's back
            f.seek(500)
            f.write(b"!")
        with pytest.raises(DigestMismatchError, match="digest mismatch"):
            w.verified_path()
        assert not w.path.exists()
