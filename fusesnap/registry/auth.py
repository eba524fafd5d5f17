"""Registry authentication: ``WWW-Authenticate`` challenges, bearer tokens, Basic auth.

The Distribution token flow, as the docker CLI speaks it::

    GET /v2/repo/manifests/tag               -> 401, WWW-Authenticate: Bearer realm=…,service=…
    GET realm?service=…&scope=repository:repo:pull      (anonymous, or with Basic user:pass)
    POST realm grant_type=refresh_token&refresh_token=…  (with an identity token)
        -> {"token" | "access_token", "expires_in", "issued_at"}
    GET /v2/repo/manifests/tag, Authorization: Bearer <token>

Tokens are cached per (registry host, scope) until shortly before they expire,
and once a host has sent a Bearer challenge, tokens for new scopes are fetched
before the first request instead of after a 401. A registry that answers with
a ``Basic`` challenge gets the credentials directly, and from then on
pre-emptively.

Secrets (passwords, identity tokens, bearer tokens) never appear in a log line
or an exception message; messages say only whether credentials were present.
"""

from __future__ import annotations

import base64
import datetime as _dt
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field

import httpx
import trio

from fusesnap.errors import AuthenticationError, RegistryError
from fusesnap.reference import is_loopback
from fusesnap.registry._http import error_summary, read_limited
from fusesnap.registry.credentials import Credentials
from fusesnap.registry.retry import RETRY_STATUSES, RetryableError, parse_retry_after

log = logging.getLogger(__name__)

DEFAULT_EXPIRES_IN = 60
# Refresh this long before a token's expiry, so that it does not run out in flight.
EXPIRY_MARGIN = 10.0
TOKEN_BODY_LIMIT = 1024 * 1024
CLIENT_ID = "fusesnap"

_TOKEN = r"[A-Za-z0-9!#$%&'*+.^_`|~-]+"
_PARAM = re.compile(rf"\s*({_TOKEN})\s*=\s*(?:\"((?:[^\"\\]|\\.)*)\"|({_TOKEN}))\s*")
_SCHEME = re.compile(rf"\s*({_TOKEN})")
_TOKEN68 = re.compile(r"\s+([A-Za-z0-9._~+/-]+=*)\s*(?=,|$)")
_SEPARATORS = re.compile(r"[\s,]*")


def _skip_separators(value: str, pos: int) -> int:
    m = _SEPARATORS.match(value, pos)
    return m.end() if m else pos


@dataclass(frozen=True, slots=True)
class Challenge:
    """One challenge from a ``WWW-Authenticate`` header: scheme (lowercase) and params."""

    scheme: str
    params: dict[str, str] = field(default_factory=dict, hash=False)

    @property
    def realm(self) -> str:
        return self.params.get("realm", "")

    @property
    def service(self) -> str:
        return self.params.get("service", "")

    @property
    def scope(self) -> str:
        return self.params.get("scope", "")


def parse_www_authenticate(values: str | Iterable[str]) -> list[Challenge]:
    """Every challenge in one or more ``WWW-Authenticate`` header values.

    Handles several challenges in one value (``Basic realm="x", Bearer realm="y"``),
    quoted values containing commas and escapes, and token68 (ignored). Parsing is
    lenient: it stops at the first thing it does not understand in a value.
    """
    if isinstance(values, str):
        values = [values]
    out: list[Challenge] = []
    for value in values:
        pos = _skip_separators(value, 0)
        while pos < len(value):
            m = _SCHEME.match(value, pos)
            if m is None:
                break
            scheme, pos = m.group(1).lower(), m.end()
            params: dict[str, str] = {}
            t68 = _TOKEN68.match(value, pos)
            if t68 is not None and not _PARAM.match(value, pos):
                pos = t68.end()
            else:
                while True:
                    p = _PARAM.match(value, pos)
                    if p is None:
                        break
                    name, quoted, bare = p.groups()
                    params[name.lower()] = (
                        re.sub(r"\\(.)", r"\1", quoted) if quoted is not None else bare
                    )
                    pos = p.end()
                    if not value.startswith(",", pos):
                        break
                    # After a comma comes either the next param or the next challenge.
                    if _PARAM.match(value, pos + 1) is None:
                        break
                    pos += 1
            out.append(Challenge(scheme, params))
            pos = _skip_separators(value, pos)
    return out


