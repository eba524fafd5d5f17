from __future__ import annotations

import base64
import datetime as dt
import logging
from urllib.parse import parse_qs

import httpx
import pytest

from fusesnap.errors import AuthenticationError
from fusesnap.reference import Reference
from fusesnap.registry.auth import (
    Authenticator,
    AuthScope,
    _token_lifetime,
    parse_www_authenticate,
)
from fusesnap.registry.credentials import Credentials
from tests.lazy.conftest import REF, Connect
from tests.lazy.fakeregistry import REALM, FakeRegistry

PASSWORD = "s3cr3t-PASSW0RD"
IDENTITY = "id-T0KEN-secret"
ALICE = Credentials(username="alice", password=PASSWORD)


def _statuses(fake: FakeRegistry) -> list[str]:
    """The registry requests as ``<auth kind>`` strings, for asserting on flows."""
    return [r.headers.get("authorization", "none").split(" ")[0] for r in fake.requests]


# -- WWW-Authenticate ------------------------------------------------------------


def test_parse_bearer_with_commas_in_quoted_scope() -> None:
    (c,) = parse_www_authenticate(
        'Bearer realm="https://auth.example/token",service="reg",scope="repository:a/b:pull,push"'
    )
    assert c.scheme == "bearer"
    assert (c.realm, c.service, c.scope) == (
        "https://auth.example/token",
        "reg",
        "repository:a/b:pull,push",
    )


def test_parse_several_challenges_in_one_value_and_several_values() -> None:
    got = parse_www_authenticate(
        [
            'Basic realm="a, b", Bearer realm="https://x/t", service=reg, error="invalid_token"',
            "Negotiate",
            'DIGEST realm="q\\"uoted", nonce="n"',
        ]
    )
    assert [(c.scheme, c.params) for c in got] == [
        ("basic", {"realm": "a, b"}),
        ("bearer", {"realm": "https://x/t", "service": "reg", "error": "invalid_token"}),
        ("negotiate", {}),
        ("digest", {"realm": 'q"uoted', "nonce": "n"}),
    ]


def test_parse_token68_and_garbage() -> None:
    got = parse_www_authenticate('Basic dXNlcjpwYXNz==, Bearer realm="r"')
    assert [c.scheme for c in got] == ["basic", "bearer"]
    assert got[1].realm == "r"
    assert parse_www_authenticate("") == []
    assert parse_www_authenticate("  ,  ") == []


def test_token_lifetime() -> None:
    now = dt.datetime(2024, 1, 1, 12, 0, 0, tzinfo=dt.UTC).timestamp()
    assert _token_lifetime({}, now) == 60
    assert _token_lifetime({"expires_in": 300}, now) == 300
    assert _token_lifetime({"expires_in": "x"}, now) == 60
    issued = "2024-01-01T11:59:00.123456789Z"  # nanoseconds, 60 s ago
    lifetime = _token_lifetime({"expires_in": 300, "issued_at": issued}, now)
    assert lifetime == pytest.approx(240.123, abs=0.01)
    # Clock skew (issued in the future, or older than the lifetime): trust expires_in.
    assert _token_lifetime({"expires_in": 300, "issued_at": "2024-01-01T13:00:00Z"}, now) == 300
    assert _token_lifetime({"expires_in": 30, "issued_at": "2024-01-01T11:00:00Z"}, now) == 30


# -- bearer flows ----------------------------------------------------------------


async def test_anonymous_bearer_flow_and_cache(fake: FakeRegistry, connect: Connect) -> None:
    fake.auth = "bearer"
    fake.add_image("team/app", tags=("1.0",))
    async with connect() as client:
        await client.get_manifest(REF)
        await client.get_manifest(REF)
    (token_request,) = fake.token_requests
    assert token_request.method == "GET"
    assert "authorization" not in token_request.headers
    assert token_request.url.params["service"] == "registry.example"
    assert token_request.url.params["scope"] == "repository:team/app:pull"
    # 401, retry with the token, then the cached token straight away.
    assert _statuses(fake) == ["none", "Bearer", "Bearer"]


