"""An in-memory Distribution registry (plus token server and blob storage) for httpx.MockTransport.

Hosts it answers:
- ``auth.example``     the token server (``/token``)
- ``storage.example``  blob storage that registry blob GETs may redirect to
- anything else        the registry API (``/v2/…``)

Faults are injected with ``hooks``: callables tried first on every request that
return a response (or raise) to take over, or None to pass.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from urllib.parse import parse_qs

import httpx

from fusesnap import oci
from fusesnap.digest import Digest
from fusesnap.oci import Descriptor, Platform

REALM = "https://auth.example/token"
STORAGE = "https://storage.example"
_ROUTE = re.compile(
    r"^/v2/(?P<repo>.+?)/(?P<kind>manifests|blobs/uploads|blobs|tags|referrers)/(?P<rest>.*)$"
)

Hook = Callable[[httpx.Request], "httpx.Response | None"]


class BrokenStream(httpx.AsyncByteStream):
    """A body that sends ``data[:fail_after]`` and then drops the connection."""

    def __init__(self, data: bytes, fail_after: int, exc: type[Exception] = httpx.ReadError):
        self.data = data
        self.fail_after = fail_after
        self.exc = exc

    async def __aiter__(self) -> AsyncIterator[bytes]:
        if self.fail_after:
            yield self.data[: self.fail_after]
        raise self.exc("connection reset by peer")


def errors_body(code: str, message: str) -> bytes:
    return json.dumps({"errors": [{"code": code, "message": message}]}).encode()


@dataclass
class FakeRegistry:
    auth: str | None = None  # None, "bearer" or "basic"
    users: dict[str, str] = field(default_factory=dict)
    identity_tokens: set[str] = field(default_factory=set)
    anonymous_pull: bool = True
    token_ttl: int | None = 300
    token_field: str = "token"
    redirect_blobs: bool = False
    ignore_range: bool = False
    referrers_api: bool = True
    tls_fails: set[str] = field(default_factory=set)  # hosts whose HTTPS handshake fails
    tags_page_size: int = 0

    blobs: dict[str, bytes] = field(default_factory=dict)
    manifests: dict[tuple[str, str], tuple[bytes, str]] = field(default_factory=dict)
    requests: list[httpx.Request] = field(default_factory=list)
    token_requests: list[httpx.Request] = field(default_factory=list)
    storage_requests: list[httpx.Request] = field(default_factory=list)
    hooks: list[Hook] = field(default_factory=list)
    valid_tokens: dict[str, str] = field(default_factory=dict)  # token -> scope
    issued: int = 0

    # -- content ---------------------------------------------------------------

    def add_blob(self, data: bytes, media_type: str = oci.OCI_LAYER_GZIP) -> Descriptor:
        digest = Digest.of(data)
        self.blobs[digest] = data
        return Descriptor(media_type=media_type, digest=digest, size=len(data))

    def add_manifest(
        self,
        repo: str,
        body: bytes,
        media_type: str,
        *,
        tags: tuple[str, ...] = (),
        platform: Platform | None = None,
    ) -> Descriptor:
        digest = Digest.of(body)
        self.manifests[(repo, str(digest))] = (body, media_type)
        for tag in tags:
            self.manifests[(repo, tag)] = (body, media_type)
        return Descriptor(media_type=media_type, digest=digest, size=len(body), platform=platform)

    def add_image(
        self, repo: str, *, tags: tuple[str, ...] = (), arch: str = "amd64", layer: bytes = b""
    ) -> Descriptor:
        config = self.add_blob(
            json.dumps(
                {"architecture": arch, "os": "linux", "rootfs": {"type": "layers", "diff_ids": []}}
            ).encode(),
            oci.OCI_CONFIG,
        )
        layer_desc = self.add_blob(layer or f"layer-{arch}".encode())
        doc = {
            "schemaVersion": 2,
            "mediaType": oci.OCI_MANIFEST,
            "config": config.to_dict(),
            "layers": [layer_desc.to_dict()],
        }
        return self.add_manifest(
            repo,
            json.dumps(doc).encode(),
            oci.OCI_MANIFEST,
            tags=tags,
            platform=Platform("linux", arch),
        )

    def add_index(
        self, repo: str, children: list[Descriptor], *, tags: tuple[str, ...]
    ) -> Descriptor:
        doc = {
            "schemaVersion": 2,
            "mediaType": oci.OCI_INDEX,
            "manifests": [c.to_dict() for c in children],
        }
        return self.add_manifest(repo, json.dumps(doc).encode(), oci.OCI_INDEX, tags=tags)

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)

    def api_requests(self, kind: str = "") -> list[httpx.Request]:
        return [r for r in self.requests if kind in r.url.path]

    # -- dispatch --------------------------------------------------------------

    def handle(self, request: httpx.Request) -> httpx.Response:
        for hook in list(self.hooks):
            response = hook(request)
            if response is not None:
                return response
        host = request.url.host
        if request.url.scheme == "https" and host in self.tls_fails:
            raise httpx.ConnectError("[SSL: WRONG_VERSION_NUMBER] wrong version number")
        if host == "auth.example":
            self.token_requests.append(request)
            return self._token(request)
        if host == "storage.example":
            self.storage_requests.append(request)
            digest = request.url.path.rsplit("/", 1)[-1]
            return self._serve_blob(request, self.blobs[digest])
        self.requests.append(request)
        return self._api(request)

    # -- token server ----------------------------------------------------------

    def _token(self, request: httpx.Request) -> httpx.Response:
        if request.method == "POST":
            form = parse_qs(request.content.decode())
            if form.get("grant_type") != ["refresh_token"]:
                return httpx.Response(400, json={"error": "unsupported_grant_type"})
            if form.get("refresh_token", [""])[0] not in self.identity_tokens:
                return httpx.Response(401, json={"error": "invalid_grant"})
            scope = form.get("scope", [""])[0]
            return self._issue(scope, "access_token")
        scope = request.url.params.get("scope", "")
        header = request.headers.get("authorization")
        if header:
            if not self._basic_ok(header):
                return httpx.Response(401, json={"details": "incorrect username or password"})
        elif not self.anonymous_pull or ":push" in scope or ",push" in scope:
            return httpx.Response(401, json={"details": "authentication required"})
        return self._issue(scope, self.token_field)

    def _issue(self, scope: str, key: str) -> httpx.Response:
        self.issued += 1
        token = f"tok-{self.issued}"
        self.valid_tokens[token] = scope
        doc: dict[str, object] = {key: token}
        if self.token_ttl is not None:
            doc["expires_in"] = self.token_ttl
        return httpx.Response(200, json=doc)

    def _basic_ok(self, header: str) -> bool:
        if not header.startswith("Basic "):
            return False
        user, _, password = base64.b64decode(header[6:]).decode().partition(":")
        return self.users.get(user) == password

    # -- registry API ----------------------------------------------------------

    def _challenge(self, repo: str, actions: str) -> httpx.Response:
        if self.auth == "basic":
            value = 'Basic realm="fake registry"'
        else:
            value = (
                f'Bearer realm="{REALM}",service="registry.example",'
                f'scope="repository:{repo}:{actions}"'
            )
        return httpx.Response(
            401,
            headers={"WWW-Authenticate": value},
            content=errors_body("UNAUTHORIZED", "authentication required"),
        )

    def _authorized(self, request: httpx.Request, repo: str, actions: str) -> bool:
        header = request.headers.get("authorization", "")
        if self.auth == "basic":
            return self._basic_ok(header)
        if not header.startswith("Bearer "):
            return False
        scope = self.valid_tokens.get(header[7:])
        return scope in (f"repository:{repo}:{actions}", f"repository:{repo}:pull,push")

    def _api(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if path == "/v2/":
            return httpx.Response(200, json={})
        m = _ROUTE.match(path)
        if m is None:
            return httpx.Response(404, content=errors_body("NOT_FOUND", "no route"))
        repo, kind, rest = m.group("repo"), m.group("kind"), m.group("rest")
        push = request.method in ("POST", "PUT", "PATCH", "DELETE")
        actions = "pull,push" if push else "pull"
        if self.auth and not self._authorized(request, repo, actions):
            return self._challenge(repo, actions)
        if kind == "manifests":
            return self._manifest(request, repo, rest)
        if kind == "blobs":
            return self._blob(request, rest)
        if kind == "blobs/uploads":
            return self._upload(request, repo, rest)
        if kind == "tags":
            return self._tags(request, repo)
        return self._referrers(request, repo, rest)

    def _manifest(self, request: httpx.Request, repo: str, obj: str) -> httpx.Response:
        if request.method == "PUT":
            body = request.content
            media_type = request.headers["content-type"]
            digest = self.add_manifest(repo, body, media_type).digest
            if ":" not in obj:
                self.manifests[(repo, obj)] = (body, media_type)
            return httpx.Response(201, headers={"Docker-Content-Digest": digest})
        found = self.manifests.get((repo, obj))
        if found is None:
            return httpx.Response(404, content=errors_body("MANIFEST_UNKNOWN", "manifest unknown"))
        body, media_type = found
        headers = {"Content-Type": media_type, "Docker-Content-Digest": Digest.of(body)}
        content = b"" if request.method == "HEAD" else body
        return httpx.Response(200, headers=headers, content=content)

    def _blob(self, request: httpx.Request, digest: str) -> httpx.Response:
        data = self.blobs.get(digest)
        if data is None:
            return httpx.Response(404, content=errors_body("BLOB_UNKNOWN", "blob unknown"))
        if request.method == "HEAD":
            return httpx.Response(200, headers={"Content-Length": str(len(data))})
        if self.redirect_blobs:
            return httpx.Response(307, headers={"Location": f"{STORAGE}/blobs/{digest}?sig=x"})
        return self._serve_blob(request, data)

    def _serve_blob(self, request: httpx.Request, data: bytes) -> httpx.Response:
        rng = request.headers.get("range")
        if rng and not self.ignore_range:
            m = re.fullmatch(r"bytes=(\d+)-(\d*)", rng)
            assert m, rng
            start = int(m.group(1))
            end = int(m.group(2)) if m.group(2) else len(data) - 1
            if start >= len(data):
                return httpx.Response(416)
            end = min(end, len(data) - 1)
            return httpx.Response(
                206,
                headers={"Content-Range": f"bytes {start}-{end}/{len(data)}"},
                content=data[start : end + 1],
            )
        return httpx.Response(200, content=data)

    def _upload(self, request: httpx.Request, repo: str, rest: str) -> httpx.Response:
        if request.method == "POST":
            location = f"/v2/{repo}/blobs/uploads/u-{len(self.blobs)}?_state=abc"
            return httpx.Response(202, headers={"Location": location})
        assert request.method == "PUT", request.method
        assert request.url.params.get("_state") == "abc"
        digest = Digest(request.url.params["digest"])
        if Digest.of(request.content) != digest:
            return httpx.Response(400, content=errors_body("DIGEST_INVALID", "digest mismatch"))
        self.blobs[digest] = request.content
        return httpx.Response(201, headers={"Docker-Content-Digest": digest})

    def _tags(self, request: httpx.Request, repo: str) -> httpx.Response:
        tags = sorted(t for (r, t) in self.manifests if r == repo and ":" not in t)
        if not tags:
            return httpx.Response(404, content=errors_body("NAME_UNKNOWN", "repository unknown"))
        last = request.url.params.get("last")
        if last:
            tags = [t for t in tags if t > last]
        headers = {}
        if self.tags_page_size and len(tags) > self.tags_page_size:
            tags = tags[: self.tags_page_size]
            page = f"/v2/{repo}/tags/list?n={self.tags_page_size}&last={tags[-1]}"
            headers["Link"] = f'<{page}>; rel="next"'
        return httpx.Response(200, headers=headers, json={"name": repo, "tags": tags})

    def _referrers(self, request: httpx.Request, repo: str, digest: str) -> httpx.Response:
        if not self.referrers_api:
            return httpx.Response(404, content=errors_body("NOT_FOUND", "page not found"))
        found = []
        for (r, key), (body, media_type) in self.manifests.items():
            if r != repo or ":" not in key:
                continue
            doc = json.loads(body)
            if (doc.get("subject") or {}).get("digest") != digest:
                continue
            found.append(
                {
                    "mediaType": media_type,
                    "digest": key,
                    "size": len(body),
                    "artifactType": doc.get("artifactType") or doc["config"]["mediaType"],
                }
            )
        return httpx.Response(
            200,
            headers={"Content-Type": oci.OCI_INDEX},
            json={"schemaVersion": 2, "mediaType": oci.OCI_INDEX, "manifests": found},
        )


def fail_times(
    n: int,
    *,
    status: int = 503,
    path: str = "",
    headers: dict[str, str] | None = None,
    exc: Exception | None = None,
) -> Hook:
    """A hook that fails the first ``n`` matching requests (status or exception)."""
    left = [n]

    def hook(request: httpx.Request) -> httpx.Response | None:
        if left[0] <= 0 or path not in request.url.path:
            return None
        left[0] -= 1
        if exc is not None:
            raise exc
        return httpx.Response(status, headers=headers or {})

    return hook


class MemorySink:
    """A `BlobSink` in memory, recording resets."""

    def __init__(self, initial: bytes = b"") -> None:
        self.data = bytearray(initial)
        self.resets = 0

    @property
    def offset(self) -> int:
        return len(self.data)

    async def write(self, data: bytes) -> None:
        self.data += data

    async def reset(self) -> None:
        self.resets += 1
        self.data.clear()
