from __future__ import annotations

import os
import threading

import pytest

from fusesnap.digest import Digest
from fusesnap.errors import AlreadyExistsError, DigestMismatchError, NotFoundError
from fusesnap.store import Store
from fusesnap.store.schema import BLOBS, SEGMENT_SIZE, blob_prefix

from .helpers import MiB, blob, put, run_python

BIG = 3 * MiB + MiB // 2


def segment_keys(store: Store, digest: Digest) -> list[bytes]:
    prefix = blob_prefix(digest)
    return [k for k, _ in store.env.iter_items(BLOBS, prefix=prefix)]


def ingest(store: Store, data: bytes, *, piece: int = 100_000) -> None:
    digest = Digest.of(data)
    with store.content.writer(digest, size=len(data), media_type="x") as w:
        for i in range(0, len(data), piece):
            w.write(data[i : i + piece])
        w.commit()


@pytest.mark.parametrize("size", [0, 1, 1000, SEGMENT_SIZE, SEGMENT_SIZE + 1, BIG])
def test_put_and_read_back(store: Store, size: int) -> None:
    data = blob(size, seed=size)
    info = put(store, data, "application/x-test")
    assert info.digest == Digest.of(data)
    assert info.size == size
    assert info.segments == -(-size // SEGMENT_SIZE)
    assert store.content.info(info.digest) == info
    assert store.content.read(info.digest) == data
    assert b"".join(store.content.iter_bytes(info.digest)) == data
    assert len(segment_keys(store, info.digest)) == info.segments


@pytest.mark.parametrize("size", [10, 200_000, BIG])
def test_writer_ingest_and_read_back(store: Store, size: int) -> None:
    data = blob(size, seed=7)
    ingest(store, data)
    digest = Digest.of(data)
    assert store.content.read(digest) == data
    assert store.content.info(digest).media_type == "x"
    assert store.content.ingests() == []
    assert list(store.env.ingest_dir.iterdir()) == []


@pytest.mark.parametrize(
    ("offset", "size"),
    [
        (0, 10),
        (SEGMENT_SIZE - 3, 6),  # straddles the first boundary
        (SEGMENT_SIZE, SEGMENT_SIZE),  # exactly one segment
        (SEGMENT_SIZE - 1, 2 * SEGMENT_SIZE + 2),  # spans four segments
        (BIG - 5, 100),  # short at the end
        (BIG, 10),  # at the end: empty
        (BIG + 10, 10),  # past the end: empty
        (123, 0),
    ],
)
def test_read_at_across_segments(store: Store, offset: int, size: int) -> None:
    data = blob(BIG, seed=1)
    digest = put(store, data).digest
    assert store.content.read_at(digest, offset, size) == data[offset : offset + size]


@pytest.mark.parametrize("start", [0, 5, SEGMENT_SIZE, SEGMENT_SIZE + 7, BIG - 1, BIG, BIG + 3])
def test_iter_bytes_from_start(store: Store, start: int) -> None:
    data = blob(BIG, seed=2)
    digest = put(store, data).digest
    pieces = list(store.content.iter_bytes(digest, start=start))
    assert b"".join(pieces) == data[start:]
    assert all(len(p) <= SEGMENT_SIZE for p in pieces)


def test_iter_bytes_raises_when_deleted_mid_stream(store: Store) -> None:
    digest = put(store, blob(BIG)).digest
    stream = store.content.iter_bytes(digest)
    next(stream)
    store.content.delete(digest)
    with pytest.raises(NotFoundError, match="not found"):
        next(stream)


def test_missing_content_raises_not_found_naming_it(store: Store) -> None:
    digest = Digest.of(b"nope")
    msg = f"content {digest.short}: not found"
    assert not store.content.exists(digest)
    for call in (
        lambda: store.content.info(digest),
        lambda: store.content.read(digest),
        lambda: store.content.read_at(digest, 0, 1),
        lambda: store.content.iter_bytes(digest),  # eagerly, not on first next()
        lambda: store.content.delete(digest),
    ):
        with pytest.raises(NotFoundError) as exc:
            call()
        assert str(exc.value) == msg


def test_put_rejects_wrong_digest_and_stores_nothing(store: Store) -> None:
    wrong = Digest.of(b"other")
    with pytest.raises(DigestMismatchError):
        store.content.put(b"data", digest=wrong, media_type="x")
    assert not store.content.exists(wrong)
    assert list(store.content.list()) == []
    assert segment_keys(store, wrong) == []


def test_put_is_idempotent(store: Store) -> None:
    first = put(store, b"abc", "type/one")
    second = store.content.put(b"abc", digest=first.digest, media_type="type/two")
    assert second == first
    assert second.media_type == "type/one"
    assert len(list(store.content.list())) == 1


def test_list_and_delete(store: Store) -> None:
    infos = [put(store, blob(n * 1000 + 1, seed=n)) for n in range(5)]
    big = put(store, blob(BIG, seed=99))
    listed = list(store.content.list())
    assert sorted(i.digest for i in listed) == sorted(i.digest for i in [*infos, big])
    assert [i.digest for i in listed] == sorted(i.digest for i in listed)

    removed = store.content.delete(big.digest)
    assert removed.digest == big.digest
    assert not store.content.exists(big.digest)
    assert segment_keys(store, big.digest) == []
    assert len(list(store.content.list())) == 5
    for info in infos:  # neighbours untouched
        assert Digest.of(store.content.read(info.digest)) == info.digest


def test_list_pages_through_many_items(store: Store) -> None:
    digests = {put(store, str(i).encode()).digest for i in range(700)}  # > 2 batches
    assert {i.digest for i in store.content.list()} == digests


def test_digest_mismatch_on_commit_stores_nothing(store: Store) -> None:
    data = blob(BIG, seed=3)
    digest = Digest.of(data)
    bad = bytearray(data)
    bad[SEGMENT_SIZE + 5] ^= 1
    w = store.content.writer(digest, size=len(data), media_type="x")
    w.write(bytes(bad))
    with pytest.raises(DigestMismatchError, match="digest mismatch"):
        w.commit()
    assert not store.content.exists(digest)
    assert segment_keys(store, digest) == []
    assert store.content.ingests() == []
    assert not (store.env.ingest_dir / f"sha256-{digest.hex}").exists()
    with pytest.raises(ValueError, match="closed"):
        w.write(b"x")


def test_size_mismatch_short_stores_nothing(store: Store) -> None:
    data = blob(5000)
    digest = Digest.of(data)
    w = store.content.writer(digest, size=len(data) + 1, media_type="x")
    w.write(data)
    with pytest.raises(DigestMismatchError, match="size mismatch"):
        w.commit()
    assert not store.content.exists(digest)
    assert store.content.ingests() == []


def test_size_mismatch_too_many_bytes_fails_at_write(store: Store) -> None:
    data = blob(5000)
    digest = Digest.of(data)
    w = store.content.writer(digest, size=100, media_type="x")
    w.write(data[:100])
    with pytest.raises(DigestMismatchError, match="size mismatch"):
        w.write(data[100:200])
    assert store.content.ingests() == []
    assert not store.content.exists(digest)


def test_resume_partial_ingest(store: Store) -> None:
    data = blob(BIG, seed=4)
    digest = Digest.of(data)
    half = len(data) // 2
    with store.content.writer(digest, size=len(data), media_type="x") as w:
        w.write(data[:half])
    # Leaving the block without commit keeps the partial file.
    [partial] = store.content.ingests()
    assert (partial.digest, partial.offset, partial.locked) == (digest, half, False)
    assert not store.content.exists(digest)

    with store.content.writer(digest, size=len(data), media_type="x") as w:
        assert w.offset == half
        w.write(data[half:])
        info = w.commit()
    assert info.size == len(data)
    assert store.content.read(digest) == data
    assert store.content.ingests() == []


def test_resume_with_corrupt_partial_fails_at_commit(store: Store) -> None:
    data = blob(10_000, seed=5)
    digest = Digest.of(data)
    path = store.env.ingest_dir / f"sha256-{digest.hex}"
    path.write_bytes(b"\0" * 4000)  # e.g. zeros after a power cut
    with store.content.writer(digest, size=len(data), media_type="x") as w:
        assert w.offset == 4000
        w.write(data[4000:])
        with pytest.raises(DigestMismatchError):
            w.commit()
    assert not path.exists()
    assert not store.content.exists(digest)


def test_partial_longer_than_expected_size_starts_over(store: Store) -> None:
    data = blob(1000)
    digest = Digest.of(data)
    (store.env.ingest_dir / f"sha256-{digest.hex}").write_bytes(b"x" * 2000)
    with store.content.writer(digest, size=len(data), media_type="x") as w:
        assert w.offset == 0


def test_reset_and_truncate(store: Store) -> None:
    data = blob(300_000, seed=6)
    digest = Digest.of(data)
    with store.content.writer(digest, size=len(data), media_type="x") as w:
        w.write(data[:1000])
        w.write(b"garbage")
        w.truncate(1000)  # drop the tail, keep the hash of the rest right
        assert w.offset == 1000
        w.write(data[1000:2000])
        w.reset()  # the server ignored Range: it sends everything again
        assert w.offset == 0
        w.write(data)
        assert w.commit().size == len(data)
    assert store.content.read(digest) == data


def test_abort_removes_partial(store: Store) -> None:
    digest = Digest.of(b"abc")
    w = store.content.writer(digest, size=3, media_type="x")
    w.write(b"a")
    w.abort()
    assert store.content.ingests() == []
    w.abort()  # idempotent


def test_commit_of_already_stored_digest_returns_existing(store: Store) -> None:
    info = put(store, b"hello", "first")
    with store.content.writer(info.digest, size=5, media_type="second") as w:
        w.write(b"hello")
        assert w.commit() == info
    assert store.content.ingests() == []


def test_commit_with_unknown_size(store: Store) -> None:
    data = blob(50_000)
    with store.content.writer(Digest.of(data), size=None, media_type="x") as w:
        w.write(data)
        assert w.commit(labels={"k": "v"}).labels == {"k": "v"}


def test_second_writer_on_same_digest_is_refused(store: Store) -> None:
    digest = Digest.of(b"payload")
    with store.content.writer(digest, size=7, media_type="x") as w:
        w.write(b"pay")
        with pytest.raises(AlreadyExistsError, match=f"ingest {digest.short}: locked"):
            store.content.writer(digest, size=7, media_type="x", wait=0.1)
        assert store.content.ingests()[0].locked
        w.write(b"load")
        w.commit()
    assert store.content.read(digest) == b"payload"


def test_second_writer_waits_for_the_first(store: Store) -> None:
    data = b"payload"
    digest = Digest.of(data)
    first = store.content.writer(digest, size=7, media_type="x")
    first.write(b"pay")
    timer = threading.Timer(0.2, first.close)
    timer.start()
    try:
        with store.content.writer(digest, size=7, media_type="x", wait=10) as second:
            assert second.offset == 3  # resumes what the first wrote
            second.write(b"load")
            second.commit()
    finally:
        timer.cancel()
    assert store.content.read(digest) == data


def test_writer_in_another_process_is_refused(store: Store) -> None:
    digest = Digest.of(b"payload")
    code = """
import sys
from fusesnap.digest import Digest
from fusesnap.errors import AlreadyExistsError
from fusesnap.store import open_store
with open_store(sys.argv[1]) as s:
    try:
        s.content.writer(Digest(sys.argv[2]), size=7, media_type="x", wait=0.2)
    except AlreadyExistsError as exc:
        print("refused", exc)
"""
    with store.content.writer(digest, size=7, media_type="x") as w:
        w.write(b"pay")
        proc = run_python(code, str(store.root), digest)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.startswith("refused ingest sha256:"), proc.stdout
        w.write(b"load")
        w.commit()


def test_remove_ingest(store: Store) -> None:
    digest = Digest.of(b"abc")
    with store.content.writer(digest, size=3, media_type="x") as w:
        w.write(b"a")
        with pytest.raises(AlreadyExistsError):
            store.content.remove_ingest(digest)
    store.content.remove_ingest(digest)
    assert store.content.ingests() == []
    with pytest.raises(NotFoundError, match=f"ingest {digest.short}: not found"):
        store.content.remove_ingest(digest)


def test_ingests_ignores_foreign_files(store: Store) -> None:
    (store.env.ingest_dir / "notes.txt").write_text("hi")
    (store.env.ingest_dir / "sha256-zz").write_text("hi")
    assert store.content.ingests() == []


def test_writer_never_writes_to_an_unlinked_file(store: Store) -> None:
    """A writer that opened the path just before its holder unlinked it must
    not end up writing to the orphaned inode."""
    data = blob(1000)
    digest = Digest.of(data)
    first = store.content.writer(digest, size=len(data), media_type="x")
    first.write(data[:10])
    stale_fd = os.open(first.path, os.O_RDONLY)  # like a racer between open and flock
    try:
        first.abort()
        with store.content.writer(digest, size=len(data), media_type="x") as w:
            assert w.offset == 0
            assert os.fstat(stale_fd).st_nlink == 0
            w.write(data)
            w.commit()
    finally:
        os.close(stale_fd)
    assert store.content.read(digest) == data
