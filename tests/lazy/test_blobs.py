from __future__ import annotations

import os

import httpx
import pytest

from fusesnap import oci
from fusesnap.digest import Digest
from fusesnap.errors import DigestMismatchError, RegistryError, RegistryUnavailableError
from fusesnap.oci import Descriptor
from tests.lazy.conftest import REF, Connect
from tests.lazy.fakeregistry import BrokenStream, FakeRegistry, MemorySink

DATA = os.urandom(300_000)


def _first_blob_get(response: httpx.Response):
    """A hook that answers the first blob GET with ``response``."""
    used = [False]

    def hook(request: httpx.Request) -> httpx.Response | None:
        if used[0] or "/blobs/sha256" not in request.url.path or request.method != "GET":
            return None
        used[0] = True
        return response

    return hook


@pytest.fixture
def blob(fake: FakeRegistry) -> Descriptor:
    return fake.add_blob(DATA)


# -- get_blob ---------------------------------------------------------------------


async def test_get_blob(fake: FakeRegistry, connect: Connect) -> None:
    config = fake.add_blob(b'{"a": 1}', oci.OCI_CONFIG)
    async with connect() as client:
        assert await client.get_blob(REF, config) == b'{"a": 1}'
    assert fake.requests[0].url.path == f"/v2/team/app/blobs/{config.digest}"


async def test_get_blob_wrong_content(fake: FakeRegistry, connect: Connect) -> None:
    config = fake.add_blob(b'{"a": 1}', oci.OCI_CONFIG)
    fake.blobs[config.digest] = b'{"a": 2}'
    async with connect() as client:
        with pytest.raises(DigestMismatchError, match="digest mismatch"):
            await client.get_blob(REF, config)


async def test_get_blob_stops_reading_past_size(fake: FakeRegistry, connect: Connect) -> None:
    config = fake.add_blob(b"x" * 100, oci.OCI_CONFIG)
    served = [0]

    async def endless():
        while True:
            served[0] += 1
            yield b"x" * 100

    fake.hooks.append(lambda request: httpx.Response(200, content=endless()))
    async with connect() as client:
        with pytest.raises(DigestMismatchError, match="size mismatch"):
            await client.get_blob(REF, config)
    assert served[0] <= 2


# -- download_blob ----------------------------------------------------------------


async def test_download_blob_whole_with_progress(connect: Connect, blob: Descriptor) -> None:
    sink = MemorySink()
    seen: list[int] = []
    async with connect() as client:
        await client.download_blob(REF, blob, sink, progress=seen.append)
    assert bytes(sink.data) == DATA
    assert sum(seen) == len(DATA)


async def test_download_blob_resumes_after_dropped_connection(
    fake: FakeRegistry, connect: Connect, blob: Descriptor
) -> None:
    fake.hooks.append(_first_blob_get(httpx.Response(200, stream=BrokenStream(DATA, 100_000))))
    sink = MemorySink()
    seen: list[int] = []
    async with connect() as client:
        await client.download_blob(REF, blob, sink, progress=seen.append)
    assert bytes(sink.data) == DATA
    assert sum(seen) == len(DATA)
    assert sink.resets == 0
    (second,) = fake.requests  # the first went to the hook
    assert second.headers["range"] == "bytes=100000-"


async def test_download_blob_resumes_from_sink_offset(
    fake: FakeRegistry, connect: Connect, blob: Descriptor
) -> None:
    sink = MemorySink(DATA[:1234])
    async with connect() as client:
        await client.download_blob(REF, blob, sink)
    assert bytes(sink.data) == DATA
    assert fake.requests[0].headers["range"] == "bytes=1234-"
    assert fake.requests[0].headers["accept-encoding"] == "identity"


async def test_download_blob_server_ignores_range(
    fake: FakeRegistry, connect: Connect, blob: Descriptor
) -> None:
    fake.ignore_range = True
    sink = MemorySink(DATA[:1234])
    async with connect() as client:
        await client.download_blob(REF, blob, sink)
    assert sink.resets == 1
    assert bytes(sink.data) == DATA


