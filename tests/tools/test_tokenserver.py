"""The token server against the real registry: good credentials work, bad ones do not."""

from __future__ import annotations

import base64
import json
import subprocess
from collections.abc import Iterator

import httpx
import pytest

from tools.images import build_and_push, build_layout, push_layout
from tools.images.push import SkopeoError
from tools.registry import Registry, TokenAuth
from tools.tokenserver import TokenServer

pytestmark = pytest.mark.requires("docker-registry", "skopeo", "curl")

USERS = {"alice": "alice-pw", "reader": "reader-pw"}
ACL = {"reader": {"*": {"pull"}}}


@pytest.fixture(scope="module")
def auth() -> Iterator[tuple[Registry, TokenServer]]:
    with TokenServer(USERS, acl=ACL) as tokens, Registry(auth=TokenAuth(tokens)) as reg:
        yield reg, tokens


def _token(tokens: TokenServer, scope: str, creds: tuple[str, str] | None) -> httpx.Response:
    return httpx.get(tokens.realm, params={"service": tokens.service, "scope": scope}, auth=creds)


def _claims(token: str) -> dict[str, object]:
    payload = token.split(".")[1]
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    assert isinstance(claims, dict)
    return claims


def test_push_with_good_credentials_then_curl_with_token(
    auth: tuple[Registry, TokenServer],
) -> None:
    reg, tokens = auth
    before = tokens.token_requests
    pushed = build_and_push("busybox", reg, creds=("alice", "alice-pw"))
    assert tokens.token_requests > before

    token = _token(tokens, f"repository:{pushed.repo}:pull", ("alice", "alice-pw")).json()["token"]
    curl = subprocess.run(
        [
            "curl",
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-H",
            f"Authorization: Bearer {token}",
            "-H",
            f"Accept: {pushed.media_type}",
            f"{reg.url}/v2/{pushed.repo}/manifests/{pushed.tag}",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert curl.stdout == "200"
    without = httpx.get(f"{reg.url}/v2/{pushed.repo}/manifests/{pushed.tag}")
    assert without.status_code == 401
    assert without.headers["WWW-Authenticate"].startswith(f'Bearer realm="{tokens.realm}"')


def test_bad_password_is_refused(auth: tuple[Registry, TokenServer]) -> None:
    reg, tokens = auth
    assert _token(tokens, "repository:x:pull", ("alice", "nope")).status_code == 401
    assert _token(tokens, "repository:x:pull", None).status_code == 401
    layout = build_layout("busybox")
    with pytest.raises(SkopeoError, match=r"(?i)unauthorized|authentication"):
        push_layout(layout, "latest", reg.host, "fusesnap-test/denied", creds="alice:nope")


def test_only_allowed_actions_are_granted(auth: tuple[Registry, TokenServer]) -> None:
    reg, tokens = auth
    resp = _token(tokens, "repository:some/repo:pull,push", ("reader", "reader-pw"))
    assert resp.status_code == 200
    assert _claims(resp.json()["token"])["access"] == [
        {"type": "repository", "name": "some/repo", "actions": ["pull"]}
    ]
    layout = build_layout("busybox")
    with pytest.raises(SkopeoError):
        push_layout(
            layout, "latest", reg.host, "fusesnap-test/readonly", creds=("reader", "reader-pw")
        )


def test_token_claims_and_expiry_setting(auth: tuple[Registry, TokenServer]) -> None:
    _, tokens = auth
    tokens.expires_in = 2
    try:
        body = _token(tokens, "repository:a/b:pull", ("alice", "alice-pw")).json()
    finally:
        tokens.expires_in = 300
    assert body["token"] == body["access_token"]
    assert body["expires_in"] == 2
    claims = _claims(body["token"])
    assert claims["iss"] == tokens.issuer
    assert claims["aud"] == tokens.service
    assert claims["sub"] == "alice"
    assert isinstance(claims["exp"], int)
    assert isinstance(claims["iat"], int)
    assert claims["exp"] - claims["iat"] == 2
    header = json.loads(base64.urlsafe_b64decode(body["token"].split(".")[0] + "=="))
    assert header["alg"] == "RS256"
    assert len(header["x5c"]) == 1
    assert tokens.issued[-1].expires_in == 2


def test_anonymous_pull(tmp_path_factory: pytest.TempPathFactory) -> None:
    with TokenServer(USERS, anonymous_pull=True) as tokens, Registry(auth=TokenAuth(tokens)) as reg:
        pushed = build_and_push("busybox", reg, creds=("alice", "alice-pw"))
        body = _token(tokens, f"repository:{pushed.repo}:pull,push", None).json()
        assert _claims(body["token"])["access"] == [
            {"type": "repository", "name": pushed.repo, "actions": ["pull"]}
        ]
        resp = httpx.get(
            f"{reg.url}/v2/{pushed.repo}/manifests/{pushed.tag}",
            headers={"Authorization": f"Bearer {body['token']}", "Accept": pushed.media_type},
        )
        assert resp.status_code == 200
        assert tokens.refused == 0
