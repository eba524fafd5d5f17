"""A slow link on this machine: a network namespace, a veth pair, ``tc tbf`` and a delay proxy.

    host 127.0.0.1:PORT ── DelayForwarder (+delay each way, counts bytes) ──> veth ──>
        namespace NS (HOST_ADDR/30 <-> NS_ADDR/30; egress of the namespace side shaped by tbf)

`SlowLink` creates the namespace and the veth pair (both removed by `close`); a server
started with `SlowLink.exec_cmd` runs inside it. `DelayForwarder` is a TCP forwarder on the
loopback interface that holds every piece of data for ``delay`` seconds in each direction
(so the round trip gains ``2 * delay``) and counts the bytes sent back to clients.
`SlowRegistry` puts the two together with a Distribution registry in the namespace: what
the benchmarks pull from.

Needs root (``ip netns``, ``tc``). netem is not assumed: tbf shapes the rate, the forwarder
adds the latency.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import subprocess
import threading
import time
import zlib
from collections.abc import Sequence
from pathlib import Path

from tools._net import LOOPBACK, http_status, wait_until
from tools._process import stop_process
from tools.registry import _set_parent_death_signal

__all__ = [
    "DelayForwarder",
    "SlowLink",
    "SlowRegistry",
    "add_link_options",
    "registry_config",
]


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(["ip", *args], text=True, capture_output=True, check=False)
    if check and proc.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {proc.stderr.strip()}")
    return proc


class SlowLink:
    """Namespace ``name`` joined to the host by veth ``name-h`` (host) / ``name-n`` (inside).

    ``rate``/``burst``/``latency`` are tbf's parameters for the namespace side's egress
    (the direction a server inside sends its responses); ``rate=None`` leaves the link
    unshaped. The /30 between the two ends is ``10.213.N.0``, N taken from ``name``, so
    links of different names can be up at once.
    """

    def __init__(
        self,
        name: str = "fsbench",
        *,
        rate: str | None = "100mbit",
        burst: str = "32kbit",
        latency: str = "400ms",
    ) -> None:
        self.name = name
        octet = zlib.crc32(name.encode()) % 250 + 1
        self.host_addr, self.ns_addr = f"10.213.{octet}.1", f"10.213.{octet}.2"
        self.host_dev, self.ns_dev = f"{name}-h", f"{name}-n"
        self.tbf = None if rate is None else ("rate", rate, "burst", burst, "latency", latency)
        self._up = False

    def open(self) -> SlowLink:
        self.close()  # leftovers of an interrupted run
        self._up = True
        _ip("netns", "add", self.name)
        _ip("link", "add", self.host_dev, "type", "veth", "peer", "name", self.ns_dev)
        _ip("link", "set", self.ns_dev, "netns", self.name)
        _ip("addr", "add", f"{self.host_addr}/30", "dev", self.host_dev)
        _ip("link", "set", self.host_dev, "up")
        self.ns("ip", "addr", "add", f"{self.ns_addr}/30", "dev", self.ns_dev)
        self.ns("ip", "link", "set", self.ns_dev, "up")
        self.ns("ip", "link", "set", "lo", "up")
        if self.tbf is not None:
            self.ns("tc", "qdisc", "add", "dev", self.ns_dev, "root", "tbf", *self.tbf)
        return self

    def ns(self, *cmd: str) -> subprocess.CompletedProcess[str]:
        """Run ``cmd`` inside the namespace and wait for it."""
        proc = subprocess.run(["ip", "netns", "exec", self.name, *cmd],
                              text=True, capture_output=True, check=False)  # fmt: skip
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} (in {self.name}): {proc.stderr.strip()}")
        return proc

    def exec_cmd(self, cmd: Sequence[str]) -> list[str]:
        """The command line that runs ``cmd`` inside the namespace (``ip netns exec``)."""
        return ["ip", "netns", "exec", self.name, *cmd]

    def tx_bytes(self) -> int:
        """Bytes the namespace side has sent (what crossed the shaped direction)."""
        out = self.ns("cat", f"/sys/class/net/{self.ns_dev}/statistics/tx_bytes").stdout
        return int(out.strip())

    def close(self) -> None:
        """Delete the namespace (its veth end, and so the pair and the qdisc, go with it)."""
        _ip("netns", "del", self.name, check=False)
        _ip("link", "del", self.host_dev, check=False)
        self._up = False

    def __enter__(self) -> SlowLink:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()


class DelayForwarder:
    """TCP forwarder ``127.0.0.1:PORT`` → ``target`` adding ``delay`` seconds each way.

    Data is forwarded in order; each piece is written ``delay`` seconds after it was read
    (pure latency: throughput is not limited by it). `bytes_sent` counts the bytes written
    back to clients. Runs its own event loop in a daemon thread.
    """

    def __init__(self, target: tuple[str, int], *, delay: float = 0.010) -> None:
        self.target = target
        self.delay = delay
        self._sent = 0
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.Server | None = None
        self._thread: threading.Thread | None = None
        self.port = 0

    @property
    def host(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    def bytes_sent(self) -> int:
        with self._lock:
            return self._sent

    def start(self) -> DelayForwarder:
        ready = threading.Event()

        def serve() -> None:
            asyncio.set_event_loop(self._loop)
            self._server = self._loop.run_until_complete(
                asyncio.start_server(self._client, LOOPBACK, 0)
            )
            self.port = self._server.sockets[0].getsockname()[1]
            ready.set()
            self._loop.run_forever()

        self._thread = threading.Thread(target=serve, name="delay-forwarder", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("delay forwarder did not start")
        return self

    def stop(self) -> None:
        if self._thread is None:
            return

        async def shutdown() -> None:
            if self._server is not None:
                self._server.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            # Waited for, so that a connection still open ends quietly.
            await asyncio.gather(*tasks, return_exceptions=True)

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._thread = None

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_r, up_w = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        try:
            await asyncio.gather(
                self._pipe(reader, up_w, count=False),
                self._pipe(up_r, writer, count=True),
                return_exceptions=True,
            )
        except asyncio.CancelledError:
            # `stop` with the connection open: end quietly, for Python 3.11's start_server
            # asks a cancelled client task for its exception and logs the CancelledError.
            pass
        finally:
            for w in (writer, up_w):
                with contextlib.suppress(Exception):
                    w.close()

    async def _pipe(
        self, src: asyncio.StreamReader, dst: asyncio.StreamWriter, *, count: bool
    ) -> None:
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def writer() -> None:
            while True:
                due, data = await queue.get()
                wait = due - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                if not data:
                    with contextlib.suppress(OSError):
                        if dst.can_write_eof():
                            dst.write_eof()
                    return
                dst.write(data)
                await dst.drain()
                if count:
                    with self._lock:
                        self._sent += len(data)

        task = asyncio.ensure_future(writer())
        try:
            while True:
                data = await src.read(256 * 1024)
                await queue.put((time.monotonic() + self.delay, data))
                if not data:
                    break
            await task
        finally:
            task.cancel()

    def __enter__(self) -> DelayForwarder:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def registry_config(path: Path, storage: Path, addr: str) -> Path:
    """A Distribution config serving ``storage`` on ``addr`` (``host:port``), no auth."""
    path.write_text(
        'version: "0.1"\n'
        "log:\n  level: warn\n  accesslog:\n    disabled: true\n"
        f'storage:\n  filesystem:\n    rootdirectory: "{storage}"\n'
        "  delete:\n    enabled: true\n  maintenance:\n    uploadpurging:\n      enabled: false\n"
        f'http:\n  addr: "{addr}"\n  secret: "fusesnap-bench-secret"\n'
        "health:\n  storagedriver:\n    enabled: false\n"
    )
    os.makedirs(storage, exist_ok=True)
    return path


class SlowRegistry:
    """``docker-registry`` inside a `SlowLink`'s namespace, reached at `host` through a
    `DelayForwarder` (which counts what it sends: `bytes_sent`).

    ``work``: the registry's config, log and storage. `open` starts the link, the registry
    and the forwarder; `close` stops them and removes the namespace (also after a failed
    `open`). ``rate`` is tbf's (None: unshaped); the round trip gains ``2 * delay_ms``.
    """

    def __init__(
        self,
        work: Path,
        *,
        netns: str = "fsbench",
        rate: str | None = "100mbit",
        delay_ms: float = 10.0,
        port: int = 5000,
    ) -> None:
        self.work, self.port = work, port
        self.link = SlowLink(netns, rate=rate)
        self.fwd = DelayForwarder((self.link.ns_addr, port), delay=delay_ms / 1000)
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def host(self) -> str:
        """``127.0.0.1:PORT``, the forwarder: where clients push and pull."""
        return self.fwd.host

    @property
    def inside(self) -> str:
        """``NS_ADDR:PORT``, the registry itself in the namespace."""
        return f"{self.link.ns_addr}:{self.port}"

    def bytes_sent(self) -> int:
        return self.fwd.bytes_sent()

    def open(self) -> SlowRegistry:
        try:
            self.link.open()
            self.work.mkdir(parents=True, exist_ok=True)
            config = registry_config(self.work / "registry.yml", self.work / "storage", self.inside)
            log_path = self.work / "registry.log"
            with log_path.open("ab") as log:
                self._proc = subprocess.Popen(
                    self.link.exec_cmd(["docker-registry", "serve", str(config)]),
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    preexec_fn=_set_parent_death_signal,
                )
            proc = self._proc
            if not wait_until(
                lambda: http_status(f"http://{self.inside}/v2/", timeout=1.0) == 200,
                timeout=20,
                abort=lambda: proc.poll() is not None,
            ):
                raise RuntimeError(
                    f"registry in {self.link.name} did not come up: "
                    f"{log_path.read_text(errors='replace')[-2000:]}"
                )
            self.fwd.start()
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        self.fwd.stop()
        proc, self._proc = self._proc, None
        if proc is not None:
            stop_process(proc)
        self.link.close()

    @classmethod
    def from_options(cls, work: Path, args: argparse.Namespace) -> SlowRegistry:
        """The registry that `add_link_options`' options describe."""
        if args.unshaped:
            return cls(work, netns=args.netns, rate=None, delay_ms=0.0)
        return cls(work, netns=args.netns, rate=args.rate, delay_ms=args.delay_ms)

    def describe(self) -> str:
        """The link in words, for a table's title."""
        if self.link.tbf is None and self.fwd.delay == 0:
            return "unshaped link (netns + forwarder, no tbf, no delay)"
        rate = "unshaped" if self.link.tbf is None else f"{self.link.tbf[1]} (tbf)"
        return f"link {rate} + {2000 * self.fwd.delay:g} ms RTT"

    def __enter__(self) -> SlowRegistry:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()


def add_link_options(ap: argparse.ArgumentParser) -> None:
    """``--rate``, ``--delay-ms`` and ``--netns``, for `SlowRegistry.from_options`."""
    ap.add_argument("--rate", default="100mbit", help="tbf rate of the registry's link")
    ap.add_argument("--delay-ms", type=float, default=10.0, help="one-way delay added")
    ap.add_argument("--netns", default="fsbench", help="name of the namespace made (and removed)")
    ap.add_argument(
        "--unshaped",
        action="store_true",
        help="no tbf and no delay: the registry at the speed of the machine",
    )
