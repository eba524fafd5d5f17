"""An HTTP reverse proxy in front of a registry that counts traffic and injects faults.

    client ──> FaultProxy (127.0.0.1:PORT, one thread per connection) ──> upstream registry

Requests are forwarded with `http.client` (a fresh upstream connection each),
bodies stream through in 64 KiB pieces both ways; status, headers (``Range``,
``Content-Range``, ``Location``, ``WWW-Authenticate``, ``Docker-Content-Digest``)
pass unchanged, except that a ``Location`` naming the upstream host is rewritten
to the proxy. The client's ``Host`` header is forwarded, so the registry builds
its upload URLs with the proxy's address anyway.

Faults, settable at any time from any thread; each one-shot fault applies to the
next ``n`` requests of a ``kind`` (None = any kind), in the order they were set:

    fail_next(n, status=500, retry_after=None)   answer with an error status
    drop_next(n)                                 close the connection, no response
    cut_body_next(n, after_bytes)                send headers and ``after_bytes`` of
                                                 the body, then close (GET only)
    rate_limit(bytes_per_sec)                    throttle every response body
    delay(seconds)                               wait before forwarding each request

Request kinds: ``manifest`` (/v2/…/manifests/…), ``blob`` (/v2/…/blobs/<digest>),
``upload`` (/v2/…/blobs/uploads/…), ``token`` (/token…) and ``other``.

Counters (`count`, `bytes_sent`, `records`) and faults are cleared by `reset`.
"""

from __future__ import annotations

import contextlib
import http.client
import http.server
import io
import re
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

from tools._net import LOOPBACK, BackgroundHTTPServer
from tools._process import Started

__all__ = ["FaultProxy", "ProxyRecord", "request_kind"]

PIECE = 64 * 1024
Kind = Literal["manifest", "blob", "upload", "token", "other"]
KINDS: tuple[Kind, ...] = ("manifest", "blob", "upload", "token", "other")

_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
        "expect",
    }
)
_MANIFEST = re.compile(r"^/v2/.+/manifests/[^/]+$")
_UPLOAD = re.compile(r"^/v2/.+/blobs/uploads(/|$)")
_BLOB = re.compile(r"^/v2/.+/blobs/[^/]+$")


def request_kind(path: str) -> Kind:
    """Classify a request path (query string ignored)."""
    path = path.split("?", 1)[0]
    if path.startswith("/token"):
        return "token"
    if _MANIFEST.match(path):
        return "manifest"
    if _UPLOAD.match(path):
        return "upload"
    if _BLOB.match(path):
        return "blob"
    return "other"


@dataclass(frozen=True, slots=True)
class ProxyRecord:
    """One request as the proxy saw it."""

    method: str
    path: str
    kind: Kind
    status: int | None  # None when the connection was dropped before a status line
    range: str | None
    bytes_sent: int  # response body bytes written to the client
    fault: str | None  # "fail", "drop", "cut" or None


@dataclass(slots=True)
class _Live:
    """A request in flight. Updated before each write to the client, so a client that has
    seen a response (or some bytes) always finds them counted."""

    method: str
    path: str
    kind: Kind
    range: str | None
    fault: str | None
    status: int | None = None
    bytes_sent: int = 0

    def freeze(self) -> ProxyRecord:
        return ProxyRecord(
            self.method, self.path, self.kind, self.status, self.range, self.bytes_sent, self.fault
        )


@dataclass(slots=True)
class _Fault:
    action: Literal["fail", "drop", "cut"]
    remaining: int
    kind: Kind | None
    status: int = 500
    retry_after: float | None = None
    after_bytes: int = 0


class _Drop(Exception):
    """Close the client connection now."""


