"""A small, real token server for Distribution's ``auth: token`` mode.

The flow it serves (Docker's token authentication spec)::

    client ──GET /v2/…──> registry ──401 WWW-Authenticate: Bearer realm=…/token,service,scope
    client ──GET /token?service=S&scope=repository:R:pull,push (HTTP Basic)──> TokenServer
    client <── {"token": JWT, "access_token": JWT, "expires_in": N, "issued_at": …}
    client ──GET /v2/… Authorization: Bearer JWT──> registry
                                          (checks signature, iss, aud, exp, nbf, access)

The JWT is RS256-signed; its header carries the signing certificate in ``x5c``
and the registry trusts it because the same self-signed certificate is its
``rootcertbundle`` (`cert_path`). A `TokenServer` is handed to the registry with
``Registry(auth=TokenAuth(server))``.

Access rules: ``acl`` maps a user ("" for anonymous) to ``{repository pattern:
actions}`` with `fnmatch` patterns; a user absent from ``acl`` gets pull and push
on every repository. Each requested action is granted only if allowed; unknown
users or a wrong password get 401, and so does an anonymous request unless
``anonymous_pull`` (which grants pull only).

Concurrency: requests are served from a background thread per connection;
the counters and settings are guarded by a lock and may be read or changed
while it runs (e.g. `expires_in` to force token refreshes).
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import fnmatch
import http.server
import json
import secrets
import shutil
import tempfile
import threading
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID

from tools._net import LOOPBACK, BackgroundHTTPServer
from tools._process import Started

__all__ = ["IssuedToken", "TokenServer"]

ALL_ACTIONS = frozenset({"pull", "push", "delete", "*"})
_DEFAULT_USER_ACL: Mapping[str, frozenset[str]] = {"*": frozenset({"pull", "push"})}


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@dataclass(frozen=True, slots=True)
class IssuedToken:
    """One answered token request, for tests to inspect."""

    user: str  # "" when anonymous
    service: str
    access: tuple[tuple[str, str, tuple[str, ...]], ...]  # (type, name, granted actions)
    expires_in: int


@dataclass(slots=True)
class _Counters:
    requests: int = 0
    refused: int = 0
    issued: list[IssuedToken] = field(default_factory=list)


class TokenServer(Started):
    """Issue registry tokens on ``http://127.0.0.1:PORT/token``.

    Arguments:
        users: user name -> password, checked against HTTP Basic credentials.
        acl: per-user repository rules (see the module docstring); None gives
            every known user pull and push everywhere.
        anonymous_pull: answer requests without credentials with pull-only tokens.
        expires_in: token lifetime in seconds (may be changed while running).
        service, issuer: must match the registry configuration (`TokenAuth` does that).
        cert_dir: where ``cert.pem`` is written; a temporary directory (removed by
            `stop`) when None.
    """

    def __init__(
        self,
        users: Mapping[str, str],
        *,
        acl: Mapping[str, Mapping[str, set[str] | frozenset[str]]] | None = None,
        anonymous_pull: bool = False,
        expires_in: int = 300,
        service: str = "fusesnap-test-registry",
        issuer: str = "fusesnap-test-tokenserver",
        cert_dir: str | Path | None = None,
    ) -> None:
        self.users = dict(users)
        self.acl = {user: dict(rules) for user, rules in (acl or {}).items()}
        self.anonymous_pull = anonymous_pull
        self.service = service
        self.issuer = issuer
        self._lock = threading.Lock()
        self._expires_in = expires_in
        self._counters = _Counters()
        self._given_cert_dir = Path(cert_dir) if cert_dir is not None else None
        self._cert_dir: Path | None = None
        self._key, self._cert = _make_key_and_cert(issuer)
        self._cert_der = self._cert.public_bytes(serialization.Encoding.DER)
        self._http = BackgroundHTTPServer(_handler_for(self), name="fusesnap-tokenserver")

    # -- configuration and counters --------------------------------------------------------

    @property
    def cert_path(self) -> Path:
        """PEM certificate to use as the registry's ``rootcertbundle`` (written by `start`)."""
        if self._cert_dir is None:
            self._cert_dir = self._given_cert_dir or Path(
                tempfile.mkdtemp(prefix="fusesnap-tokenserver-")
            )
        return self._cert_dir / "cert.pem"

    @property
    def host(self) -> str:
        return f"{LOOPBACK}:{self._http.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    @property
    def realm(self) -> str:
        return f"{self.url}/token"

    @property
    def expires_in(self) -> int:
        with self._lock:
            return self._expires_in

    @expires_in.setter
    def expires_in(self, seconds: int) -> None:
        with self._lock:
            self._expires_in = seconds

    @property
    def token_requests(self) -> int:
        """Requests to ``/token`` so far, answered or refused."""
        with self._lock:
            return self._counters.requests

    @property
    def refused(self) -> int:
        with self._lock:
            return self._counters.refused

    @property
    def issued(self) -> list[IssuedToken]:
        with self._lock:
            return list(self._counters.issued)

    def reset_counters(self) -> None:
        with self._lock:
            self._counters = _Counters()

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> TokenServer:
        if not self.cert_path.exists():
            self.cert_path.parent.mkdir(parents=True, exist_ok=True)
            self.cert_path.write_bytes(self._cert.public_bytes(serialization.Encoding.PEM))
        self._http.start()
        return self

    def stop(self) -> None:
        """Stop serving; a temporary certificate directory is removed (a registry that
        already started keeps the certificate it read)."""
        self._http.stop()
        if self._given_cert_dir is None and self._cert_dir is not None:
            shutil.rmtree(self._cert_dir, ignore_errors=True)
            self._cert_dir = None

    # -- tokens ----------------------------------------------------------------------------

    def authenticate(self, authorization: str | None) -> str | None:
        """The user named by valid Basic credentials, "" for anonymous, None when refused."""
        if not authorization:
            return "" if self.anonymous_pull else None
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() != "basic":
            return None
        try:
            user, sep, password = base64.b64decode(value.strip()).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return None
        expected = self.users.get(user)
        if not sep or expected is None:
            return None
        if not secrets.compare_digest(password.encode(), expected.encode()):
            return None
        return user

    def allowed_actions(self, user: str, repository: str) -> set[str]:
        if user == "":
            return {"pull"} if self.anonymous_pull else set()
        rules = self.acl.get(user, _DEFAULT_USER_ACL)
        allowed: set[str] = set()
        for pattern, actions in rules.items():
            if fnmatch.fnmatchcase(repository, pattern):
                allowed |= set(actions)
        if "*" in allowed:
            allowed |= ALL_ACTIONS
        return allowed

    def grant(self, user: str, scopes: list[str]) -> list[tuple[str, str, tuple[str, ...]]]:
        """The access entries for the requested ``scope`` strings (``type:name:actions``)."""
        access = []
        for scope in scopes:
            kind, _, rest = scope.partition(":")
            name, _, actions = rest.rpartition(":")
            if not kind or not name:
                continue
            requested = [a for a in actions.split(",") if a]
            if kind == "repository":
                allowed = self.allowed_actions(user, name)
            elif kind == "registry" and name == "catalog" and user:
                allowed = {"*"}
            else:
                allowed = set()
            granted = tuple(a for a in requested if a in allowed)
            access.append((kind, name, granted))
        return access

    def issue(self, user: str, service: str, scopes: list[str]) -> dict[str, object]:
        """Sign a token and return the JSON answer of ``/token``."""
        access = self.grant(user, scopes)
        expires_in = self.expires_in
        now = dt.datetime.now(dt.UTC)
        issued_at = int(now.timestamp())
        header = {"typ": "JWT", "alg": "RS256", "x5c": [base64.b64encode(self._cert_der).decode()]}
        claims = {
            "iss": self.issuer,
            "sub": user,
            "aud": service,
            "exp": issued_at + expires_in,
            # Back-date nbf a little: the registry compares against its own clock.
            "nbf": issued_at - 10,
            "iat": issued_at,
            "jti": secrets.token_hex(16),
            "access": [
                {"type": kind, "name": name, "actions": list(actions)}
                for kind, name, actions in access
            ],
        }
        signing_input = (
            _b64url(json.dumps(header, separators=(",", ":")).encode())
            + "."
            + _b64url(json.dumps(claims, separators=(",", ":")).encode())
        )
        signature = self._key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
        token = f"{signing_input}.{_b64url(signature)}"
        with self._lock:
            self._counters.issued.append(IssuedToken(user, service, tuple(access), expires_in))
        return {
            "token": token,
            "access_token": token,
            "expires_in": expires_in,
            "issued_at": now.isoformat().replace("+00:00", "Z"),
        }

    def _count(self, *, refused: bool) -> None:
        with self._lock:
            self._counters.requests += 1
            self._counters.refused += int(refused)


def _make_key_and_cert(issuer: str) -> tuple[rsa.RSAPrivateKey, x509.Certificate]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    return key, cert


def _handler_for(server: TokenServer) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            url = urllib.parse.urlsplit(self.path)
            if url.path != "/token":
                self._reply(404, {"error": "not found"})
                return
            query = urllib.parse.parse_qs(url.query)
            user = server.authenticate(self.headers.get("Authorization"))
            server._count(refused=user is None)
            if user is None:
                self._reply(
                    401,
                    {"errors": [{"code": "UNAUTHORIZED", "message": "authentication required"}]},
                    {"WWW-Authenticate": 'Basic realm="fusesnap-test-tokenserver"'},
                )
                return
            service = query.get("service", [server.service])[0]
            self._reply(200, server.issue(user, service, query.get("scope", [])))

        def _reply(
            self, status: int, body: object, headers: Mapping[str, str] | None = None
        ) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: object) -> None:
            pass  # tests read the counters, not stderr

    return Handler