async def test_known_bearer_host_fetches_token_before_first_request(
    fake: FakeRegistry, connect: Connect
) -> None:
    fake.auth = "bearer"
    fake.add_image("team/app", tags=("1.0",))
    fake.add_image("team/other", tags=("1.0",))
    async with connect() as client:
        await client.get_manifest(REF)
        await client.get_manifest(Reference.parse("registry.example/team/other:1.0"))
    assert [r.url.params["scope"] for r in fake.token_requests] == [
        "repository:team/app:pull",
        "repository:team/other:pull",
    ]
    assert _statuses(fake) == ["none", "Bearer", "Bearer"]


async def test_credentialed_bearer_flow(fake: FakeRegistry, connect: Connect) -> None:
    fake.auth = "bearer"
    fake.anonymous_pull = False
    fake.users["alice"] = PASSWORD
    fake.add_image("team/app", tags=("1.0",))
    async with connect(credentials=ALICE) as client:
        await client.get_manifest(REF)
    (token_request,) = fake.token_requests
    expected = base64.b64encode(f"alice:{PASSWORD}".encode()).decode()
    assert token_request.headers["authorization"] == f"Basic {expected}"
    assert token_request.url.params["account"] == "alice"


async def test_identity_token_uses_oauth2_refresh_grant(
    fake: FakeRegistry, connect: Connect
) -> None:
    fake.auth = "bearer"
    fake.anonymous_pull = False
    fake.identity_tokens.add(IDENTITY)
    fake.add_image("team/app", tags=("1.0",))
    async with connect(credentials=Credentials(identity_token=IDENTITY)) as client:
        await client.get_manifest(REF)
    (token_request,) = fake.token_requests
    assert token_request.method == "POST"
    form = parse_qs(token_request.content.decode())
    assert form["grant_type"] == ["refresh_token"]
    assert form["refresh_token"] == [IDENTITY]
    assert form["service"] == ["registry.example"]
    assert form["scope"] == ["repository:team/app:pull"]
    assert form["client_id"] == ["fusesnap"]
    assert "authorization" not in token_request.headers
    assert _statuses(fake) == ["none", "Bearer"]


async def test_token_refreshed_after_401_with_cached_token(
    fake: FakeRegistry, connect: Connect
) -> None:
    fake.auth = "bearer"
    fake.add_image("team/app", tags=("1.0",))
    async with connect() as client:
        await client.get_manifest(REF)
        fake.valid_tokens.clear()  # the registry forgets (or expires) the token
        await client.get_manifest(REF)
    assert len(fake.token_requests) == 2
    sent = [r.headers.get("authorization") for r in fake.requests]
    assert sent == [None, "Bearer tok-1", "Bearer tok-1", "Bearer tok-2"]


async def test_token_refreshed_after_expiry() -> None:
    fake = FakeRegistry(auth="bearer", token_ttl=60)
    fake.add_image("team/app", tags=("1.0",))
    now = [1000.0]

    async def no_credentials(registry: str) -> Credentials | None:
        return None

    scope = AuthScope("registry.example", "registry.example", "team/app")
    async with httpx.AsyncClient(transport=fake.transport()) as http:
        auth = Authenticator(http, no_credentials, clock=lambda: now[0])
        assert await auth.authorization(scope) is None
        first = await http.get("https://registry.example/v2/team/app/manifests/1.0")
        assert await auth.on_unauthorized(scope, first) == "Bearer tok-1"
        now[0] += 45
        assert await auth.authorization(scope) == "Bearer tok-1"
        now[0] += 10  # within the refresh margin of the 60 s lifetime
        assert await auth.authorization(scope) == "Bearer tok-2"
    assert len(fake.token_requests) == 2


async def test_token_response_with_access_token_and_no_expiry(
    fake: FakeRegistry, connect: Connect
) -> None:
    fake.auth = "bearer"
    fake.token_field = "access_token"
    fake.token_ttl = None
    fake.add_image("team/app", tags=("1.0",))
    async with connect() as client:
        await client.get_manifest(REF)
        await client.get_manifest(REF)
    assert len(fake.token_requests) == 1


