"""Failover among a registry's hosts: the policy alone (fake attempts, a fake clock), then
the client with a mirror and an origin behind one mock transport."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
import trio
import trio.testing

from fusesnap import oci
from fusesnap.digest import Digest
from fusesnap.errors import (
    DigestMismatchError,
    RegistryError,
    RegistryNotFoundError,
    RegistryUnavailableError,
)
from fusesnap.reference import Reference
from fusesnap.registry import HostHealth, open_registry_client
from fusesnap.registry.credentials import Credentials
from fusesnap.registry.failover import run_on_hosts
from fusesnap.registry.hosts import RegistryHost
from fusesnap.registry.retry import RetryPolicy
from tests.lazy.conftest import Sleeps
from tests.lazy.fakeregistry import BrokenStream, FakeRegistry, MemorySink

MIRROR = RegistryHost(host="mirror.example", scheme="http", mirror=True)
SECOND = RegistryHost(host="second.example", scheme="http", mirror=True)
ORIGIN = RegistryHost(host="origin.example", server=True)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Hosts:
    """A fake ``attempt``: each host answers from its script (a result or an exception),
    the last entry repeating; every call is recorded."""

    def __init__(self, **scripts: list[object]) -> None:
        self.scripts = scripts
        self.calls: list[str] = []

    async def __call__(self, host: RegistryHost) -> str:
        name = host.host.split(".")[0]
        self.calls.append(name)
        script = self.scripts[name]
        outcome = script.pop(0) if len(script) > 1 else script[0]
        if isinstance(outcome, BaseException):
            raise outcome
        return str(outcome)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def health(clock: Clock) -> HostHealth:
    return HostHealth(backoff=10, max_backoff=40, clock=clock)


def policy(sleeps: Sleeps, attempts: int = 3) -> RetryPolicy:
    return RetryPolicy(attempts=attempts, backoff=0.5, sleep=sleeps)


async def run(hosts: Hosts, health: HostHealth, sleeps: Sleeps, *order: RegistryHost) -> str:
    return await run_on_hosts(
        order or (MIRROR, ORIGIN), health, policy(sleeps), hosts, registry="r", what="blob x"
    )


async def test_a_mirror_that_answers_serves(health: HostHealth, sleeps: Sleeps) -> None:
    hosts = Hosts(mirror=["m"], origin=["o"])
    assert await run(hosts, health, sleeps) == "m"
    assert hosts.calls == ["mirror"]


async def test_a_failed_mirror_is_skipped_for_a_while_then_tried_again(
    health: HostHealth, sleeps: Sleeps, clock: Clock
) -> None:
    hosts = Hosts(mirror=[httpx.ConnectError("refused"), "m"], origin=["o"])
    assert await run(hosts, health, sleeps) == "o"
    assert hosts.calls == ["mirror", "origin"]
    assert sleeps.delays == []  # another host was up: no waiting
    assert health.skipped() == ["mirror.example"]
    clock.now += 9
    assert await run(hosts, health, sleeps) == "o"
    assert hosts.calls[2:] == ["origin"]  # still skipped
    clock.now += 2
    assert await run(hosts, health, sleeps) == "m"  # retried after the backoff
    assert hosts.calls[3:] == ["mirror"]
    assert health.skipped() == []


async def test_backoff_doubles_while_the_mirror_stays_down(
    health: HostHealth, sleeps: Sleeps, clock: Clock
) -> None:
    hosts = Hosts(mirror=[httpx.ReadTimeout("slow")], origin=["o"])
    waits = []
    for _ in range(4):
        await run(hosts, health, sleeps)
        start = clock.now
        while not health.is_up(MIRROR):
            clock.now += 1
        waits.append(clock.now - start)
    assert waits == [10, 20, 40, 40]  # doubled, capped at max_backoff


def test_requests_in_flight_when_a_host_dies_count_as_one_failure(
    health: HostHealth, clock: Clock
) -> None:
    for _ in range(5):
        health.failed(MIRROR, "reset")
    clock.now += 10
    assert health.is_up(MIRROR)
    health.failed(MIRROR, "refused")
    clock.now += 19
    assert not health.is_up(MIRROR)  # the second outage: 20 s
    clock.now += 1
    assert health.is_up(MIRROR)


async def test_one_operation_tries_a_host_again_while_the_others_skip_it(
    health: HostHealth, sleeps: Sleeps, clock: Clock
) -> None:
    health.failed(MIRROR, "refused")
    clock.now += 11
    hung = trio.Event()
    calls: list[str] = []

    async def attempt(host: RegistryHost) -> str:
        calls.append(host.host)
        if host == MIRROR:
            await hung.wait()
            raise httpx.ReadTimeout("timed out")
        return "o"

    results: list[str] = []

    async def operation() -> None:
        order = (MIRROR, ORIGIN)
        results.append(
            await run_on_hosts(order, health, policy(sleeps), attempt, registry="r", what="x")
        )

    # (Were the others to wait for the hung probe, fail instead of hanging.)
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(operation)
            await trio.testing.wait_all_tasks_blocked()
            for _ in range(3):  # while the probe hangs, the others go to the origin
                with trio.move_on_after(5):
                    await operation()
            assert calls == ["mirror.example"] + ["origin.example"] * 3
            hung.set()
    assert results == ["o"] * 4
    clock.now += 19
    assert not health.is_up(MIRROR)  # the probe failed: skipped again, 20 s this time
    clock.now += 1
    assert health.is_up(MIRROR)


async def test_a_cancelled_probe_leaves_the_host_to_the_next_operation(
    health: HostHealth, sleeps: Sleeps, clock: Clock
) -> None:
    health.failed(MIRROR, "refused")
    clock.now += 11

    async def hang(host: RegistryHost) -> str:
        await trio.sleep_forever()
        raise AssertionError

    with trio.move_on_after(0.01):
        await run_on_hosts((MIRROR, ORIGIN), health, policy(sleeps), hang, registry="r", what="x")
    assert health.is_up(MIRROR)


@pytest.mark.parametrize(
    "failure",
    [
        httpx.ConnectError("refused"),
        httpx.ReadError("connection reset by peer"),
        httpx.ReadTimeout("timed out"),
        httpx.RemoteProtocolError("peer closed"),
        DigestMismatchError("blob x: digest mismatch"),
        RegistryError("registry r via mirror: unexpected HTTP 418"),
    ],
)
async def test_failures_that_mark_a_mirror_down(
    health: HostHealth, sleeps: Sleeps, failure: Exception
) -> None:
    hosts = Hosts(mirror=[failure], origin=["o"])
    assert await run(hosts, health, sleeps) == "o"
    assert not health.is_up(MIRROR)


async def test_a_mirror_without_the_content_is_passed_but_not_marked(
    health: HostHealth, sleeps: Sleeps
) -> None:
    hosts = Hosts(mirror=[RegistryNotFoundError("blob x: not found")], origin=["o"])
    assert await run(hosts, health, sleeps) == "o"
    assert health.is_up(MIRROR)


async def test_the_origin_has_the_last_word(health: HostHealth, sleeps: Sleeps) -> None:
    hosts = Hosts(mirror=[RegistryNotFoundError("m: not found")], origin=[
        RegistryNotFoundError("o: not found")
    ])  # fmt: skip
    with pytest.raises(RegistryNotFoundError, match="o: not found"):
        await run(hosts, health, sleeps)
    # A down mirror is tried after the origin answered "unavailable", never after a refusal.
    health.failed(MIRROR, "test")
    hosts = Hosts(mirror=["m"], origin=[RegistryNotFoundError("o: not found")])
    with pytest.raises(RegistryNotFoundError):
        await run(hosts, health, sleeps)
    assert hosts.calls == ["origin"]


async def test_with_every_host_down_it_waits_and_gives_up(
    health: HostHealth, sleeps: Sleeps
) -> None:
    hosts = Hosts(mirror=[httpx.ConnectError("refused")], origin=[httpx.ConnectError("refused")])
    with pytest.raises(RegistryUnavailableError) as info:
        await run(hosts, health, sleeps)
    # attempts (3) + one more host = 4 tries, alternating; a wait only once both are down.
    assert hosts.calls == ["mirror", "origin", "mirror", "origin"]
    assert sleeps.delays == [1.0, 2.0]
    assert "giving up after 4 attempts on 2 hosts" in str(info.value)


async def test_the_origin_unreachable_a_mirror_still_serves(
    health: HostHealth, sleeps: Sleeps, clock: Clock
) -> None:
    hosts = Hosts(mirror=["m"], origin=[httpx.ConnectError("refused")])
    assert await run(hosts, health, sleeps, ORIGIN, MIRROR) == "m"
    assert await run(hosts, health, sleeps, ORIGIN, MIRROR) == "m"
    assert hosts.calls == ["origin", "mirror", "mirror"]


async def test_mirrors_in_order(health: HostHealth, sleeps: Sleeps) -> None:
    hosts = Hosts(mirror=[httpx.ConnectError("refused")], second=["s"], origin=["o"])
    assert await run(hosts, health, sleeps, MIRROR, SECOND, ORIGIN) == "s"
    assert hosts.calls == ["mirror", "second"]


async def test_one_host_is_plain_retries(health: HostHealth, sleeps: Sleeps) -> None:
    hosts = Hosts(origin=[httpx.ConnectError("refused"), httpx.ConnectError("refused"), "o"])
    assert await run(hosts, health, sleeps, ORIGIN) == "o"
    assert sleeps.delays == [0.5, 1.0]
    assert health.is_up(ORIGIN)  # one host: nothing to fail over to, nothing marked


# -- the client, with a mirror and an origin ------------------------------------------------

REF = Reference.parse("registry.example/team/app:1.0")


@pytest.fixture
def hosts_dir(tmp_path: Path) -> Path:
    (tmp_path / "registry.example").mkdir()
    (tmp_path / "registry.example" / "hosts.toml").write_text(
        '[host."http://mirror.example"]\ncapabilities = ["pull", "resolve"]\n'
    )
    return tmp_path


class Pair:
    def __init__(self) -> None:
        self.mirror = FakeRegistry()
        self.origin = FakeRegistry()
        self.down = False

    def handle(self, request: httpx.Request) -> httpx.Response:
        if request.url.host == "mirror.example":
            if self.down:
                raise httpx.ConnectError("[Errno 111] Connection refused")
            return self.mirror.handle(request)
        return self.origin.handle(request)

    def add_image(self) -> tuple[Digest, bytes]:
        layer = bytes(range(256)) * 64
        for fake in (self.mirror, self.origin):
            fake.add_image("team/app", tags=("1.0",), layer=layer)
        return Digest.of(layer), layer


@pytest.fixture
def pair() -> Pair:
    return Pair()


def connect(
    pair: Pair,
    hosts_dir: Path,
    health: HostHealth,
    sleeps: Sleeps,
    credentials: Callable[[str], Credentials | None] = lambda host: None,
):
    return open_registry_client(
        transport=httpx.MockTransport(pair.handle),
        hosts_dirs=[hosts_dir],
        health=health,
        retry=RetryPolicy(attempts=3, backoff=0.01, sleep=sleeps),
        credentials=credentials,
    )


async def test_client_reads_from_the_mirror_then_the_origin_when_it_dies(
    pair: Pair, hosts_dir: Path, health: HostHealth, sleeps: Sleeps
) -> None:
    digest, layer = pair.add_image()
    async with connect(pair, hosts_dir, health, sleeps) as client:
        resolved = await client.resolve(REF)
        assert await client.read_range(REF, digest, 100, 50) == layer[100:150]
        assert pair.origin.requests == []
        on_mirror = pair.mirror.requests
        assert {r.url.params["ns"] for r in on_mirror} == {"registry.example"}
        pair.down = True
        assert await client.read_range(REF, digest, 200, 50) == layer[200:250]
        assert await client.get_blob(REF, resolved.parsed.config)
        assert len(pair.origin.requests) == 2
        assert "ns" not in pair.origin.requests[0].url.params
    assert sleeps.delays == []


async def test_client_passes_over_a_mirror_that_sends_wrong_bytes(
    pair: Pair, hosts_dir: Path, health: HostHealth, sleeps: Sleeps, clock: Clock
) -> None:
    pair.add_image()
    pair.mirror.manifests[("team/app", "1.0")] = (b"{}", "application/json")
    config = pair.origin.add_blob(b'{"right": true}')
    pair.mirror.blobs[config.digest] = b'{"wrong": 1}'
    async with connect(pair, hosts_dir, health, sleeps) as client:
        resolved = await client.resolve(REF)  # the mirror's manifest does not parse
        assert resolved.target_bytes == pair.origin.manifests[("team/app", "1.0")][0]
        assert health.skipped() == ["mirror.example"]
        clock.now += 60
        assert health.skipped() == []
        assert await client.get_blob(REF, config) == b'{"right": true}'
        assert health.skipped() == ["mirror.example"]  # its blob did not verify
    assert [r.url.path for r in pair.mirror.requests] == [
        "/v2/team/app/manifests/1.0",
        f"/v2/team/app/blobs/{config.digest}",
    ]


async def test_a_pull_only_mirror_never_resolves_tags(
    pair: Pair, tmp_path: Path, health: HostHealth, sleeps: Sleeps
) -> None:
    (tmp_path / "registry.example").mkdir()
    (tmp_path / "registry.example" / "hosts.toml").write_text(
        '[host."http://mirror.example"]\ncapabilities = ["pull"]\n'
    )
    pair.add_image()
    async with connect(pair, tmp_path, health, sleeps) as client:
        resolved = await client.resolve(REF)
        await client.get_manifest(REF, resolved.manifest.digest)
    assert [r.url.path for r in pair.origin.requests] == ["/v2/team/app/manifests/1.0"]
    assert [r.url.path for r in pair.mirror.requests] == [
        f"/v2/team/app/manifests/{resolved.manifest.digest}"
    ]


async def test_push_goes_to_the_origin_only(
    pair: Pair, hosts_dir: Path, health: HostHealth, sleeps: Sleeps
) -> None:
    (hosts_dir / "registry.example" / "hosts.toml").write_text(
        '[host."http://mirror.example"]\n'  # all capabilities, push included
        '[host."http://mirror.example".header]\nx-mirror = "1"\n'
        'server = "http://registry.example"\ncapabilities = ["push"]\n'
    )
    async with connect(pair, hosts_dir, health, sleeps) as client:
        await client.put_blob(REF, b"data", Digest.of(b"data"))
    assert pair.mirror.blobs.get(Digest.of(b"data")) == b"data"  # the first push host
    assert pair.mirror.requests[0].headers["x-mirror"] == "1"
    (hosts_dir / "registry.example" / "hosts.toml").write_text(
        'server = "http://registry.example"\ncapabilities = ["pull"]\n'
    )
    async with connect(pair, hosts_dir, health, sleeps) as client:
        with pytest.raises(RegistryError, match=r"no host in .* has the 'push' capability"):
            await client.put_blob(REF, b"data", Digest.of(b"data"))


async def test_each_host_has_its_own_credentials(
    pair: Pair, hosts_dir: Path, health: HostHealth, sleeps: Sleeps
) -> None:
    pair.add_image()
    pair.mirror.auth = "basic"
    pair.mirror.users = {"mirror-user": "pw"}
    asked: list[str] = []

    def credentials(host: str) -> Credentials | None:
        asked.append(host)
        if host != "mirror.example":
            return None
        return Credentials(username="mirror-user", password="pw")

    async with connect(pair, hosts_dir, health, sleeps, credentials) as client:
        await client.resolve(REF)
    assert "mirror.example" in asked
    assert pair.mirror.requests[-1].headers["authorization"].startswith("Basic ")
    assert pair.origin.requests == []


async def test_a_download_from_a_lying_mirror_starts_over_on_the_origin(
    pair: Pair, hosts_dir: Path, health: HostHealth, sleeps: Sleeps
) -> None:
    digest, layer = pair.add_image()
    pair.mirror.blobs[digest] = layer[:-1] + b"!"
    desc = pair.origin.add_blob(layer)
    sink = MemorySink()
    async with connect(pair, hosts_dir, health, sleeps) as client:
        await client.download_blob(REF, desc, sink)
    assert bytes(sink.data) == layer
    assert sink.resets == 1
    assert health.skipped() == ["mirror.example"]


async def test_a_download_cut_by_a_dying_mirror_resumes_on_the_origin(
    pair: Pair, hosts_dir: Path, health: HostHealth, sleeps: Sleeps
) -> None:
    _, layer = pair.add_image()

    def cut(request: httpx.Request) -> httpx.Response | None:
        if "/blobs/" not in request.url.path:
            return None
        return httpx.Response(200, stream=BrokenStream(layer, 1000))

    pair.mirror.hooks.append(cut)
    desc = pair.origin.add_blob(layer)
    sink = MemorySink()
    async with connect(pair, hosts_dir, health, sleeps) as client:
        await client.download_blob(REF, desc, sink)
    assert bytes(sink.data) == layer
    assert sink.resets == 0
    (resumed,) = pair.origin.api_requests("/blobs/")
    assert resumed.headers["range"] == "bytes=1000-"


async def test_a_mirror_gets_short_timeouts_and_its_dial_timeout(
    pair: Pair, hosts_dir: Path, health: HostHealth, sleeps: Sleeps
) -> None:
    """A mirror that hangs is given up on well within a lazy read's deadline (60 s)."""
    pair.add_image()
    async with connect(pair, hosts_dir, health, sleeps) as client:
        await client.resolve(REF)
        (hosts_dir / "registry.example" / "hosts.toml").write_text(
            '[host."http://mirror.example"]\ndial_timeout = "1500ms"\n'
        )
    async with connect(pair, hosts_dir, health, sleeps) as client:
        await client.resolve(REF)
    first, second = (r.extensions["timeout"] for r in pair.mirror.requests)
    assert (first["connect"], first["read"]) == (5.0, 20.0)
    assert (second["connect"], second["read"]) == (1.5, 20.0)
    pair.down = True
    async with connect(pair, hosts_dir, health, sleeps) as client:
        await client.resolve(REF)
    assert pair.origin.requests[0].extensions["timeout"]["read"] == 60.0
    # A server other than the registry: asked with ?ns=, and as patiently.
    (hosts_dir / "registry.example" / "hosts.toml").write_text(
        'server = "http://origin2.example"\n[host."http://mirror.example"]\n'
    )
    async with connect(pair, hosts_dir, health, sleeps) as client:
        await client.resolve(REF)
    last = pair.origin.requests[-1]
    assert (last.url.host, last.url.params["ns"]) == ("origin2.example", "registry.example")
    assert last.extensions["timeout"]["read"] == 60.0


async def test_referrers_the_mirror_cannot_list_are_asked_of_the_origin(
    pair: Pair, hosts_dir: Path, health: HostHealth, sleeps: Sleeps
) -> None:
    """A pull-through cache without the referrers API must not hide the origin's."""
    subject = pair.origin.add_image("team/app", tags=("1.0",))
    doc = {
        "schemaVersion": 2,
        "mediaType": oci.OCI_MANIFEST,
        "artifactType": "application/vnd.fusesnap.index.v1",
        "config": {"mediaType": oci.OCI_EMPTY, "digest": Digest.of(b"{}"), "size": 2},
        "layers": [],
        "subject": subject.to_dict(),
    }
    pair.origin.add_manifest("team/app", json.dumps(doc).encode(), oci.OCI_MANIFEST)
    pair.mirror.referrers_api = False
    async with connect(pair, hosts_dir, health, sleeps) as client:
        found = await client.get_referrers(REF, subject.digest)
        assert found is not None
        assert len(found.manifests) == 1
        pair.origin.referrers_api = False
        assert await client.get_referrers(REF, subject.digest) is None
    assert len(pair.mirror.api_requests("/referrers/")) == 2
    assert health.skipped() == []  # not knowing is not failing
