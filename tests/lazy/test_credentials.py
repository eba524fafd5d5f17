from __future__ import annotations

import base64
import json
import logging
import os
import stat
from pathlib import Path

import pytest

from fusesnap.registry.credentials import Credentials, load_credentials

SECRET = "hunter2-very-secret"


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


@pytest.fixture
def docker_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Write ``config.json`` into a temporary ``$DOCKER_CONFIG``."""
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path))

    def write(doc: object) -> Path:
        path = tmp_path / "config.json"
        path.write_text(doc if isinstance(doc, str) else json.dumps(doc))
        return path

    return write


@pytest.fixture
def helper(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Install ``docker-credential-<name>`` on PATH answering with ``reply`` (or failing)."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")

    def install(name: str, reply: dict[str, str] | None) -> Path:
        log = tmp_path / f"{name}.stdin"
        script = bindir / f"docker-credential-{name}"
        if reply is None:
            body = f'cat > "{log}"\necho "credentials not found in native keychain"\nexit 1\n'
        else:
            body = f"cat > \"{log}\"\ncat <<'EOF'\n{json.dumps(reply)}\nEOF\n"
        script.write_text(f'#!/bin/sh\n[ "$1" = get ] || exit 2\n{body}')
        script.chmod(script.stat().st_mode | stat.S_IXUSR)
        return log

    return install


@pytest.mark.parametrize(
    "key",
    [
        "reg.example:5000",
        "https://reg.example:5000",
        "https://reg.example:5000/v1/",
        "http://reg.example:5000/v2/",
    ],
)
def test_auth_field_and_key_forms(docker_config, key: str) -> None:
    docker_config({"auths": {key: {"auth": _b64(f"alice:{SECRET}")}}})
    assert load_credentials("reg.example:5000") == Credentials("alice", SECRET)
    assert load_credentials("reg.example") is None
    assert load_credentials("other.example:5000") is None


def test_password_may_contain_colons(docker_config) -> None:
    docker_config({"auths": {"reg.example": {"auth": _b64("alice:pa:ss")}}})
    assert load_credentials("reg.example") == Credentials("alice", "pa:ss")


def test_username_password_fields(docker_config) -> None:
    docker_config({"auths": {"reg.example": {"username": "bob", "password": SECRET}}})
    assert load_credentials("reg.example") == Credentials("bob", SECRET)


def test_identity_token(docker_config) -> None:
    docker_config({"auths": {"reg.example": {"auth": "", "identitytoken": SECRET}}})
    creds = load_credentials("reg.example")
    assert creds == Credentials(identity_token=SECRET)
    assert creds is not None
    assert not creds.has_basic


@pytest.mark.parametrize(
    "key", ["https://index.docker.io/v1/", "index.docker.io", "docker.io", "registry-1.docker.io"]
)
@pytest.mark.parametrize("host", ["docker.io", "index.docker.io", "registry-1.docker.io"])
def test_docker_hub_aliases(docker_config, key: str, host: str) -> None:
    docker_config({"auths": {key: {"auth": _b64(f"alice:{SECRET}")}}})
    assert load_credentials(host) == Credentials("alice", SECRET)


def test_missing_or_broken_config(docker_config, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    assert load_credentials("reg.example") is None  # no file yet
    docker_config('{"auths": {"reg.example": {"auth": "' + SECRET)
    assert load_credentials("reg.example") is None
    assert "not valid JSON" in caplog.text
    assert SECRET not in caplog.text


def test_home_config_when_docker_config_unset(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("DOCKER_CONFIG", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / ".docker").mkdir()
    (tmp_path / ".docker" / "config.json").write_text(
        json.dumps({"auths": {"reg.example": {"auth": _b64(f"alice:{SECRET}")}}})
    )
    assert load_credentials("reg.example") == Credentials("alice", SECRET)


def test_cred_helper(docker_config, helper) -> None:
    stdin = helper("fake", {"ServerURL": "reg.example", "Username": "carol", "Secret": SECRET})
    docker_config({"credHelpers": {"reg.example": "fake"}, "auths": {}})
    assert load_credentials("reg.example") == Credentials("carol", SECRET)
    assert stdin.read_text() == "reg.example"
    assert load_credentials("other.example") is None


def test_cred_helper_identity_token_for_docker_hub(docker_config, helper) -> None:
    stdin = helper("hub", {"Username": "<token>", "Secret": SECRET})
    docker_config({"credsStore": "hub"})
    assert load_credentials("docker.io") == Credentials(identity_token=SECRET)
    assert stdin.read_text() == "https://index.docker.io/v1/"


def test_creds_store_miss_falls_back_to_auths(docker_config, helper) -> None:
    helper("store", None)
    docker_config(
        {"credsStore": "store", "auths": {"reg.example": {"auth": _b64(f"alice:{SECRET}")}}}
    )
    assert load_credentials("reg.example") == Credentials("alice", SECRET)


def test_missing_helper_is_no_credentials(
    docker_config, helper, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    docker_config({"credHelpers": {"reg.example": "absent"}})
    assert load_credentials("reg.example") is None
    assert "docker-credential-absent not found" in caplog.text


def test_repr_masks_secrets() -> None:
    creds = Credentials("alice", SECRET, identity_token="tok-" + SECRET)
    for text in (repr(creds), str(creds), f"{creds}", repr([creds])):
        assert SECRET not in text
        assert "alice" in text
    assert repr(Credentials("alice", SECRET)) == (
        "Credentials(username='alice', password='***', identity_token='')"
    )
