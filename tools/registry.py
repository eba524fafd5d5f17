"""A real CNCF Distribution registry (Debian's ``docker-registry``) on a loopback port.

Each `Registry` owns a data directory::

    DIR/config.yml      the registry configuration written by `Registry.start`
    DIR/registry.log    the registry's stdout and stderr
    DIR/storage/        the filesystem driver's root (blobs under docker/registry/v2/blobs)
    DIR/htpasswd        with `HtpasswdAuth`
    DIR/registry.pid    only for a detached registry (the command line below)
    DIR/registry.host   only for a detached registry

Use it as a context manager in tests::

    with Registry(tmp_path) as reg:
        push(..., reg.host, ...)

or from a shell (``make demo``); ``start`` is idempotent and prints the host::

    python -m tools.registry start --dir DIR [--port N]
    python -m tools.registry stop --dir DIR

Concurrency: a `Registry` object is not thread-safe; start and stop it from one
thread. A registry that is not detached gets SIGTERM when the thread that
started it ends (Linux parent-death signal), so a crashed test run leaks no
registry; start it from a thread that lives as long as it should (the main
thread). A detached one lives until ``stop``.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from tools._accesslog import AccessRecord, parse_access_log
from tools._net import LOOPBACK, free_port, http_status, wait_until
from tools._process import Started, stop_process

if TYPE_CHECKING:
    from tools.tokenserver import TokenServer

__all__ = [
    "AccessRecord",
    "HtpasswdAuth",
    "Registry",
    "RegistryAuth",
    "RegistryError",
    "TokenAuth",
]

BINARY = "docker-registry"
_PORT_RETRIES = 3
_PR_SET_PDEATHSIG = 1


class RegistryError(RuntimeError):
    """The registry could not be started or stopped."""


class RegistryAuth(Protocol):
    """An ``auth:`` section for the registry configuration."""

    def config_section(self, data_dir: Path) -> dict[str, object]:
        """The value of the ``auth`` key; may write files (htpasswd) into ``data_dir``."""
        ...


class HtpasswdAuth:
    """HTTP Basic auth against an htpasswd file (Distribution accepts only bcrypt hashes)."""

    def __init__(self, users: Mapping[str, str], *, realm: str = "fusesnap-test") -> None:
        self.users = dict(users)
        self.realm = realm

    def config_section(self, data_dir: Path) -> dict[str, object]:
        import bcrypt  # a test dependency; imported here so plain registries need not have it

        lines = []
        for user, password in sorted(self.users.items()):
            # Cost 4 is the minimum bcrypt allows: a test needs the format, not the strength.
            hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)).decode()
            lines.append(f"{user}:{hashed}\n")
        path = data_dir / "htpasswd"
        path.write_text("".join(lines))
        return {"htpasswd": {"realm": self.realm, "path": str(path)}}


class TokenAuth:
    """Bearer tokens from a `tools.tokenserver.TokenServer` (started here if it is not)."""

    def __init__(self, token_server: TokenServer) -> None:
        self.token_server = token_server

    def config_section(self, data_dir: Path) -> dict[str, object]:
        server = self.token_server
        server.start()
        return {
            "token": {
                "realm": server.realm,
                "service": server.service,
                "issuer": server.issuer,
                "rootcertbundle": str(server.cert_path),
            }
        }


def _yaml(value: object, indent: int = 0) -> str:
    """Emit the small subset of YAML the configuration needs (nested maps of scalars)."""
    if not isinstance(value, Mapping):
        raise TypeError(f"expected a mapping, got {type(value).__name__}")
    pad = "  " * indent
    out = []
    for key, item in value.items():
        if isinstance(item, Mapping):
            out.append(f"{pad}{key}:\n{_yaml(item, indent + 1)}")
        elif isinstance(item, bool):
            out.append(f"{pad}{key}: {'true' if item else 'false'}\n")
        elif isinstance(item, int):
            out.append(f"{pad}{key}: {item}\n")
        else:
            text = str(item).replace("\\", "\\\\").replace('"', '\\"')
            out.append(f'{pad}{key}: "{text}"\n')
    return "".join(out)


def _set_parent_death_signal() -> None:
    """In the child: get SIGTERM when the test process dies, so no registry is leaked."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _listens(pid: int, port: int) -> bool:
    """Whether process ``pid`` holds a TCP socket listening on 127.0.0.1:``port`` (Linux)."""
    wanted = f"0100007F:{port:04X}"
    inodes = set()
    try:
        with open("/proc/net/tcp") as table:
            for line in table.readlines()[1:]:
                fields = line.split()
                if fields[1] == wanted and fields[3] == "0A":  # 0A: LISTEN
                    inodes.add(f"socket:[{fields[9]}]")
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    for fd in fds:
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") in inodes:
                return True
        except OSError:
            continue
    return False


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie still answers kill(0); it is gone for our purposes.
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


