"""The OCI runtime config (runc's ``config.json``) of a container, built from the image config.

The image config gives the process: ``Entrypoint`` + ``Cmd`` (a command given on the
command line replaces ``Cmd``), ``Env`` (overridden key by key by ``--env``),
``WorkingDir`` and ``User``. A user name (or ``user:group``) is resolved through the
image's ``/etc/passwd`` and ``/etc/group``; numeric ids are taken as they are. The rest
is what ``runc spec`` produces: mounts for /proc, /dev, /dev/pts, /dev/shm, /dev/mqueue
and a read-only /sys, namespaces pid, ipc, uts, mount and network (none with
``net_host``), runc's default capabilities, no seccomp profile.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from fusesnap.errors import FusesnapError

__all__ = [
    "DEFAULT_PATH",
    "ProcessOptions",
    "SpecError",
    "User",
    "build_spec",
    "merge_env",
    "parse_env_option",
    "process_args",
    "resolve_user",
]

OCI_VERSION = "1.0.2-dev"
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
DEFAULT_CAPABILITIES = ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"]

MASKED_PATHS = (
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/sys/firmware",
    "/proc/scsi",
)
READONLY_PATHS = ("/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger")


class SpecError(FusesnapError):
    """The image config and the options given do not make a runnable container."""


@dataclass(frozen=True)
class ProcessOptions:
    """What is asked of a container beyond its image's config (``fusesnap run``'s flags):
    ``command`` replaces ``Cmd``, ``env`` overrides ``Env``, ``workdir`` and ``user``
    (a name, uid or ``user:group``) replace the image's, ``net_host`` shares the host's
    network, ``readonly`` makes the root read-only."""

    command: Sequence[str] = ()
    env: Sequence[str] = ()
    workdir: str | None = None
    user: str | None = None
    terminal: bool = False
    net_host: bool = False
    readonly: bool = False


@dataclass(frozen=True)
class User:
    """Who the container's process runs as."""

    uid: int
    gid: int
    additional_gids: tuple[int, ...] = ()
    home: str = "/"
    name: str = field(default="", compare=False)


