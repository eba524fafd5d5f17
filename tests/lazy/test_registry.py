from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

import fusesnap
from fusesnap import oci
from fusesnap.digest import Digest
from fusesnap.errors import (
    DigestMismatchError,
    ManifestError,
    PlatformNotFoundError,
    RegistryError,
    RegistryNotFoundError,
    RegistryUnavailableError,
)
from fusesnap.oci import Platform
from fusesnap.reference import Reference
from fusesnap.registry.credentials import Credentials
from tests.lazy.conftest import REF, Connect
from tests.lazy.fakeregistry import FakeRegistry


def _recorder(seen: list[str]):
    def hook(request: httpx.Request) -> None:
        seen.append(str(request.url))

    return hook


# -- URLs, schemes, headers -------------------------------------------------------


async def test_remote_registry_uses_https_with_accept_and_user_agent(
    fake: FakeRegistry, connect: Connect
) -> None:
    fake.add_image("team/app", tags=("1.0",))
    async with connect() as client:
        await client.get_manifest(REF)
    (request,) = fake.requests
    assert str(request.url) == "https://registry.example/v2/team/app/manifests/1.0"
    assert request.headers["accept"] == oci.ACCEPT_MANIFESTS
    assert request.headers["user-agent"] == f"fusesnap/{fusesnap.__version__}"


@pytest.mark.parametrize(
    ("text", "url"),
    [
        ("127.0.0.1:5000/app:1", "http://127.0.0.1:5000/v2/app/manifests/1"),
        ("localhost:5000/a/b:1", "http://localhost:5000/v2/a/b/manifests/1"),
        ("[::1]:5000/app:1", "http://[::1]:5000/v2/app/manifests/1"),
        ("busybox", "https://registry-1.docker.io/v2/library/busybox/manifests/latest"),
    ],
)
async def test_reference_to_url(fake: FakeRegistry, connect: Connect, text: str, url: str) -> None:
    ref = Reference.parse(text)
    fake.add_image(ref.repository, tags=(str(ref.tag),))
    async with connect() as client:
        await client.get_manifest(ref)
    assert str(fake.requests[0].url) == url


async def test_insecure_registry_falls_back_to_http_and_remembers(
    fake: FakeRegistry, connect: Connect
) -> None:
    seen: list[str] = []
    fake.hooks.append(_recorder(seen))
    fake.tls_fails.add("myreg.internal")
    ref = Reference.parse("myreg.internal:5000/app:1")
    fake.add_image("app", tags=("1",))
    async with connect(insecure_registries=["myreg.internal:5000"]) as client:
        await client.get_manifest(ref)
        await client.get_manifest(ref)
    assert seen == [
        "https://myreg.internal:5000/v2/app/manifests/1",
        "http://myreg.internal:5000/v2/app/manifests/1",
        "http://myreg.internal:5000/v2/app/manifests/1",
    ]


async def test_insecure_registry_keeps_https_when_tls_works(
    fake: FakeRegistry, connect: Connect
) -> None:
    fake.add_image("app", tags=("1",))
    async with connect(insecure_registries=["myreg.internal"]) as client:
        await client.get_manifest(Reference.parse("myreg.internal:5000/app:1"))
    assert fake.requests[0].url.scheme == "https"


async def test_secure_registry_never_falls_back_to_http(
    fake: FakeRegistry, connect: Connect
) -> None:
    fake.tls_fails.add("registry.example")
    fake.add_image("team/app", tags=("1.0",))
    async with connect(attempts=2) as client:
        with pytest.raises(RegistryUnavailableError, match="ConnectError"):
            await client.get_manifest(REF)
    assert fake.requests == []


# -- manifests -------------------------------------------------------------------


async def test_manifest_by_tag_and_by_digest(fake: FakeRegistry, connect: Connect) -> None:
    want = fake.add_image("team/app", tags=("1.0",))
    async with connect() as client:
        by_tag, body = await client.get_manifest(REF)
        by_digest, body2 = await client.get_manifest(REF, want.digest)
        by_str, _ = await client.get_manifest(REF, str(want.digest))
    assert by_tag == by_digest == by_str
    assert by_tag.digest == want.digest
    assert by_tag.media_type == oci.OCI_MANIFEST
    assert by_tag.size == len(body) == want.size
    assert body == body2
    assert fake.requests[1].url.path == f"/v2/team/app/manifests/{want.digest}"