async def test_download_blob_already_complete(
    fake: FakeRegistry, connect: Connect, blob: Descriptor
) -> None:
    sink = MemorySink(DATA)
    async with connect() as client:
        await client.download_blob(REF, blob, sink)
    assert fake.requests == []


async def test_download_blob_never_writes_past_size(
    fake: FakeRegistry, connect: Connect, blob: Descriptor
) -> None:
    fake.blobs[blob.digest] = DATA + b"extra"
    sink = MemorySink()
    async with connect() as client:
        with pytest.raises(DigestMismatchError, match="more than"):
            await client.download_blob(REF, blob, sink)
    assert sink.offset <= blob.size


async def test_download_blob_short_body_is_retried(
    fake: FakeRegistry, connect: Connect, blob: Descriptor
) -> None:
    fake.hooks.append(_first_blob_get(httpx.Response(200, content=DATA[:500])))
    sink = MemorySink()
    async with connect() as client:
        await client.download_blob(REF, blob, sink)
    assert bytes(sink.data) == DATA
    assert fake.requests[0].headers["range"] == "bytes=500-"


async def test_download_blob_gives_up(
    fake: FakeRegistry, connect: Connect, blob: Descriptor
) -> None:
    def always_break(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, stream=BrokenStream(DATA, 0, httpx.RemoteProtocolError))

    fake.hooks.append(always_break)
    async with connect(attempts=3) as client:
        with pytest.raises(RegistryUnavailableError, match="giving up after 3 attempts"):
            await client.download_blob(REF, blob, MemorySink())


# -- read_range -------------------------------------------------------------------


async def test_read_range(fake: FakeRegistry, connect: Connect, blob: Descriptor) -> None:
    async with connect() as client:
        assert await client.read_range(REF, blob.digest, 1000, 5000) == DATA[1000:6000]
        assert await client.read_range(REF, blob.digest, 0, 0) == b""
    assert fake.requests[0].headers["range"] == "bytes=1000-5999"


async def test_read_range_server_ignores_range(
    fake: FakeRegistry, connect: Connect, blob: Descriptor
) -> None:
    fake.ignore_range = True
    async with connect() as client:
        assert await client.read_range(REF, blob.digest, 1000, 5000) == DATA[1000:6000]


async def test_read_range_past_end(fake: FakeRegistry, connect: Connect, blob: Descriptor) -> None:
    async with connect() as client:
        with pytest.raises(RegistryError, match="server sent bytes"):
            await client.read_range(REF, blob.digest, len(DATA) - 10, 20)
        with pytest.raises(RegistryError, match="HTTP 416"):
            await client.read_range(REF, blob.digest, len(DATA) + 10, 20)


async def test_read_range_retries_dropped_connection(
    fake: FakeRegistry, connect: Connect, blob: Descriptor
) -> None:
    fake.hooks.append(
        _first_blob_get(
            httpx.Response(
                206,
                headers={"Content-Range": f"bytes 0-9999/{len(DATA)}"},
                stream=BrokenStream(DATA, 10),
            )
        )
    )
    async with connect() as client:
        assert await client.read_range(REF, blob.digest, 0, 10_000) == DATA[:10_000]


async def test_read_range_unknown_blob(fake: FakeRegistry, connect: Connect) -> None:
    from fusesnap.errors import RegistryNotFoundError

    async with connect() as client:
        with pytest.raises(RegistryNotFoundError, match="BLOB_UNKNOWN"):
            await client.read_range(REF, Digest.of(b"nope"), 0, 10)


@pytest.mark.parametrize(("offset", "length"), [(0, 1), (999, 2), (1000, 1000), (12_345, 54_321)])
async def test_read_range_slices_a_streamed_200(
    fake: FakeRegistry, connect: Connect, blob: Descriptor, offset: int, length: int
) -> None:
    async def chunks():
        for i in range(0, len(DATA), 1000):
            yield DATA[i : i + 1000]

    fake.hooks.append(lambda request: httpx.Response(200, content=chunks()))
    async with connect() as client:
        got = await client.read_range(REF, blob.digest, offset, length)
    assert got == DATA[offset : offset + length]