def _strings(value: object, what: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):  # Docker allows a string Cmd/Entrypoint (shell form)
        return ["/bin/sh", "-c", value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise SpecError(f"image config: {what} is not a list of strings")
    return list(value)


def process_args(image_config: Mapping[str, Any], command: Sequence[str] = ()) -> list[str]:
    """``Entrypoint`` + ``Cmd`` of the image, ``command`` (when given) replacing ``Cmd``."""
    entrypoint = _strings(image_config.get("Entrypoint"), "Entrypoint")
    cmd = list(command) if command else _strings(image_config.get("Cmd"), "Cmd")
    args = entrypoint + cmd
    if not args:
        raise SpecError("the image has no Entrypoint or Cmd: give a command (REF -- CMD...)")
    return args


def parse_env_option(item: str) -> tuple[str, str]:
    """``K=V`` from ``--env``; `SpecError` if there is no ``=`` or no key."""
    key, sep, value = item.partition("=")
    if not sep or not key:
        raise SpecError(f"--env {item!r}: expected KEY=VALUE")
    return key, value


def merge_env(
    image_env: object, overrides: Sequence[str] = (), *, home: str | None = None
) -> list[str]:
    """The image's ``Env`` with ``overrides`` (``K=V``) replacing or adding keys, in order;
    ``PATH`` defaults to runc's, ``HOME`` to the user's home directory."""
    env: dict[str, str] = {}
    for item in _env_list(image_env):
        key, _, value = item.partition("=")
        if key:
            env[key] = value
    for item in overrides:
        key, value = parse_env_option(item)
        env[key] = value
    env.setdefault("PATH", DEFAULT_PATH)
    if home is not None:
        env.setdefault("HOME", home)
    return [f"{k}={v}" for k, v in env.items()]


def _env_list(value: object) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise SpecError("image config: Env is not a list of strings")
    return list(value)


def _table(text: str, fields: int) -> list[list[str]]:
    rows = []
    for line in text.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        parts = line.split(":")
        if len(parts) >= fields:
            rows.append(parts)
    return rows


def _number(text: str) -> int | None:
    return int(text) if text.isdigit() else None


def resolve_user(spec: str, passwd: str = "", group: str = "") -> User:
    """``USER`` of an image (``name``, ``uid``, ``name:group``, ``uid:gid``...) as ids,
    through the texts of the image's ``/etc/passwd`` and ``/etc/group``.

    A numeric uid not in passwd is taken as it is (gid 0, home /), as Docker does; a name
    not found is a `SpecError`. Supplementary groups: the groups of /etc/group that list
    the user by name.
    """
    spec = spec.strip() or "0"
    user_part, _, group_part = spec.partition(":")
    users = _table(passwd, 7)
    uid = _number(user_part)
    entry = next(
        (u for u in users if (u[0] == user_part if uid is None else _number(u[2]) == uid)),
        None,
    )
    if entry is None and uid is None:
        raise SpecError(f"user {user_part!r}: not found in the image's /etc/passwd")
    name = entry[0] if entry else ""
    if uid is None:
        assert entry is not None
        uid = _number(entry[2])
        if uid is None:
            raise SpecError(f"user {user_part!r}: bad uid in the image's /etc/passwd")
    home = (entry[5] if entry else "") or "/"
    groups = _table(group, 4)
    if group_part:
        gid = _number(group_part)
        if gid is None:
            found = next((g for g in groups if g[0] == group_part), None)
            if found is None or _number(found[2]) is None:
                raise SpecError(f"group {group_part!r}: not found in the image's /etc/group")
            gid = _number(found[2])
            assert gid is not None
    else:
        gid = (_number(entry[3]) if entry else None) or 0
    extra: list[int] = []
    if name:
        for g in groups:
            members = [m.strip() for m in g[3].split(",")]
            g_id = _number(g[2])
            if name in members and g_id is not None and g_id != gid and g_id not in extra:
                extra.append(g_id)
    return User(uid, gid, tuple(extra), home, name)


def build_spec(
    image_config: Mapping[str, Any],
    options: ProcessOptions,
    *,
    rootfs: str,
    user: User,
    hostname: str = "fusesnap",
) -> dict[str, Any]:
    """The runtime config: the image's process settings (module docstring) with
    ``options`` applied, runc's defaults, the root filesystem at ``rootfs``; ``user`` is
    ``options.user`` (or the image's) resolved."""
    terminal = options.terminal
    cwd = options.workdir or str(image_config.get("WorkingDir") or "") or "/"
    if not cwd.startswith("/"):
        raise SpecError(f"working directory {cwd!r}: must be an absolute path")
    user_doc: dict[str, Any] = {"uid": user.uid, "gid": user.gid}
    if user.additional_gids:
        user_doc["additionalGids"] = list(user.additional_gids)
    process_env = merge_env(image_config.get("Env"), options.env, home=user.home)
    if terminal and not any(e.startswith("TERM=") for e in process_env):
        process_env.append("TERM=xterm")
    namespaces = [{"type": t} for t in ("pid", "ipc", "uts", "mount")]
    if not options.net_host:
        namespaces.insert(1, {"type": "network"})
    return {
        "ociVersion": OCI_VERSION,
        "process": {
            "terminal": terminal,
            "user": user_doc,
            "args": process_args(image_config, options.command),
            "env": process_env,
            "cwd": cwd,
            "capabilities": {
                k: list(DEFAULT_CAPABILITIES)
                for k in ("bounding", "effective", "permitted", "ambient")
            },
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
            "noNewPrivileges": True,
        },
        "root": {"path": rootfs, "readonly": options.readonly},
        "hostname": hostname,
        "mounts": _default_mounts(),
        "linux": {
            "resources": {"devices": [{"allow": False, "access": "rwm"}]},
            "namespaces": namespaces,
            "maskedPaths": list(MASKED_PATHS),
            "readonlyPaths": list(READONLY_PATHS),
        },
    }


def _default_mounts() -> list[dict[str, Any]]:
    """runc spec's mounts (without its read-only cgroup mount)."""
    nosuid_noexec_nodev = ["nosuid", "noexec", "nodev"]
    return [
        {"destination": "/proc", "type": "proc", "source": "proc"},
        {
            "destination": "/dev",
            "type": "tmpfs",
            "source": "tmpfs",
            "options": ["nosuid", "strictatime", "mode=755", "size=65536k"],
        },
        {
            "destination": "/dev/pts",
            "type": "devpts",
            "source": "devpts",
            "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"],
        },
        {
            "destination": "/dev/shm",
            "type": "tmpfs",
            "source": "shm",
            "options": [*nosuid_noexec_nodev, "mode=1777", "size=65536k"],
        },
        {
            "destination": "/dev/mqueue",
            "type": "mqueue",
            "source": "mqueue",
            "options": nosuid_noexec_nodev,
        },
        {
            "destination": "/sys",
            "type": "sysfs",
            "source": "sysfs",
            "options": [*nosuid_noexec_nodev, "ro"],
        },
    ]