async def test_manifest_body_not_matching_requested_digest(
    fake: FakeRegistry, connect: Connect
) -> None:
    want = fake.add_image("team/app", tags=("1.0",))
    other = fake.add_image("team/app", arch="arm64")
    fake.manifests[("team/app", str(want.digest))] = fake.manifests[("team/app", str(other.digest))]
    async with connect() as client:
        with pytest.raises(DigestMismatchError, match="digest mismatch"):
            await client.get_manifest(REF, want.digest)


async def test_wrong_docker_content_digest_header(fake: FakeRegistry, connect: Connect) -> None:
    fake.add_image("team/app", tags=("1.0",))
    lie = Digest.of(b"something else")

    def hook(request: httpx.Request) -> httpx.Response | None:
        body, media_type = fake.manifests[("team/app", "1.0")]
        return httpx.Response(
            200,
            headers={"Content-Type": media_type, "Docker-Content-Digest": lie},
            content=body,
        )

    fake.hooks.append(hook)
    async with connect() as client:
        with pytest.raises(DigestMismatchError, match="Docker-Content-Digest"):
            await client.get_manifest(REF)


@pytest.mark.parametrize(
    ("content_type", "doc_type", "want"),
    [
        (oci.DOCKER_MANIFEST, None, oci.DOCKER_MANIFEST),
        ("application/octet-stream", oci.DOCKER_MANIFEST, oci.DOCKER_MANIFEST),
        ("application/json; charset=utf-8", None, oci.OCI_MANIFEST),
    ],
)
async def test_manifest_media_type(
    fake: FakeRegistry, connect: Connect, content_type: str, doc_type: str | None, want: str
) -> None:
    config = fake.add_blob(b"{}", oci.OCI_CONFIG)
    doc: dict[str, object] = {"schemaVersion": 2, "config": config.to_dict(), "layers": []}
    if doc_type:
        doc["mediaType"] = doc_type
    fake.add_manifest("team/app", json.dumps(doc).encode(), content_type, tags=("1.0",))
    async with connect() as client:
        desc, _ = await client.get_manifest(REF)
    assert desc.media_type == want


async def test_manifest_not_found_names_reference(fake: FakeRegistry, connect: Connect) -> None:
    async with connect() as client:
        with pytest.raises(RegistryNotFoundError) as info:
            await client.get_manifest(REF)
    assert str(info.value) == (
        "manifest registry.example/team/app:1.0: not found (MANIFEST_UNKNOWN: manifest unknown)"
    )
    assert len(fake.requests) == 1  # 404 is not retried


async def test_manifest_size_cap(fake: FakeRegistry, connect: Connect) -> None:
    huge = b"{" + b" " * oci.MAX_MANIFEST_SIZE + b"}"

    async def stream():
        for i in range(0, len(huge), 65536):
            yield huge[i : i + 65536]

    fake.hooks.append(lambda request: httpx.Response(200, content=stream()))
    async with connect() as client:
        with pytest.raises(ManifestError, match="larger than"):
            await client.get_manifest(REF)


# -- resolve ---------------------------------------------------------------------


@pytest.fixture
def multiarch(fake: FakeRegistry) -> dict[str, oci.Descriptor]:
    amd = fake.add_image("team/app", arch="amd64")
    arm = fake.add_image("team/app", arch="arm64")
    index = fake.add_index("team/app", [amd, arm], tags=("1.0",))
    return {"amd64": amd, "arm64": arm, "index": index}


@pytest.mark.parametrize("arch", ["amd64", "arm64"])
async def test_resolve_selects_platform(
    connect: Connect, multiarch: dict[str, oci.Descriptor], arch: str
) -> None:
    async with connect() as client:
        resolved = await client.resolve(REF, platform=Platform("linux", arch))
    assert resolved.target.digest == multiarch["index"].digest
    assert resolved.target.media_type == oci.OCI_INDEX
    assert resolved.manifest.digest == multiarch[arch].digest
    assert resolved.manifest.platform == Platform("linux", arch)
    assert Digest.of(resolved.manifest_bytes) == multiarch[arch].digest
    assert Digest.of(resolved.target_bytes) == multiarch["index"].digest
    assert resolved.index is not None
    assert len(resolved.index.manifests) == 2
    assert resolved.parsed.layers[0].digest == Digest.of(f"layer-{arch}".encode())


