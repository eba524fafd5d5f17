"""Registry hosts: mirrors and the server of each registry, from containerd's ``hosts.toml``.

The layout and the format are containerd's (its ``config_path``), so one
configuration serves both::

    HOSTS_DIR/                          /etc/fusesnap/certs.d, else /etc/containerd/certs.d
      registry.example/hosts.toml       for references on registry.example
      myreg_5000_/hosts.toml            for myreg:5000 (``myreg:5000/`` is looked at next)
      _default/hosts.toml               for any registry without a directory of its own

    server = "https://registry.example"         # the origin (default: the registry itself)

    [host."http://mirror.local:5000"]           # tried first, in the order written
      capabilities = ["pull", "resolve"]        # default: pull, resolve, push
      skip_verify = false
      ca = "mirror.crt"                         # a path or a list; relative to the file
      dial_timeout = "2s"
      [host."http://mirror.local:5000".header]
        x-team = "images"

The hosts of a registry are its ``[host]`` tables in file order, then the
server last. Keys at the top level (``ca``, ``skip_verify``, ``capabilities``,
``client``, ``header``, ``override_path``, ``dial_timeout``) configure the
server. A host URL without a scheme is HTTPS; its path is the API root, with
``/v2`` added unless it ends in ``/v2`` or ``override_path`` is set. A
directory without ``hosts.toml`` is read the Docker way: its ``*.crt`` files
are CAs of the registry, ``NAME.cert`` (and ``NAME.key``) client certificates.

Which host may do what (containerd's capabilities): ``resolve`` turns a tag into
a digest (and lists tags and referrers), so it is trust; ``pull`` serves content
by digest, which fusesnap verifies wherever it comes from; ``push`` uploads.
Nothing here touches the network; `HostsConfig` reads the files (blocking) and
`fusesnap.registry.failover` chooses among the hosts.
"""

from __future__ import annotations

import logging
import os
import re
import time
import tomllib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from fusesnap.errors import RegistryError

log = logging.getLogger(__name__)

__all__ = [
    "CAPABILITIES",
    "DEFAULT_HOSTS_DIRS",
    "HostsConfig",
    "RegistryHost",
    "default_host",
    "host_directory_names",
    "load_hosts",
    "parse_hosts_file",
]

DEFAULT_HOSTS_DIRS = ("/etc/fusesnap/certs.d", "/etc/containerd/certs.d")
CAPABILITIES = frozenset({"pull", "resolve", "push"})
HOSTS_FILE = "hosts.toml"
# Long-lived processes (a mount daemon) see an edited hosts.toml this long after.
RELOAD_AFTER = 30.0

_HOST_KEYS = frozenset(
    {"capabilities", "ca", "client", "skip_verify", "header", "override_path", "dial_timeout"}
)
_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


@dataclass(frozen=True, slots=True)
class RegistryHost:
    """One place a registry's API is served: a mirror, or the server itself.

    ``scheme`` None means the registry's own address with the client's rule for it
    (plain HTTP on loopback, HTTPS elsewhere, ``--insecure-registry``). ``mirror``: a
    host other than the registry's, asked with ``?ns=REGISTRY`` as containerd does,
    with credentials of its own. ``server``: the file's ``server`` (or the registry
    itself), the last resort, which keeps the client's patient timeouts.
    """

    host: str  # host[:port]
    path: str = "/v2"  # the API root that replaces "/v2" in request paths
    scheme: str | None = None
    capabilities: frozenset[str] = CAPABILITIES
    skip_verify: bool = False
    ca: tuple[str, ...] = ()
    client: tuple[tuple[str, str], ...] = ()  # (certificate, key or "" when in the same file)
    headers: tuple[tuple[str, str], ...] = ()
    dial_timeout: float | None = None
    mirror: bool = False
    server: bool = False
    source: str = field(default="", compare=False)  # the hosts.toml it came from

    @property
    def name(self) -> str:
        """How messages name it: ``host[:port]``, with its path if that is not ``/v2``."""
        return self.host if self.path == "/v2" else f"{self.host}{self.path}"

    @property
    def custom_tls(self) -> bool:
        return bool(self.skip_verify or self.ca or self.client)

    def can(self, capability: str) -> bool:
        return capability in self.capabilities


def api_host(registry: str) -> str:
    """Where a registry's API is served by default (``docker.io`` is special)."""
    return "registry-1.docker.io" if registry == "docker.io" else registry


def default_host(registry: str) -> RegistryHost:
    """The registry itself, with every capability: what a registry without a hosts file uses."""
    return RegistryHost(host=api_host(registry), server=True)