@dataclass(frozen=True, slots=True)
class AuthScope:
    """What a request needs authorization for."""

    registry: str  # the name credentials are configured under (docker.io)
    host: str  # the API host tokens are cached for (registry-1.docker.io)
    repository: str
    actions: str = "pull"  # or "pull,push"

    @property
    def scope(self) -> str:
        return f"repository:{self.repository}:{self.actions}"


@dataclass(frozen=True, slots=True)
class _Token:
    value: str = field(repr=False)
    expires_at: float  # on the authenticator's monotonic clock


def _basic_header(creds: Credentials) -> str:
    raw = f"{creds.username}:{creds.password}".encode()
    return "Basic " + base64.b64encode(raw).decode("ascii")


def _token_lifetime(doc: dict[str, object], wall_now: float) -> float:
    """Seconds the token is good for, from ``expires_in`` and ``issued_at``."""
    expires_in = doc.get("expires_in")
    if isinstance(expires_in, bool) or not isinstance(expires_in, int | float) or expires_in <= 0:
        expires_in = DEFAULT_EXPIRES_IN
    lifetime = float(expires_in)
    issued_at = doc.get("issued_at")
    if isinstance(issued_at, str) and issued_at:
        # Python 3.11 reads at most microseconds; servers may send nanoseconds.
        text = re.sub(r"(\.\d{6})\d+", r"\1", issued_at.strip())
        try:
            issued = _dt.datetime.fromisoformat(text)
        except ValueError:
            issued = None
        if issued is not None and issued.tzinfo is not None:
            age = wall_now - issued.timestamp()
            # A negative or implausible age is clock skew between us and the token
            # server; then trust expires_in alone.
            if 0 <= age < lifetime:
                lifetime -= age
    return lifetime