async def test_resolve_uses_client_default_platform(
    connect: Connect, multiarch: dict[str, oci.Descriptor]
) -> None:
    async with connect(platform=Platform("linux", "arm64")) as client:
        resolved = await client.resolve(REF)
    assert resolved.manifest.digest == multiarch["arm64"].digest


async def test_resolve_missing_platform_lists_available(
    connect: Connect, multiarch: dict[str, oci.Descriptor]
) -> None:
    async with connect() as client:
        with pytest.raises(PlatformNotFoundError) as info:
            await client.resolve(REF, platform=Platform("linux", "s390x"))
    message = str(info.value)
    assert "registry.example/team/app:1.0" in message
    assert "linux/amd64, linux/arm64" in message


async def test_resolve_plain_manifest(fake: FakeRegistry, connect: Connect) -> None:
    want = fake.add_image("team/app", tags=("1.0",))
    async with connect() as client:
        resolved = await client.resolve(REF, platform=None)
    assert resolved.index is None
    assert resolved.target == resolved.manifest
    assert resolved.manifest.digest == want.digest
    assert "manifest_bytes" not in repr(resolved)


async def test_resolve_index_child_size_mismatch(fake: FakeRegistry, connect: Connect) -> None:
    amd = fake.add_image("team/app", arch="amd64")
    lying = oci.Descriptor(amd.media_type, amd.digest, amd.size + 1, amd.platform)
    fake.add_index("team/app", [lying], tags=("1.0",))
    async with connect() as client:
        with pytest.raises(DigestMismatchError, match="size mismatch"):
            await client.resolve(REF, platform=Platform("linux", "amd64"))


# -- redirects, errors -----------------------------------------------------------


async def test_redirect_to_storage_drops_authorization(
    fake: FakeRegistry, connect: Connect
) -> None:
    fake.auth = "bearer"
    fake.redirect_blobs = True
    blob = fake.add_blob(b"config bytes", oci.OCI_CONFIG)
    async with connect() as client:
        assert await client.get_blob(REF, blob) == b"config bytes"
    assert fake.requests[-1].headers["authorization"].startswith("Bearer ")
    (storage,) = fake.storage_requests
    assert "authorization" not in storage.headers
    assert storage.headers["accept-encoding"] == "identity"


async def test_unexpected_status_is_summarized_on_one_line(
    fake: FakeRegistry, connect: Connect
) -> None:
    body = json.dumps(
        {"errors": [{"code": "DENIED", "message": "multi\nline\nreason"}, {"code": "X"}]}
    ).encode()
    fake.hooks.append(lambda request: httpx.Response(400, content=body))
    async with connect() as client:
        with pytest.raises(RegistryError) as info:
            await client.get_manifest(REF)
    message = str(info.value)
    assert "\n" not in message
    assert message == (
        "registry registry.example: manifest registry.example/team/app:1.0: "
        "unexpected HTTP 400 (DENIED: multi line reason; X)"
    )


async def test_non_retryable_httpx_error_is_mapped(fake: FakeRegistry, connect: Connect) -> None:
    def hook(request: httpx.Request) -> httpx.Response:
        raise httpx.UnsupportedProtocol("no ftp")

    fake.hooks.append(hook)
    async with connect() as client:
        with pytest.raises(RegistryError, match=r"registry\.example.*UnsupportedProtocol") as info:
            await client.get_manifest(REF)
    assert isinstance(info.value.__cause__, httpx.UnsupportedProtocol)
    assert len(fake.requests) == 0


async def test_too_many_redirects_is_mapped(fake: FakeRegistry, connect: Connect) -> None:
    fake.hooks.append(lambda request: httpx.Response(302, headers={"Location": str(request.url)}))
    async with connect() as client:
        with pytest.raises(RegistryError, match="TooManyRedirects"):
            await client.get_manifest(REF)


async def test_ca_file_that_does_not_exist(tmp_path: Path) -> None:
    from fusesnap.registry import open_registry_client

    with pytest.raises(RegistryError, match="CA bundle"):
        async with open_registry_client(ca_file=tmp_path / "missing.pem"):
            pass


# -- push, tags, referrers -------------------------------------------------------