class FaultProxy(Started):
    """Forward ``http://127.0.0.1:PORT`` to ``upstream`` (``host:port``), with faults.

    Concurrency: counters, records and faults are guarded by one lock; every
    public method may be called from any thread while requests are in flight.
    """

    def __init__(self, upstream: str, *, timeout: float = 60.0) -> None:
        self.upstream = upstream.removeprefix("http://").rstrip("/")
        self.timeout = timeout
        self._lock = threading.Lock()
        self._faults: list[_Fault] = []
        self._rate: float | None = None
        self._delay = 0.0
        self._counts: Counter[tuple[str, Kind]] = Counter()
        self._bytes: Counter[Kind] = Counter()
        self._records: list[_Live] = []
        self._http = BackgroundHTTPServer(_handler_for(self), name="fusesnap-faultproxy")

    # -- lifecycle -------------------------------------------------------------------------

    @property
    def host(self) -> str:
        return f"{LOOPBACK}:{self._http.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    def start(self) -> FaultProxy:
        self._http.start()
        return self

    def stop(self) -> None:
        self._http.stop()

    # -- faults ----------------------------------------------------------------------------

    def fail_next(
        self,
        n: int = 1,
        status: int = 500,
        *,
        retry_after: float | None = None,
        kind: Kind | None = None,
    ) -> None:
        """Answer the next ``n`` requests (of ``kind``) with ``status`` and a registry-style
        JSON error, with ``Retry-After`` if given; nothing reaches the upstream."""
        self._add(_Fault("fail", n, kind, status=status, retry_after=retry_after))

    def drop_next(self, n: int = 1, *, kind: Kind | None = None) -> None:
        """Close the connection of the next ``n`` requests without answering."""
        self._add(_Fault("drop", n, kind))

    def cut_body_next(self, n: int = 1, after_bytes: int = 0, *, kind: Kind | None = None) -> None:
        """For the next ``n`` GET requests (of ``kind``): forward, send the status, headers and
        ``after_bytes`` of the body, then close the connection."""
        self._add(_Fault("cut", n, kind, after_bytes=after_bytes))

    def rate_limit(self, bytes_per_sec: float | None) -> None:
        """Throttle each response body to ``bytes_per_sec`` (None: full speed)."""
        with self._lock:
            self._rate = bytes_per_sec

    def delay(self, seconds: float) -> None:
        """Wait ``seconds`` before forwarding every request (0: no delay)."""
        with self._lock:
            self._delay = seconds

    def reset(self) -> None:
        """Clear faults, rate limit, delay, counters and records."""
        with self._lock:
            self._faults.clear()
            self._rate = None
            self._delay = 0.0
            self._counts.clear()
            self._bytes.clear()
            self._records.clear()

    def _add(self, fault: _Fault) -> None:
        if fault.remaining < 1:
            raise ValueError("n must be at least 1")
        with self._lock:
            self._faults.append(fault)

    def _take_fault(self, method: str, kind: Kind) -> _Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.kind not in (None, kind):
                    continue
                if fault.action == "cut" and method != "GET":
                    continue
                fault.remaining -= 1
                if fault.remaining == 0:
                    self._faults.remove(fault)
                return fault
        return None

    # -- counters --------------------------------------------------------------------------

    def count(self, kind: Kind | None = None, method: str | None = None) -> int:
        """Requests seen (faulted ones included), filtered by kind and/or method."""
        with self._lock:
            return sum(
                n for (m, k), n in self._counts.items() if kind in (None, k) and method in (None, m)
            )

    @property
    def counts(self) -> dict[tuple[str, Kind], int]:
        """``{(method, kind): requests}``."""
        with self._lock:
            return dict(self._counts)

    def bytes_sent(self, kind: Kind | None = None) -> int:
        """Response body bytes written to clients (all kinds, or one)."""
        with self._lock:
            return self._bytes.total() if kind is None else self._bytes[kind]

    @property
    def records(self) -> list[ProxyRecord]:
        """Every request so far, oldest first (the last ones may still be in flight)."""
        with self._lock:
            return [live.freeze() for live in self._records]

    def _begin(self, live: _Live) -> None:
        with self._lock:
            self._counts[(live.method, live.kind)] += 1
            self._records.append(live)

    def _set_status(self, live: _Live, status: int) -> None:
        with self._lock:
            live.status = status

    def _add_bytes(self, live: _Live, n: int) -> None:
        with self._lock:
            live.bytes_sent += n
            self._bytes[live.kind] += n

    def _settings(self) -> tuple[float | None, float]:
        with self._lock:
            return self._rate, self._delay


def _read_chunked(rfile: io.BufferedIOBase) -> Iterator[bytes]:
    """Decode a chunked request body from the client."""
    while True:
        size = int(rfile.readline(65537).split(b";", 1)[0].strip() or b"0", 16)
        if size == 0:
            while rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                pass  # trailers
            return
        remaining = size
        while remaining:
            piece = rfile.read(min(remaining, PIECE))
            if not piece:
                raise _Drop("client closed mid-chunk")
            remaining -= len(piece)
            yield piece
        rfile.readline(3)


def _read_fixed(rfile: io.BufferedIOBase, length: int) -> Iterator[bytes]:
    remaining = length
    while remaining:
        piece = rfile.read(min(remaining, PIECE))
        if not piece:
            raise _Drop("client closed mid-body")
        remaining -= len(piece)
        yield piece