def host_directory_names(registry: str) -> list[str]:
    """The directory names looked for under a hosts directory, in order (containerd's)."""
    names = []
    host, sep, port = registry.rpartition(":")
    if sep and host and port.isdigit() and not registry.endswith("]"):
        names.append(f"{host}_{port}_")
    names += [registry, "_default"]
    return names


def parse_duration(text: str, *, what: str) -> float:
    """Seconds from a Go duration (``1s``, ``500ms``, ``1m30s``)."""
    pos, total = 0, 0.0
    for m in _DURATION.finditer(text):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _UNITS[m.group(2)]
        pos = m.end()
    if not text or pos != len(text):
        raise RegistryError(f"{what}: {text!r} is not a duration (e.g. 2s, 500ms)")
    return total


def _strings(value: object, *, what: str) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return list(value)
    raise RegistryError(f"{what}: expected a string or a list of strings")


def _absolute(path: str, base: Path) -> str:
    return path if os.path.isabs(path) else str(base / path)


def _client_pairs(value: object, base: Path, *, what: str) -> tuple[tuple[str, str], ...]:
    if isinstance(value, str):
        return ((_absolute(value, base), ""),)
    if not isinstance(value, list):
        raise RegistryError(f"{what}: expected a path, a list of paths or of [cert, key] pairs")
    pairs = []
    for item in value:
        if isinstance(item, str):
            pairs.append((_absolute(item, base), ""))
        elif isinstance(item, list) and len(item) == 2 and all(isinstance(p, str) for p in item):
            cert, key = item
            pairs.append((_absolute(cert, base), _absolute(key, base) if key else ""))
        else:
            raise RegistryError(f"{what}: {item!r} is neither a path nor a [cert, key] pair")
    return tuple(pairs)


def _host_settings(
    table: dict[str, Any], base: Path, *, what: str, ignore: Iterable[str] = ()
) -> dict[str, Any]:
    """The keyword arguments of `RegistryHost` that one table sets."""
    unknown = set(table) - _HOST_KEYS - set(ignore)
    if unknown:
        log.warning("%s: ignoring unsupported keys %s", what, ", ".join(sorted(unknown)))
    out: dict[str, Any] = {}
    if "capabilities" in table:
        caps = {c.lower() for c in _strings(table["capabilities"], what=f"{what}: capabilities")}
        bad = caps - CAPABILITIES
        if bad:
            raise RegistryError(
                f"{what}: unknown capability {', '.join(sorted(bad))} (pull, resolve, push)"
            )
        out["capabilities"] = frozenset(caps)
    if "skip_verify" in table:
        if not isinstance(table["skip_verify"], bool):
            raise RegistryError(f"{what}: skip_verify: expected true or false")
        out["skip_verify"] = table["skip_verify"]
    if "ca" in table:
        paths = _strings(table["ca"], what=f"{what}: ca")
        out["ca"] = tuple(_absolute(p, base) for p in paths)
    if "client" in table:
        out["client"] = _client_pairs(table["client"], base, what=f"{what}: client")
    if "header" in table:
        header = table["header"]
        if not isinstance(header, dict):
            raise RegistryError(f"{what}: header: expected a table")
        out["headers"] = tuple(
            (str(k), v)
            for k, values in header.items()
            for v in _strings(values, what=f"{what}: header {k}")
        )
    if "dial_timeout" in table:
        value = table["dial_timeout"]
        if not isinstance(value, str):
            raise RegistryError(f"{what}: dial_timeout: expected a duration string")
        out["dial_timeout"] = parse_duration(value, what=f"{what}: dial_timeout")
    if "override_path" in table and not isinstance(table["override_path"], bool):
        raise RegistryError(f"{what}: override_path: expected true or false")
    return out


def _endpoint(url: str, *, override_path: bool, what: str) -> tuple[str, str, str]:
    """(scheme, host, API root) of a host URL as containerd reads it."""
    if not url.startswith(("http://", "https://")):
        url = "https://" + url
    scheme, _, rest = url.partition("://")
    host, slash, path = rest.partition("/")
    if not host or any(c in host for c in "?#@ "):
        raise RegistryError(f"{what}: {url!r} is not a host URL")
    path = os.path.normpath("/" + path) if slash and path.strip("/") else ""
    if not override_path and not path.endswith("/v2"):
        path += "/v2"
    return scheme, host, path