class Registry(Started):
    """A Distribution registry serving ``data_dir`` on ``127.0.0.1:port``.

    Arguments:
        data_dir: where the configuration, log and storage live; a temporary
            directory (removed by `stop`) when None.
        port: the port to listen on; a free one when None.
        auth: None (anonymous push and pull), `HtpasswdAuth` or `TokenAuth`.
        start_timeout: seconds to wait for ``GET /v2/`` to answer.
        proxy: a registry URL (``http://127.0.0.1:5000``) to be a pull-through cache
            of (Distribution's ``proxy: remoteurl:``): what is asked for and not
            stored is fetched from there, kept and served; pushes are refused.
        access_log: write one line per request into the log (`requests` reads them).
    """

    def __init__(
        self,
        data_dir: str | os.PathLike[str] | None = None,
        *,
        port: int | None = None,
        auth: RegistryAuth | None = None,
        start_timeout: float = 20.0,
        proxy: str | None = None,
        access_log: bool = False,
    ) -> None:
        self._owns_dir = data_dir is None
        self._data_dir = Path(data_dir) if data_dir is not None else None
        self._requested_port = port
        self._port: int | None = port
        self.auth = auth
        self.start_timeout = start_timeout
        self.proxy = proxy
        self.access_log = access_log
        self._proc: subprocess.Popen[bytes] | None = None

    # -- where things are ------------------------------------------------------------------

    @property
    def data_dir(self) -> Path:
        if self._data_dir is None:
            self._data_dir = Path(tempfile.mkdtemp(prefix="fusesnap-registry-"))
        return self._data_dir

    @property
    def port(self) -> int:
        if self._port is None:
            raise RegistryError("registry has no port yet: call start()")
        return self._port

    @property
    def host(self) -> str:
        """``127.0.0.1:PORT``, as used in image references."""
        return f"{LOOPBACK}:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    @property
    def config_path(self) -> Path:
        return self.data_dir / "config.yml"

    @property
    def log_path(self) -> Path:
        return self.data_dir / "registry.log"

    @property
    def storage_dir(self) -> Path:
        return self.data_dir / "storage"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def blob_path(self, digest: str) -> Path:
        """The file holding a blob's bytes; ``digest`` may be ``sha256:…`` or ``repo@sha256:…``.

        Tests overwrite it to make the registry serve corrupt content.
        """
        digest = digest.rsplit("@", 1)[-1]
        algorithm, _, hexdigest = digest.partition(":")
        if algorithm != "sha256" or len(hexdigest) != 64:
            raise ValueError(f"not a sha256 digest: {digest!r}")
        return (
            self.storage_dir
            / "docker/registry/v2/blobs/sha256"
            / hexdigest[:2]
            / hexdigest
            / "data"
        )

    def requests(self) -> list[AccessRecord]:
        """Every request the access log holds (``access_log=True``), oldest first; a
        registry restarted on the same directory keeps adding to it."""
        try:
            return parse_access_log(self.log_path.read_text(errors="replace"))
        except OSError:
            return []

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    # -- lifecycle -------------------------------------------------------------------------

    def write_config(self) -> Path:
        """Write ``config.yml`` for the current port and auth; return its path."""
        config: dict[str, object] = {
            "version": "0.1",
            "log": {"level": "warn", "accesslog": {"disabled": not self.access_log}},
            "storage": {
                "filesystem": {"rootdirectory": str(self.storage_dir)},
                "delete": {"enabled": True},
                "maintenance": {"uploadpurging": {"enabled": False}},
            },
            "http": {"addr": self.host, "secret": "fusesnap-test-secret"},
            "health": {"storagedriver": {"enabled": False}},
        }
        if self.auth is not None:
            config["auth"] = self.auth.config_section(self.data_dir)
        if self.proxy is not None:
            config["proxy"] = {"remoteurl": self.proxy}
        self.config_path.write_text(_yaml(config))
        return self.config_path

    def start(self, *, detach: bool = False) -> Registry:
        """Start the registry and wait until ``GET /v2/`` answers 200 or 401.

        ``detach`` starts it in its own session without the parent-death signal,
        so it outlives this process (the command line's ``start``).

        Raises `RegistryError` with the log's tail when it does not come up.
        """
        if self._proc is not None and self._proc.poll() is None:
            return self
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.storage_dir.mkdir(exist_ok=True)
        attempts = 1 if self._requested_port is not None else _PORT_RETRIES
        for attempt in range(attempts):
            if self._requested_port is None:
                self._port = free_port()
            self._spawn(detach=detach)
            if self._wait_ready():
                return self
            in_use = "address already in use" in self.log_tail(5)
            self._terminate()
            if not (in_use and attempt + 1 < attempts):
                break
        raise RegistryError(
            f"registry on {self.host} did not answer GET /v2/ within {self.start_timeout}s;"
            f" log {self.log_path}:\n{self.log_tail()}"
        )

    def _spawn(self, *, detach: bool) -> None:
        self.write_config()
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                [BINARY, "serve", str(self.config_path)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=detach,
                preexec_fn=None if detach else _set_parent_death_signal,
            )

    def _wait_ready(self) -> bool:
        proc = self._proc
        assert proc is not None
        # Our process must be the one listening: another server on the same port
        # would answer GET /v2/ just as well.
        return wait_until(
            lambda: (
                _listens(proc.pid, self.port)
                and http_status(f"{self.url}/v2/", timeout=1.0) in (200, 401)
            ),
            timeout=self.start_timeout,
            abort=lambda: proc.poll() is not None,
        )

    def _terminate(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            stop_process(proc)

    def stop(self) -> None:
        """Terminate the registry (SIGTERM, then SIGKILL after 10 s); remove an owned dir."""
        self._terminate()
        if self._owns_dir and self._data_dir is not None:
            shutil.rmtree(self._data_dir, ignore_errors=True)
            self._data_dir = None

    def __repr__(self) -> str:
        where = self.host if self._port is not None else "unstarted"
        return f"Registry({where}, data_dir={self._data_dir})"


# -- detached registries (command line) ------------------------------------------------------


def _detached_pid(data_dir: Path) -> int | None:
    """The pid of the registry started detached in ``data_dir``, if it still runs."""
    try:
        pid = int((data_dir / "registry.pid").read_text().strip())
    except (OSError, ValueError):
        return None
    if not _pid_alive(pid):
        return None
    # Make sure the pid was not reused by an unrelated process.
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return None
    if str(data_dir / "config.yml").encode() not in cmdline:
        return None
    return pid


def start_detached(data_dir: Path, *, port: int | None = None) -> str:
    """Start a registry that outlives this process, or find the running one; return its host."""
    data_dir = data_dir.resolve()
    if _detached_pid(data_dir) is not None:
        host = (data_dir / "registry.host").read_text().strip()
        if http_status(f"http://{host}/v2/") in (200, 401):
            return host
    registry = Registry(data_dir, port=port)
    registry.start(detach=True)
    (data_dir / "registry.pid").write_text(f"{registry.pid}\n")
    (data_dir / "registry.host").write_text(f"{registry.host}\n")
    return registry.host


def stop_detached(data_dir: Path, *, timeout: float = 10.0) -> bool:
    """Stop the detached registry of ``data_dir``; False when none was running."""
    data_dir = data_dir.resolve()
    pid = _detached_pid(data_dir)
    for name in ("registry.pid", "registry.host"):
        (data_dir / name).unlink(missing_ok=True)
    if pid is None:
        return False
    os.kill(pid, signal.SIGTERM)
    if not wait_until(lambda: not _pid_alive(pid), timeout=timeout):
        os.kill(pid, signal.SIGKILL)
        wait_until(lambda: not _pid_alive(pid), timeout=timeout)
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.registry", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    start = sub.add_parser("start", help="start a detached registry (idempotent); print its host")
    start.add_argument("--dir", required=True, type=Path)
    start.add_argument("--port", type=int)
    stop = sub.add_parser("stop", help="stop the registry started with --dir")
    stop.add_argument("--dir", required=True, type=Path)
    args = parser.parse_args(argv)
    try:
        if args.command == "start":
            print(start_detached(args.dir, port=args.port))
        elif not stop_detached(args.dir):
            print(f"no registry running in {args.dir}", file=sys.stderr)
    except RegistryError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