async def test_put_blob_and_exists(fake: FakeRegistry, connect: Connect) -> None:
    data = b"pushed blob"
    digest = Digest.of(data)
    async with connect() as client:
        assert not await client.blob_exists(REF, digest)
        await client.put_blob(REF, data, digest)
        assert await client.blob_exists(REF, digest)
    assert fake.blobs[digest] == data
    post, put = fake.requests[1], fake.requests[2]
    assert post.method == "POST"
    assert post.url.path == "/v2/team/app/blobs/uploads/"
    # The relative Location was resolved against the registry, its query kept.
    assert put.url.host == "registry.example"
    assert put.url.params["digest"] == digest
    assert put.url.params["_state"] == "abc"


async def test_put_blob_refuses_wrong_digest(fake: FakeRegistry, connect: Connect) -> None:
    async with connect() as client:
        with pytest.raises(DigestMismatchError):
            await client.put_blob(REF, b"data", Digest.of(b"other"))
    assert fake.requests == []


async def test_put_manifest_by_tag_and_digest(fake: FakeRegistry, connect: Connect) -> None:
    config = fake.add_blob(b"{}", oci.OCI_CONFIG)
    body = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": oci.OCI_MANIFEST,
            "config": config.to_dict(),
            "layers": [],
        }
    ).encode()
    async with connect() as client:
        digest = await client.put_manifest(REF, body, oci.OCI_MANIFEST, tag="v2")
        assert digest == Digest.of(body)
        assert await client.put_manifest(REF, body, oci.OCI_MANIFEST, tag=None) == digest
        desc, _ = await client.get_manifest(REF, "v2")
    assert desc.digest == digest
    assert fake.requests[0].headers["content-type"] == oci.OCI_MANIFEST
    assert fake.requests[1].url.path == f"/v2/team/app/manifests/{digest}"


async def test_list_tags_follows_pagination(fake: FakeRegistry, connect: Connect) -> None:
    fake.tags_page_size = 2
    fake.add_image("team/app", tags=("a", "b", "c", "d", "e"))
    async with connect() as client:
        assert await client.list_tags(REF) == ["a", "b", "c", "d", "e"]
    assert len(fake.api_requests("/tags/list")) == 3


async def test_list_tags_unknown_repository(fake: FakeRegistry, connect: Connect) -> None:
    async with connect() as client:
        with pytest.raises(RegistryNotFoundError) as info:
            await client.list_tags(REF)
    assert str(info.value) == (
        "tags of registry.example/team/app: not found (NAME_UNKNOWN: repository unknown)"
    )


async def test_referrers(fake: FakeRegistry, connect: Connect) -> None:
    subject = fake.add_image("team/app", tags=("1.0",))
    for artifact_type in ("application/vnd.fusesnap.index.v1", "application/vnd.other"):
        doc = {
            "schemaVersion": 2,
            "mediaType": oci.OCI_MANIFEST,
            "artifactType": artifact_type,
            "config": {"mediaType": oci.OCI_EMPTY, "digest": Digest.of(b"{}"), "size": 2},
            "layers": [],
            "subject": subject.to_dict(),
        }
        fake.add_manifest("team/app", json.dumps(doc).encode(), oci.OCI_MANIFEST)
    async with connect() as client:
        every = await client.get_referrers(REF, subject.digest)
        ours = await client.get_referrers(
            REF, subject.digest, artifact_type="application/vnd.fusesnap.index.v1"
        )
    assert every is not None
    assert len(every.manifests) == 2
    # The fake ignores the filter (no OCI-Filters-Applied), so the client filters.
    assert ours is not None
    assert [d.artifact_type for d in ours.manifests] == ["application/vnd.fusesnap.index.v1"]
    assert fake.requests[-1].url.params["artifactType"] == "application/vnd.fusesnap.index.v1"


async def test_referrers_api_missing(fake: FakeRegistry, connect: Connect) -> None:
    fake.referrers_api = False
    async with connect() as client:
        assert await client.get_referrers(REF, Digest.of(b"x")) is None


async def test_push_asks_for_push_scope(fake: FakeRegistry, connect: Connect) -> None:
    fake.auth = "bearer"
    fake.users["alice"] = "pw"
    creds = Credentials(username="alice", password="pw")
    async with connect(credentials=creds) as client:
        await client.put_blob(REF, b"x", Digest.of(b"x"))
    scopes = [r.url.params["scope"] for r in fake.token_requests]
    assert scopes == ["repository:team/app:pull,push"]


def test_lazy_never_imports_pyfuse3() -> None:
    import fusesnap.lazy

    for path in Path(fusesnap.lazy.__file__).parent.glob("*.py"):
        assert "pyfuse3" not in path.read_text(), path
