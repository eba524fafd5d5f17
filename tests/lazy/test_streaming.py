"""A layer indexed while it downloads (`fusesnap.pull.streaming`): dropped connections,
resumed partial files, a registry that will not resume, bad bytes; and the pipe itself.
Against `FakeRegistry` and a real store."""

from __future__ import annotations

import io
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from fusesnap.errors import DigestMismatchError
from fusesnap.index import LayerIndex, build_index
from fusesnap.oci import Descriptor
from fusesnap.pull.indexsource import stream_layer
from fusesnap.pull.streaming import BlobPipe, PipeBroken
from fusesnap.store import Store, open_store
from tests.lazy.conftest import REF, Connect
from tests.lazy.fakeregistry import BrokenStream, FakeRegistry
from tests.lazy.fetcherhelpers import Layer, gzip_layer, text
from tests.lazy.test_artifact import add_image


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with open_store(tmp_path / "root") as s:
        yield s


def big_layer() -> Layer:
    """~3 MB of gzip: several pipe pieces and chunk batches."""
    return gzip_layer([(f"d/{i}", text(900_000 + i, i)) for i in range(10)])


def expected(lay: Layer) -> LayerIndex:
    return build_index(io.BytesIO(lay.blob), layer_digest=str(lay.index.layer_digest),
                       media_type=lay.index.media_type)  # fmt: skip


def blob_gets(fake: FakeRegistry, desc: Descriptor) -> list[str | None]:
    return [r.headers.get("range") for r in fake.requests
            if r.method == "GET" and r.url.path.endswith(f"/blobs/{desc.digest}")]  # fmt: skip


def assert_stored(store: Store, desc: Descriptor, index: LayerIndex, lay: Layer) -> None:
    want = expected(lay)
    assert index.entries == want.entries
    assert index.diff_id == want.diff_id
    assert index.without_windows().checkpoints == want.without_windows().checkpoints
    assert store.layers.exists(desc.digest)
    presence = store.layers.present_chunks(desc.digest)
    assert presence.present == presence.total > 0
    assert index.window_digests()
    assert store.chunks.missing(index.window_digests()) == set()
    assert store.content.ingests() == []  # the partial file went once the layer was in


def partial_file(store: Store, desc: Descriptor, data: bytes) -> None:
    """What a pull killed after ``len(data)`` bytes leaves."""
    writer = store.content.writer(desc.digest, size=desc.size, media_type=desc.media_type)
    writer.write(data)
    writer.close()


async def test_a_layer_is_indexed_as_it_downloads(fake, connect: Connect, store: Store) -> None:
    lay = big_layer()
    _, (desc,) = add_image(fake, [lay])
    async with connect() as client:
        index = await stream_layer(store, client, REF, desc, lay.index.diff_id)
    assert_stored(store, desc, index, lay)
    assert blob_gets(fake, desc) == [None]  # one request, no read-back


async def test_a_dropped_connection_resumes_into_the_same_pass(
    fake: FakeRegistry, connect: Connect, store: Store
) -> None:
    lay = big_layer()
    _, (desc,) = add_image(fake, [lay])
    used = [False]

    def drop_first(request: httpx.Request) -> httpx.Response | None:
        if used[0] or not request.url.path.endswith(f"/blobs/{desc.digest}"):
            return None
        used[0] = True
        return httpx.Response(200, stream=BrokenStream(lay.blob, 1_500_000))

    fake.hooks.append(drop_first)
    async with connect() as client:
        index = await stream_layer(store, client, REF, desc, lay.index.diff_id)
    assert_stored(store, desc, index, lay)
    assert blob_gets(fake, desc) == ["bytes=1500000-"]  # the first went to the hook


async def test_a_partial_file_is_resumed(fake, connect: Connect, store: Store) -> None:
    lay = big_layer()
    _, (desc,) = add_image(fake, [lay])
    partial_file(store, desc, lay.blob[:1_000_000])
    async with connect() as client:
        index = await stream_layer(store, client, REF, desc, lay.index.diff_id)
    assert_stored(store, desc, index, lay)
    assert blob_gets(fake, desc) == ["bytes=1000000-"]


async def test_a_registry_that_will_not_resume_makes_it_start_over(
    fake: FakeRegistry, connect: Connect, store: Store
) -> None:
    lay = big_layer()
    _, (desc,) = add_image(fake, [lay])
    partial_file(store, desc, lay.blob[:1_000_000])
    fake.ignore_range = True
    async with connect() as client:
        index = await stream_layer(store, client, REF, desc, lay.index.diff_id)
    assert_stored(store, desc, index, lay)
    assert blob_gets(fake, desc) == ["bytes=1000000-", None]


async def test_bad_bytes_are_refused_and_the_partial_file_dropped(
    fake: FakeRegistry, connect: Connect, store: Store
) -> None:
    lay = big_layer()
    _, (desc,) = add_image(fake, [lay])
    bad = bytearray(lay.blob)
    bad[len(bad) // 2] ^= 0xFF
    fake.blobs[desc.digest] = bytes(bad)
    async with connect() as client:
        with pytest.raises(DigestMismatchError, match=desc.digest.short):
            await stream_layer(store, client, REF, desc, lay.index.diff_id)
    assert not store.layers.exists(desc.digest)
    assert store.content.ingests() == []


def test_pipe_hands_bytes_over_in_order_and_bounds_what_it_holds() -> None:
    pipe = BlobPipe(limit=10)
    pieces = [bytes([i]) * 7 for i in range(20)]
    most = [0]

    def writer() -> None:
        for piece in pieces:
            pipe.write(piece)
            most[0] = max(most[0], pipe._size)
        pipe.close()

    thread = threading.Thread(target=writer)
    thread.start()
    got = bytearray()
    while data := pipe.read(5):
        got += data
    thread.join()
    assert bytes(got) == b"".join(pieces)
    assert most[0] <= 10 + 7


def test_pipe_failures_reach_the_other_side() -> None:
    pipe = BlobPipe()
    pipe.fail("download stopped")
    with pytest.raises(PipeBroken, match="download stopped"):
        pipe.read(10)
    pipe = BlobPipe(limit=1)
    pipe.write(b"ab")
    done: list[BaseException] = []

    def blocked_writer() -> None:
        try:
            pipe.write(b"cd")  # full: waits for a reader
        except BaseException as exc:
            done.append(exc)

    thread = threading.Thread(target=blocked_writer)
    thread.start()
    pipe.abandon(ValueError("indexer gave up"))
    thread.join(10)
    assert not thread.is_alive()
    assert isinstance(done[0], ValueError)