def _handler_for(proxy: FaultProxy) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _body(self) -> Iterator[bytes] | None:
            if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
                return _read_chunked(self.rfile)
            length = int(self.headers.get("Content-Length") or 0)
            return _read_fixed(self.rfile, length) if length else None

        _live: _Live

        def _proxy(self) -> None:
            kind = request_kind(self.path)
            rate, delay = proxy._settings()
            if delay:
                time.sleep(delay)
            fault = proxy._take_fault(self.command, kind)
            self._live = _Live(
                self.command,
                self.path,
                kind,
                self.headers.get("Range"),
                fault.action if fault is not None else None,
            )
            proxy._begin(self._live)
            try:
                body = self._body()
                if fault is not None and fault.action in ("fail", "drop"):
                    for _ in body or ():
                        pass  # read the request fully, so the client sees no reset mid-send
                    if fault.action == "drop":
                        raise _Drop
                    self._send_error(fault)
                    return
                self._forward(body, fault, rate)
            except (_Drop, OSError):
                self.close_connection = True
                # Best effort: the socket may be gone already.
                with contextlib.suppress(OSError):
                    self.connection.shutdown(socket.SHUT_RDWR)

        def _start_response(self, status: int, reason: str | None = None) -> None:
            # send_response_only: the upstream's Date header is relayed, not a second one.
            proxy._set_status(self._live, status)
            self.send_response_only(status, reason)

        def _write_body(self, data: bytes, *, chunked: bool = False) -> None:
            proxy._add_bytes(self._live, len(data))
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data) if chunked else data)

        def _send_error(self, fault: _Fault) -> None:
            data = (
                b'{"errors":[{"code":"UNAVAILABLE","message":"fusesnap fault proxy: '
                b'injected failure"}]}'
            )
            self._start_response(fault.status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            if fault.retry_after is not None:
                self.send_header("Retry-After", f"{fault.retry_after:g}")
            self.end_headers()
            if self.command != "HEAD":
                self._write_body(data)

        def _forward(
            self, body: Iterator[bytes] | None, fault: _Fault | None, rate: float | None
        ) -> None:
            # A list, not a dict: clients repeat headers (Go sends one Accept per media type).
            headers = [(k, v) for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP]
            conn = http.client.HTTPConnection(proxy.upstream, timeout=proxy.timeout)
            try:
                chunked = body is not None and all(
                    k.lower() != "content-length" for k, _ in headers
                )
                conn.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
                for name, value in headers:
                    conn.putheader(name, value)
                if chunked:
                    conn.putheader("Transfer-Encoding", "chunked")
                conn.endheaders()
                for piece in body or ():
                    conn.send(b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece)
                if chunked:
                    conn.send(b"0\r\n\r\n")
                resp = conn.getresponse()
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                data = f"fusesnap fault proxy: upstream error: {exc}\n".encode()
                self._start_response(502)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self._write_body(data)
                return
            try:
                self._relay(resp, fault, rate)
            finally:
                conn.close()

        def _relay(
            self, resp: http.client.HTTPResponse, fault: _Fault | None, rate: float | None
        ) -> None:
            self._start_response(resp.status, resp.reason)
            length = resp.getheader("Content-Length")
            for name, value in resp.getheaders():
                if name.lower() in _HOP_BY_HOP:
                    continue
                if name.lower() == "location":
                    value = value.replace(f"//{proxy.upstream}", f"//{proxy.host}")
                self.send_header(name, value)
            no_body = self.command == "HEAD" or resp.status in (204, 304) or resp.status < 200
            chunked = length is None and not no_body
            if chunked:
                self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            if no_body:
                return
            limit = fault.after_bytes if fault is not None and fault.action == "cut" else None
            # Small pieces under a rate limit, so throttling is smooth, not 64 KiB bursts.
            size = PIECE if not rate else max(512, min(PIECE, int(rate / 20)))
            started = time.monotonic()
            while piece := resp.read(size):
                sent = self._live.bytes_sent
                if limit is not None and sent + len(piece) >= limit:
                    self._write_body(piece[: limit - sent], chunked=chunked)
                    self.wfile.flush()
                    raise _Drop
                self._write_body(piece, chunked=chunked)
                if rate:
                    ahead = self._live.bytes_sent / rate - (time.monotonic() - started)
                    if ahead > 0:
                        time.sleep(ahead)
            if limit is not None:
                raise _Drop  # a body shorter than the cut still ends without a clean close
            if chunked:
                self.wfile.write(b"0\r\n\r\n")

        do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = _proxy

        def log_message(self, format: str, *args: object) -> None:
            pass  # tests read the records, not stderr

    return Handler
