from __future__ import annotations

import email.utils

import httpx
import pytest

from fusesnap.errors import RegistryNotFoundError, RegistryUnavailableError
from fusesnap.registry.retry import RetryPolicy, parse_retry_after
from tests.lazy.conftest import REF, Connect, Sleeps
from tests.lazy.fakeregistry import FakeRegistry, fail_times


@pytest.fixture(autouse=True)
def _image(fake: FakeRegistry) -> None:
    fake.add_image("team/app", tags=("1.0",))


@pytest.mark.parametrize("status", [500, 502, 503, 504])
async def test_server_errors_then_success(
    fake: FakeRegistry, connect: Connect, sleeps: Sleeps, status: int
) -> None:
    fake.hooks.append(fail_times(3, status=status))
    async with connect(attempts=4) as client:
        await client.get_manifest(REF)
    assert sleeps.delays == [0.01, 0.02, 0.04]


async def test_429_honours_retry_after_seconds_and_cap(
    fake: FakeRegistry, connect: Connect, sleeps: Sleeps
) -> None:
    fake.hooks.append(fail_times(1, status=429, headers={"Retry-After": "7"}))
    fake.hooks.append(fail_times(1, status=429, headers={"Retry-After": "1000"}))
    async with connect() as client:
        await client.get_manifest(REF)
    assert sleeps.delays == [7.0, 30.0]


async def test_429_retry_after_http_date(
    fake: FakeRegistry, connect: Connect, sleeps: Sleeps
) -> None:
    import time

    when = email.utils.formatdate(time.time() + 20, usegmt=True)
    fake.hooks.append(fail_times(1, status=429, headers={"Retry-After": when}))
    async with connect() as client:
        await client.get_manifest(REF)
    assert 18 <= sleeps.delays[0] <= 20


@pytest.mark.parametrize(
    "exc",
    [
        httpx.ReadError("reset"),
        httpx.RemoteProtocolError("peer closed connection"),
        httpx.ConnectError("refused"),
        httpx.ReadTimeout("slow"),
    ],
)
async def test_transport_errors_then_success(
    fake: FakeRegistry, connect: Connect, exc: Exception
) -> None:
    fake.hooks.append(fail_times(2, exc=exc))
    async with connect() as client:
        desc, _ = await client.get_manifest(REF)
    assert desc.size > 0
    assert len(fake.requests) == 1


async def test_exhaustion_names_host_object_and_cause(
    fake: FakeRegistry, connect: Connect, sleeps: Sleeps
) -> None:
    fake.hooks.append(fail_times(100, status=503))
    async with connect(attempts=3) as client:
        with pytest.raises(RegistryUnavailableError) as info:
            await client.get_manifest(REF)
    assert str(info.value) == (
        "registry registry.example: manifest registry.example/team/app:1.0: "
        "giving up after 3 attempts (HTTP 503)"
    )
    assert len(sleeps.delays) == 2


async def test_exhaustion_after_connection_errors_keeps_cause(
    fake: FakeRegistry, connect: Connect
) -> None:
    fake.hooks.append(fail_times(100, exc=httpx.ConnectError("[Errno 111] refused")))
    async with connect(attempts=2) as client:
        with pytest.raises(RegistryUnavailableError, match=r"ConnectError: \[Errno 111\]") as info:
            await client.get_manifest(REF)
    assert isinstance(info.value.__cause__, httpx.ConnectError)


async def test_not_found_is_not_retried(
    fake: FakeRegistry, connect: Connect, sleeps: Sleeps
) -> None:
    async with connect() as client:
        with pytest.raises(RegistryNotFoundError):
            await client.get_manifest(REF, "missing")
    assert sleeps.delays == []


def test_policy_delays() -> None:
    policy = RetryPolicy()
    assert [policy.delay(n) for n in range(1, 7)] == [0.2, 0.4, 0.8, 1.6, 3.2, 5.0]
    assert policy.delay(1, retry_after=100) == 30.0
    assert policy.delay(1, retry_after=0) == 0.0
    with pytest.raises(ValueError, match="attempts"):
        RetryPolicy(attempts=0)


def test_parse_retry_after() -> None:
    now = 1_700_000_000.0
    assert parse_retry_after("12", now=now) == 12.0
    assert parse_retry_after(email.utils.formatdate(now + 5, usegmt=True), now=now) == 5.0
    assert parse_retry_after(email.utils.formatdate(now - 5, usegmt=True), now=now) == 0.0
    assert parse_retry_after("soon", now=now) is None
    assert parse_retry_after(None) is None


def test_describe_digs_for_the_reason() -> None:
    import trio

    from fusesnap.registry.retry import describe

    # The shape of a failed TLS handshake on trio: two empty wrappers over the reason.
    reason = RuntimeError("[SSL: WRONG_VERSION_NUMBER] wrong version number")
    broken = trio.BrokenResourceError()
    broken.__cause__ = reason
    exc = httpx.ConnectError("")
    exc.__cause__ = broken
    assert describe(exc) == (
        "ConnectError: RuntimeError: [SSL: WRONG_VERSION_NUMBER] wrong version number"
    )
    assert describe(httpx.ReadError("reset\nby peer")) == "ReadError: reset by peer"
    assert describe(httpx.ReadError("")) == "ReadError"