class Authenticator:
    """Authorization headers for registry requests, with a token cache.

    Use: ``header = await auth.authorization(scope)`` before a request; on a 401,
    ``header = await auth.on_unauthorized(scope, response)`` and send once more;
    if that is refused too, raise ``auth.failure(scope, ...)``.

    Concurrency: token fetches for one (host, scope) are serialized by a lock, so a
    burst of parallel requests costs one token request.
    """

    def __init__(
        self,
        client: httpx.AsyncClient,
        credentials: Callable[[str], Awaitable[Credentials | None]],
        *,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._client = client
        self._credentials = credentials
        self._clock = clock
        self._wall_clock = wall_clock
        self._tokens: dict[tuple[str, str], _Token] = {}
        self._bearer: dict[str, tuple[Challenge, bool]] = {}  # host -> (challenge, over http)
        self._basic: set[str] = set()
        self._locks: dict[tuple[str, str], trio.Lock] = {}

    async def credentials_present(self, registry: str) -> bool:
        return await self._credentials(registry) is not None

    async def authorization(self, s: AuthScope) -> str | None:
        """The ``Authorization`` value to send up front, or None (anonymous first try)."""
        if s.host in self._basic:
            creds = await self._credentials(s.registry)
            return _basic_header(creds) if creds is not None and creds.has_basic else None
        token = self._tokens.get((s.host, s.scope))
        if token is not None and token.expires_at > self._clock():
            return f"Bearer {token.value}"
        known = self._bearer.get(s.host)
        if known is not None:
            challenge, plain = known
            return await self._token(s, challenge, plain_http=plain, stale=None)
        return None

    async def on_unauthorized(self, s: AuthScope, response: httpx.Response) -> str:
        """Answer a 401: drop the token that failed and fetch a fresh one (or use Basic).

        Raises `AuthenticationError` when the challenge cannot be met.
        """
        sent = response.request.headers.get("authorization", "")
        stale = sent[7:] if sent.startswith("Bearer ") else None
        if stale is not None:
            cached = self._tokens.get((s.host, s.scope))
            if cached is not None and cached.value == stale:
                del self._tokens[(s.host, s.scope)]
        challenges = parse_www_authenticate(response.headers.get_list("www-authenticate"))
        plain = response.request.url.scheme == "http"
        for challenge in challenges:
            if challenge.scheme == "bearer" and challenge.realm:
                self._bearer[s.host] = (challenge, plain)
                return await self._token(s, challenge, plain_http=plain, stale=stale)
        creds = await self._credentials(s.registry)
        if any(c.scheme == "basic" for c in challenges):
            if creds is None or not creds.has_basic:
                raise await self.failure(s, "registry wants a username and password")
            self._basic.add(s.host)
            return _basic_header(creds)
        raise await self.failure(s, "HTTP 401 without a usable WWW-Authenticate challenge")

    async def failure(self, s: AuthScope, detail: str) -> AuthenticationError:
        """The error for refused access; says whether credentials were present, never them."""
        present = await self.credentials_present(s.registry)
        note = "credentials were sent" if present else "no credentials configured"
        return AuthenticationError(
            f"registry {s.registry}: authentication failed for {s.repository} ({note}; {detail})"
        )

    async def _token(
        self, s: AuthScope, challenge: Challenge, *, plain_http: bool, stale: str | None
    ) -> str:
        key = (s.host, s.scope)
        lock = self._locks.setdefault(key, trio.Lock())
        async with lock:
            # Another task may have fetched a fresh token while this one waited.
            cached = self._tokens.get(key)
            if cached is not None and cached.value != stale and cached.expires_at > self._clock():
                return f"Bearer {cached.value}"
            token = await self._fetch(s, challenge, plain_http=plain_http)
            self._tokens[key] = token
            return f"Bearer {token.value}"

    async def _fetch(self, s: AuthScope, challenge: Challenge, *, plain_http: bool) -> _Token:
        try:
            realm = httpx.URL(challenge.realm)
        except httpx.InvalidURL:
            realm = None
        if realm is None or realm.scheme not in ("http", "https") or not realm.host:
            raise await self.failure(s, "the registry's token realm is not an http(s) URL")
        creds = await self._credentials(s.registry)
        if (
            creds is not None
            and realm.scheme == "http"
            and not plain_http
            and not is_loopback(realm.netloc.decode("ascii"))
        ):
            raise await self.failure(s, "refusing to send credentials to a plain-HTTP token realm")
        params = {"scope": s.scope}
        if challenge.service:
            params["service"] = challenge.service
        if creds is not None and creds.identity_token:
            kind = "identity token"
            request = self._client.build_request(
                "POST",
                realm,
                data={
                    **params,
                    "grant_type": "refresh_token",
                    "refresh_token": creds.identity_token,
                    "client_id": CLIENT_ID,
                },
            )
        elif creds is not None and creds.has_basic:
            kind = "username/password"
            params["account"] = creds.username
            request = self._client.build_request(
                "GET", realm, params=params, headers={"Authorization": _basic_header(creds)}
            )
        else:
            kind = "anonymous"
            request = self._client.build_request("GET", realm, params=params)
        log.debug(
            "registry %s: fetching %s token for %s from %s", s.registry, kind, s.scope, realm.host
        )
        response = await self._client.send(request, stream=True)
        try:
            body = await read_limited(response, TOKEN_BODY_LIMIT)
        finally:
            await response.aclose()
        status = response.status_code
        if status in RETRY_STATUSES:
            raise RetryableError(
                f"token server {realm.host}: HTTP {status}",
                retry_after=parse_retry_after(response.headers.get("retry-after")),
            )
        if status != 200:
            summary = error_summary(body)
            detail = f"token server {realm.host} answered HTTP {status}"
            raise await self.failure(s, f"{detail}: {summary}" if summary else detail)
        return self._parse_token(s, body, realm.host)

    def _parse_token(self, s: AuthScope, body: bytes, realm_host: str) -> _Token:
        try:
            doc = json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError):
            doc = None
        value = ""
        if isinstance(doc, dict):
            raw = doc.get("token") or doc.get("access_token")
            value = raw if isinstance(raw, str) else ""
        if not value or len(body) > TOKEN_BODY_LIMIT:
            raise RegistryError(
                f"registry {s.registry}: token server {realm_host} sent no usable token"
            )
        assert isinstance(doc, dict)
        lifetime = _token_lifetime(doc, self._wall_clock())
        margin = min(EXPIRY_MARGIN, lifetime / 2)
        return _Token(value=value, expires_at=self._clock() + lifetime - margin)
