"""Registry credentials from the docker CLI configuration.

The file is ``$DOCKER_CONFIG/config.json``, else ``~/.docker/config.json``.
Lookup order for a registry, as the docker CLI does it:

1. ``credHelpers[<registry>]`` -> run ``docker-credential-<name> get``
2. ``credsStore``              -> the same, with the default helper
3. ``auths[<key>]``            -> ``auth`` (base64 ``user:pass``), ``username`` /
   ``password``, ``identitytoken``

``auths`` keys come in several spellings (``host``, ``host:port``,
``https://host[:port]/v1/``); Docker Hub is any of ``docker.io``,
``index.docker.io``, ``registry-1.docker.io`` and ``https://index.docker.io/v1/``.

Secrets never reach a log line, an exception message or a ``repr``.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

log = logging.getLogger(__name__)

DOCKER_HUB_HOSTS = frozenset({"docker.io", "index.docker.io", "registry-1.docker.io"})
DOCKER_HUB_SERVER = "https://index.docker.io/v1/"

# A credential helper that hangs (a locked keychain waiting for a prompt) must not
# hang the pull forever.
HELPER_TIMEOUT = 30.0


@dataclass(frozen=True, slots=True)
class Credentials:
    """A username and password, or an identity (OAuth2 refresh) token.

    ``repr`` shows the username and which secrets are set, never their values.
    """

    username: str = ""
    password: str = field(default="", repr=False)
    identity_token: str = field(default="", repr=False)

    def __repr__(self) -> str:
        password = "'***'" if self.password else "''"
        token = "'***'" if self.identity_token else "''"
        return (
            f"Credentials(username={self.username!r}, password={password}, identity_token={token})"
        )

    __str__ = __repr__

    @property
    def has_basic(self) -> bool:
        """True when a username and password can be sent as HTTP Basic auth."""
        return bool(self.username and self.password)


def config_path() -> Path:
    """Where the docker CLI keeps its configuration."""
    base = os.environ.get("DOCKER_CONFIG")
    return Path(base) / "config.json" if base else Path.home() / ".docker" / "config.json"


def load_credentials(host: str) -> Credentials | None:
    """The credentials configured for registry ``host`` (``host[:port]``), or None.

    Blocking: reads a file and may run a credential helper; call it from async
    code through `fusesnap.blocking.run_blocking`.
    """
    path = config_path()
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        log.warning("cannot read docker config %s: %s", path, exc.strerror)
        return None
    try:
        config = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        # The decoder's message may quote file content, and the file holds secrets.
        log.warning("ignoring docker config %s: not valid JSON", path)
        return None
    if not isinstance(config, dict):
        log.warning("ignoring docker config %s: not a JSON object", path)
        return None
    return credentials_from_config(config, host)


def credentials_from_config(config: dict[str, Any], host: str) -> Credentials | None:
    """Look ``host`` up in a parsed docker config (see the module docstring for the order)."""
    aliases = _aliases(host)
    helpers = config.get("credHelpers")
    if isinstance(helpers, dict):
        for alias in aliases:
            name = helpers.get(alias)
            if isinstance(name, str) and name:
                return _from_helper(name, host)
    store = config.get("credsStore")
    if isinstance(store, str) and store:
        creds = _from_helper(store, host)
        if creds is not None:
            return creds
    auths = config.get("auths")
    if isinstance(auths, dict):
        for key, entry in auths.items():
            if isinstance(key, str) and _key_host(key) in aliases and isinstance(entry, dict):
                creds = _from_entry(entry, host)
                if creds is not None:
                    return creds
    return None


def _aliases(host: str) -> tuple[str, ...]:
    host = host.lower()
    if host in DOCKER_HUB_HOSTS:
        return ("docker.io", "index.docker.io", "registry-1.docker.io", DOCKER_HUB_SERVER)
    return (host,)


def _key_host(key: str) -> str:
    """``https://host:port/v1/`` -> ``host:port``; a bare ``host[:port]`` stays as it is."""
    key = key.strip().lower()
    if "://" in key:
        return urlsplit(key).netloc
    return key.split("/", 1)[0]


def _server_url(host: str) -> str:
    return DOCKER_HUB_SERVER if host.lower() in DOCKER_HUB_HOSTS else host


def _from_entry(entry: dict[str, Any], host: str) -> Credentials | None:
    username = str(entry.get("username") or "")
    password = str(entry.get("password") or "")
    token = str(entry.get("identitytoken") or "")
    encoded = entry.get("auth")
    if isinstance(encoded, str) and encoded:
        try:
            decoded = base64.b64decode(encoded, validate=False).decode()
        except (binascii.Error, UnicodeDecodeError):
            log.warning("docker config: ignoring malformed 'auth' for %s", host)
            decoded = ""
        user, sep, secret = decoded.partition(":")
        if sep:
            username, password = user, secret
        elif decoded:
            log.warning("docker config: ignoring 'auth' for %s: no ':' separator", host)
    if not (username and password) and not token:
        return None
    return Credentials(username=username, password=password, identity_token=token)


def _from_helper(name: str, host: str) -> Credentials | None:
    program = f"docker-credential-{name}"
    try:
        proc = subprocess.run(
            [program, "get"],
            input=_server_url(host).encode(),
            capture_output=True,
            timeout=HELPER_TIMEOUT,
            check=False,
        )
    except FileNotFoundError:
        log.debug("credential helper %s not found on PATH; no credentials for %s", program, host)
        return None
    except (OSError, subprocess.TimeoutExpired) as exc:
        log.debug("credential helper %s failed for %s: %s", program, host, type(exc).__name__)
        return None
    if proc.returncode != 0:
        # "credentials not found in native keychain" is the normal miss.
        log.debug("credential helper %s has no credentials for %s", program, host)
        return None
    try:
        doc = json.loads(proc.stdout)
    except (UnicodeDecodeError, json.JSONDecodeError):
        log.debug("credential helper %s printed something other than JSON", program)
        return None
    if not isinstance(doc, dict):
        return None
    username = str(doc.get("Username") or "")
    secret = str(doc.get("Secret") or "")
    if not secret:
        return None
    if username == "<token>":
        return Credentials(identity_token=secret)
    return Credentials(username=username, password=secret)
