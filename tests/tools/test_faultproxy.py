"""The fault proxy forwards faithfully, counts, and injects each fault on demand."""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import Iterator

import httpx
import pytest

from tools.faultproxy import FaultProxy, request_kind
from tools.images import PushedImage, build_and_push

pytestmark = pytest.mark.requires("docker-registry", "skopeo")


@pytest.fixture(scope="module")
def pushed(registry: object) -> PushedImage:
    return build_and_push("busybox", registry)  # type: ignore[arg-type]


@pytest.fixture
def client(faulty: FaultProxy) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=faulty.url, timeout=10) as c:
        yield c


def _blob_url(pushed: PushedImage) -> str:
    return f"/v2/{pushed.repo}/blobs/{pushed.layers[0].digest}"


def test_request_kinds() -> None:
    assert request_kind("/v2/a/b/manifests/latest") == "manifest"
    assert request_kind("/v2/a/blobs/sha256:00") == "blob"
    assert request_kind("/v2/a/blobs/uploads/") == "upload"
    assert request_kind("/v2/a/blobs/uploads/abc?_state=x") == "upload"
    assert request_kind("/token?scope=x") == "token"
    assert request_kind("/v2/") == "other"


def test_forwards_ranges_and_counts(
    faulty: FaultProxy, client: httpx.Client, pushed: PushedImage
) -> None:
    whole = client.get(_blob_url(pushed))
    assert whole.status_code == 200
    assert f"sha256:{hashlib.sha256(whole.content).hexdigest()}" == pushed.layers[0].digest
    part = client.get(_blob_url(pushed), headers={"Range": "bytes=100-1123"})
    assert part.status_code == 206
    assert part.headers["Content-Range"] == f"bytes 100-1123/{pushed.layers[0].size}"
    assert part.content == whole.content[100:1124]
    head = client.head(
        f"/v2/{pushed.repo}/manifests/{pushed.tag}", headers={"Accept": pushed.media_type}
    )
    assert head.headers["Docker-Content-Digest"] == pushed.manifest_digest
    assert faulty.count(kind="blob", method="GET") == 2
    assert faulty.count(kind="manifest") == 1
    assert faulty.bytes_sent("blob") == pushed.layers[0].size + 1024
    assert faulty.records[1].range == "bytes=100-1123"


def test_push_through_the_proxy(faulty: FaultProxy) -> None:
    # A repository of its own: blobs already in another test's repository are not re-uploaded.
    pushed = build_and_push("crafted-whiteouts", faulty, repo=f"proxy-push/{uuid.uuid4().hex}")
    assert pushed.host == faulty.host
    assert faulty.count(kind="upload", method="PUT") == 3  # two layers and the config
    assert faulty.count(kind="manifest", method="PUT") == 1


def test_fail_next_with_retry_after(
    faulty: FaultProxy, client: httpx.Client, pushed: PushedImage
) -> None:
    faulty.fail_next(2, status=503, retry_after=3, kind="blob")
    assert client.get("/v2/").status_code == 200  # another kind: untouched
    for _ in range(2):
        resp = client.get(_blob_url(pushed))
        assert resp.status_code == 503
        assert resp.headers["Retry-After"] == "3"
    assert client.get(_blob_url(pushed)).status_code == 200
    assert [r.fault for r in faulty.records] == [None, "fail", "fail", None]


def test_drop_next(faulty: FaultProxy, client: httpx.Client) -> None:
    faulty.drop_next(1)
    with pytest.raises(httpx.RemoteProtocolError):
        client.get("/v2/")
    assert client.get("/v2/").status_code == 200
    assert faulty.records[0].status is None


def test_cut_body_next(faulty: FaultProxy, client: httpx.Client, pushed: PushedImage) -> None:
    faulty.cut_body_next(1, after_bytes=5000)
    with pytest.raises(httpx.RemoteProtocolError, match=r"incomplete|complete message"):
        client.get(_blob_url(pushed))
    record = faulty.records[-1]
    assert (record.fault, record.status, record.bytes_sent) == ("cut", 200, 5000)
    assert len(client.get(_blob_url(pushed)).content) == pushed.layers[0].size


def test_rate_limit(faulty: FaultProxy, client: httpx.Client, pushed: PushedImage) -> None:
    faulty.rate_limit(256 * 1024)
    started = time.monotonic()
    resp = client.get(_blob_url(pushed), headers={"Range": "bytes=0-262143"})
    elapsed = time.monotonic() - started
    assert len(resp.content) == 262144
    assert 0.8 < elapsed < 5


def test_delay(faulty: FaultProxy, client: httpx.Client) -> None:
    faulty.delay(0.3)
    started = time.monotonic()
    client.get("/v2/")
    assert time.monotonic() - started >= 0.3


def test_reset_clears_faults_and_counters(faulty: FaultProxy, client: httpx.Client) -> None:
    faulty.fail_next(5)
    faulty.rate_limit(10)
    faulty.reset()
    assert client.get("/v2/").status_code == 200
    faulty.reset()
    assert faulty.count() == 0
    assert faulty.bytes_sent() == 0
