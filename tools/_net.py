"""Small loopback-networking helpers shared by the test servers."""

from __future__ import annotations

import http.server
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable

LOOPBACK = "127.0.0.1"


def free_port() -> int:
    """A TCP port on the loopback interface that was free a moment ago.

    Another process may take it before the caller binds it; callers that start
    an external server retry on "address already in use".
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port


def http_status(url: str, *, timeout: float = 2.0) -> int | None:
    """The status of ``GET url``, or None when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            status: int = resp.status
            return status
    except urllib.error.HTTPError as exc:
        return exc.code
    except (OSError, ValueError):
        return None


def wait_until(
    predicate: Callable[[], bool],
    *,
    timeout: float,
    interval: float = 0.05,
    abort: Callable[[], bool] | None = None,
) -> bool:
    """Poll ``predicate`` until it holds (True) or ``timeout`` passes (False).

    ``abort`` is polled too; when it returns True waiting stops early (e.g. the
    server process has exited and will never answer).
    """
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if (abort is not None and abort()) or time.monotonic() >= deadline:
            return False
        time.sleep(interval)


class BackgroundHTTPServer:
    """A `ThreadingHTTPServer` on a free loopback port, served from a daemon thread."""

    def __init__(self, handler: type[http.server.BaseHTTPRequestHandler], *, name: str) -> None:
        self._handler = handler
        self._name = name
        self._server: http.server.ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError(f"{self._name} is not running")
        port: int = self._server.server_address[1]
        return port

    @property
    def running(self) -> bool:
        return self._server is not None

    def start(self) -> None:
        if self._server is not None:
            return
        server = http.server.ThreadingHTTPServer((LOOPBACK, 0), self._handler)
        server.daemon_threads = True
        thread = threading.Thread(target=server.serve_forever, name=self._name, daemon=True)
        thread.start()
        self._server, self._thread = server, thread

    def stop(self) -> None:
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if thread is not None:
            thread.join(timeout=5)