def parse_hosts_file(
    text: str, *, registry: str, base_dir: Path, source: str = ""
) -> tuple[RegistryHost, ...]:
    """The hosts a ``hosts.toml`` gives ``registry``: its ``[host]`` tables in order, then
    the server. Relative paths are taken from ``base_dir``. `RegistryError` naming
    ``source`` (the file) if it is not valid."""
    what = source or HOSTS_FILE
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise RegistryError(f"{what}: not valid TOML: {exc}") from None
    hosts: list[RegistryHost] = []
    table = doc.get("host", {})
    if not isinstance(table, dict):
        raise RegistryError(f'{what}: host: expected [host."URL"] tables')
    own = api_host(registry)
    for url, settings in table.items():
        where = f"{what}: host {url!r}"
        if not isinstance(settings, dict):
            raise RegistryError(f"{where}: expected a table")
        override = bool(settings.get("override_path", False))
        scheme, host, path = _endpoint(url, override_path=override, what=where)
        kwargs = _host_settings(settings, base_dir, what=where)
        hosts.append(
            RegistryHost(
                host=host, path=path, scheme=scheme, mirror=host != own, source=what, **kwargs
            )
        )
    kwargs = _host_settings(doc, base_dir, what=what, ignore=("server", "host"))
    server = doc.get("server")
    if server is None:
        hosts.append(replace(default_host(registry), source=what, **kwargs))
    elif not isinstance(server, str) or not server:
        raise RegistryError(f"{what}: server: expected a URL")
    else:
        override = bool(doc.get("override_path", False))
        scheme, host, path = _endpoint(server, override_path=override, what=f"{what}: server")
        hosts.append(
            RegistryHost(
                host=host,
                path=path,
                scheme=scheme,
                mirror=host != own,
                server=True,
                source=what,
                **kwargs,
            )
        )
    return tuple(hosts)


def _docker_cert_files(directory: Path, registry: str) -> tuple[RegistryHost, ...]:
    """A directory without ``hosts.toml``: Docker's ``*.crt`` / ``*.cert`` + ``*.key``."""
    ca: list[str] = []
    client: list[tuple[str, str]] = []
    for path in sorted(directory.iterdir()):
        if not path.is_file():
            continue
        if path.suffix == ".crt":
            ca.append(str(path))
        elif path.suffix == ".cert":
            key = path.with_suffix(".key")
            client.append((str(path), str(key) if key.exists() else ""))
    return (
        replace(default_host(registry), ca=tuple(ca), client=tuple(client), source=str(directory)),
    )


def load_hosts(registry: str, dirs: Sequence[str | os.PathLike[str]]) -> tuple[RegistryHost, ...]:
    """(blocking) The hosts of ``registry`` from the first of ``dirs`` that configures it
    (its own directory or ``_default``); the registry alone if none does."""
    for root in dirs:
        for name in host_directory_names(registry):
            directory = Path(root) / name
            path = directory / HOSTS_FILE
            try:
                text = path.read_text()
            except FileNotFoundError:
                if directory.is_dir():
                    return _docker_cert_files(directory, registry)
                continue
            except (OSError, UnicodeDecodeError) as exc:
                raise RegistryError(f"{path}: cannot read: {exc}") from None
            hosts = parse_hosts_file(text, registry=registry, base_dir=directory, source=str(path))
            log.debug("registry %s: hosts from %s: %s", registry, path, [h.name for h in hosts])
            return hosts
    return (default_host(registry),)


class HostsConfig:
    """The hosts of each registry, read from hosts directories and kept `RELOAD_AFTER` s.

    `cached` answers without touching the disk (None when the entry is missing or
    old); `load` reads (blocking: call it off the trio loop). Thread-safe enough:
    entries are replaced whole.
    """

    def __init__(
        self,
        dirs: Sequence[str | os.PathLike[str]] = DEFAULT_HOSTS_DIRS,
        *,
        clock: Callable[[], float] = time.monotonic,
        reload_after: float = RELOAD_AFTER,
    ) -> None:
        self.dirs = tuple(os.fspath(d) for d in dirs)
        self._clock = clock
        self._reload_after = reload_after
        self._cache: dict[str, tuple[float, tuple[RegistryHost, ...]]] = {}

    def cached(self, registry: str) -> tuple[RegistryHost, ...] | None:
        entry = self._cache.get(registry)
        if entry is None or self._clock() - entry[0] > self._reload_after:
            return None
        return entry[1]

    def load(self, registry: str) -> tuple[RegistryHost, ...]:
        hosts = load_hosts(registry, self.dirs)
        self._cache[registry] = (self._clock(), hosts)
        return hosts