async def test_401_after_fresh_token_is_authentication_error(
    fake: FakeRegistry, connect: Connect
) -> None:
    fake.auth = "bearer"
    fake.users["alice"] = PASSWORD
    fake.add_image("team/app", tags=("1.0",))

    def always_401(request: httpx.Request) -> httpx.Response | None:
        if request.url.host != "registry.example":
            return None
        fake.requests.append(request)
        return httpx.Response(
            401, headers={"WWW-Authenticate": f'Bearer realm="{REALM}",service="registry.example"'}
        )

    fake.hooks.append(always_401)
    async with connect(credentials=ALICE) as client:
        with pytest.raises(AuthenticationError) as info:
            await client.get_manifest(REF)
    assert str(info.value) == (
        "registry registry.example: authentication failed for team/app "
        "(credentials were sent; HTTP 401)"
    )
    assert len(fake.token_requests) == 1
    assert len(fake.requests) == 2


async def test_403_is_authentication_error_without_credentials(
    fake: FakeRegistry, connect: Connect
) -> None:
    fake.hooks.append(
        lambda r: httpx.Response(
            403, json={"errors": [{"code": "DENIED", "message": "requested access is denied"}]}
        )
    )
    async with connect() as client:
        with pytest.raises(AuthenticationError) as info:
            await client.get_manifest(REF)
    assert "no credentials configured" in str(info.value)
    assert "DENIED: requested access is denied" in str(info.value)


async def test_wrong_password_and_secrets_never_shown(
    fake: FakeRegistry, connect: Connect, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    fake.auth = "bearer"
    fake.users["alice"] = "another password"
    fake.add_image("team/app", tags=("1.0",))
    async with connect(credentials=ALICE) as client:
        with pytest.raises(AuthenticationError) as info:
            await client.get_manifest(REF)
    message = str(info.value)
    assert "credentials were sent" in message
    assert "incorrect username or password" in message
    basic = base64.b64encode(f"alice:{PASSWORD}".encode()).decode()
    for secret in (PASSWORD, basic):
        assert secret not in message
        assert secret not in repr(info.value)
        assert secret not in caplog.text
    assert caplog.text  # debug logging did run


async def test_secrets_absent_from_logs_on_success(
    fake: FakeRegistry, connect: Connect, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    fake.auth = "bearer"
    fake.anonymous_pull = False
    fake.identity_tokens.add(IDENTITY)
    fake.add_image("team/app", tags=("1.0",))
    async with connect(credentials=Credentials(identity_token=IDENTITY)) as client:
        await client.get_manifest(REF)
    assert "fetching identity token" in caplog.text
    assert IDENTITY not in caplog.text
    assert "tok-1" not in caplog.text


async def test_credentials_not_sent_to_plain_http_realm(
    fake: FakeRegistry, connect: Connect
) -> None:
    fake.hooks.append(
        lambda r: httpx.Response(
            401, headers={"WWW-Authenticate": 'Bearer realm="http://auth.example/token"'}
        )
    )
    async with connect(credentials=ALICE) as client:
        with pytest.raises(AuthenticationError, match="plain-HTTP token realm"):
            await client.get_manifest(REF)
    assert fake.token_requests == []


# -- Basic ------------------------------------------------------------------------


async def test_basic_auth_registry(fake: FakeRegistry, connect: Connect) -> None:
    fake.auth = "basic"
    fake.users["alice"] = PASSWORD
    fake.add_image("team/app", tags=("1.0",))
    async with connect(credentials=ALICE) as client:
        await client.get_manifest(REF)
        await client.get_manifest(REF)
    assert _statuses(fake) == ["none", "Basic", "Basic"]  # pre-emptive after the first 401
    assert fake.token_requests == []


async def test_basic_auth_registry_without_credentials(
    fake: FakeRegistry, connect: Connect
) -> None:
    fake.auth = "basic"
    async with connect() as client:
        with pytest.raises(AuthenticationError, match="no credentials configured"):
            await client.get_manifest(REF)


async def test_token_server_errors_are_retried(fake: FakeRegistry, connect: Connect) -> None:
    fake.auth = "bearer"
    fake.add_image("team/app", tags=("1.0",))
    failures = [2]

    def flaky_token_server(request: httpx.Request) -> httpx.Response | None:
        if request.url.host == "auth.example" and failures[0]:
            failures[0] -= 1
            return httpx.Response(503)
        return None

    fake.hooks.append(flaky_token_server)
    async with connect() as client:
        await client.get_manifest(REF)
    assert len(fake.token_requests) == 1
