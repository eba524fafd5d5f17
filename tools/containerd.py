"""A private containerd for tests and benchmarks: its own config, root, state and sockets.

`PrivateContainerd` writes a ``config.toml`` (version 2) into a base directory,
starts ``containerd --config`` on it and, on exit, leaves nothing behind::

    BASE/config.toml       written by `PrivateContainerd.start`
    BASE/containerd.log    containerd's stdout and stderr (debug level by default)
    BASE/root/             containerd's root: content, metadata, snapshots
    BASE/state/            containerd's state: task bundles, container rootfs mounts
    BASE/tmp/              containerd's temp dir
    BASE/fifo/             the stdio fifos of ``ctr run`` and ``ctr tasks start|exec``
    BASE/cni/              the CRI's CNI config dir (with `CriConfig`; left empty)
    BASE/certs.d/HOST/hosts.toml
                           the CRI's registry hosts: one per ``CriConfig.plain_http``
    SOCKDIR/containerd.sock, containerd.sock.ttrpc
                           SOCKDIR is BASE/run, or a ``/run/ctrd-*`` directory
                           (removed on stop) when BASE is too deep for a unix
                           socket path (107 bytes)

Use it as a context manager; proxy snapshotters are named with their sockets::

    with PrivateContainerd(tmp_path, proxy_snapshotters={"fusesnap": sock}) as ctrd:
        ctrd.ctr("images", "pull", *pull_args(ref))
        ctrd.ctr("run", "--rm", ref, unique_id(), "echo", "hello").stdout

Plain-HTTP registries: the registry is reached by ``ctr`` itself, not by the
daemon, so the client is told: ``ctr images pull --plain-http REF`` and
``ctr-remote images rpull --plain-http REF`` (no daemon config, no hosts.toml).
ctr 1.6 happens to use HTTP for ``localhost`` and loopback addresses even
without the flag, but that is the client's default, not a promise: `pull_args`
passes ``--plain-http`` for every loopback registry.

Stopping (also after a failed start, and at interpreter exit for an instance
never stopped): every task is deleted with ``ctr tasks delete --force`` while
the daemon runs, so its shim exits by itself; containerd gets SIGTERM (SIGKILL
after ``stop_timeout``); then, as shims outlive containerd by design, whatever
is left is swept (`tools._containerd_sweep`): containers whose runc state names
one of our bundles are ``runc delete --force``-d, shims started with ``-address
SOCK`` (our socket) are killed and their sockets removed, and every mount under
our dirs is ``umount -l``-ed in reverse mountinfo order.
`PrivateContainerd.leftovers` lists what is still there, for tests to assert on.

Kubernetes' CRI (``cri=CriConfig(sandbox_image=...)``): the plugin is loaded,
and required, so a CRI config it cannot use stops containerd at start; it
serves ``runtime.v1`` on the daemon's own socket and keeps its images and
containers in the containerd namespace `CRI_NAMESPACE`, its files under BASE's
root and state (``io.containerd.grpc.v1.cri``). Its streaming server listens on
127.0.0.1 on a free port; it loads no AppArmor profile into the kernel. It has
no CNI network (BASE/cni stays empty: a network would keep its results in
/var/lib/cni, which every containerd shares), so a pod runs on the node's
network (``NamespaceOption.network = NODE``). The sandbox image's default
command must not exit: the pod's namespaces are its process's. The CRI pulls
by itself, so the registries in ``plain_http`` are the daemon's to know: a
``hosts.toml`` each, under BASE/certs.d (the CRI's registry ``config_path``).

Shared machine state: the runc shim keeps container state in
``/run/containerd/runc/NAMESPACE/ID`` and puts containers in the cgroup
``/NAMESPACE/ID`` whatever the daemon, so two containerds running containers of
the same namespace and ID collide: use `unique_id` for container IDs.

Concurrency: an instance is not thread-safe; start and stop it from one thread.
containerd gets SIGTERM when the thread that started it ends (Linux
parent-death signal), so start it from the main thread.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import ipaddress
import json
import os
import secrets
import shlex
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from tools._containerd_sweep import Footprint
from tools._net import wait_until
from tools._process import Started, stop_process

__all__ = [
    "CRI_NAMESPACE",
    "CRI_PLUGIN",
    "DISABLED_PLUGINS",
    "REQUIRED_PLUGINS",
    "ContainerdError",
    "CriConfig",
    "CtrError",
    "PrivateContainerd",
    "pull_args",
    "unique_id",
]

CONTAINERD = "containerd"
CTR = "ctr"
CTR_REMOTE = "ctr-remote"
MAX_SOCKET_PATH = 107  # sizeof(sockaddr_un.sun_path) - 1 on Linux
_PR_SET_PDEATHSIG = 1
CRI_PLUGIN = "io.containerd.grpc.v1.cri"
CRI_NAMESPACE = "k8s.io"  # the containerd namespace of every image and container of the CRI
CNI_BIN_DIR = "/usr/lib/cni"  # Debian's containernetworking-plugins

# What containerd would load but this machine cannot use, or should not touch.
DISABLED_PLUGINS: tuple[str, ...] = (
    CRI_PLUGIN,  # Kubernetes CRI: CNI, a pause image, a streaming server (see CriConfig)
    "io.containerd.snapshotter.v1.aufs",  # runs modprobe aufs at start (not installed)
    "io.containerd.snapshotter.v1.btrfs",  # root is not btrfs: skipped with a log line
    "io.containerd.snapshotter.v1.zfs",  # root is not zfs: skipped with a log line
    "io.containerd.snapshotter.v1.devmapper",  # unconfigured: a load error and warnings
    "io.containerd.internal.v1.opt",  # creates /opt/containerd, shared by every containerd
)
# What the tests use: containerd exits at start, rather than warn, if one fails to load.
# (The deprecated io.containerd.runtime.v1.linux must stay: 1.6's tasks service needs it.)
REQUIRED_PLUGINS: tuple[str, ...] = (
    "io.containerd.grpc.v1.containers",
    "io.containerd.grpc.v1.content",
    "io.containerd.grpc.v1.images",
    "io.containerd.grpc.v1.leases",
    "io.containerd.grpc.v1.snapshots",
    "io.containerd.grpc.v1.tasks",
    "io.containerd.runtime.v2.task",
)


@dataclass(frozen=True, slots=True)
class CriConfig:
    """What a `PrivateContainerd` with Kubernetes' CRI plugin needs to know.

    Arguments:
        sandbox_image: every pod's sandbox ("pause") image; the CRI pulls it at the
            first RunPodSandbox. Its default command must not exit.
        snapshotter: the snapshotter of the CRI's pulls and containers.
        snapshot_annotations: pass each layer's image reference to the snapshotter as
            labels (``cri.image-ref``, ``cri.layer-digest``...), which a remote
            snapshotter needs; containerd's default is not to.
        plain_http: registries (``HOST:PORT``) to reach over HTTP, not HTTPS.
    """

    sandbox_image: str
    snapshotter: str = "overlayfs"
    snapshot_annotations: bool = True
    plain_http: tuple[str, ...] = ()


class ContainerdError(RuntimeError):
    """containerd could not be started, or a client command failed."""


class CtrError(ContainerdError):
    """A ``ctr`` or ``ctr-remote`` command exited non-zero or timed out."""

    def __init__(self, message: str, *, cmd: Sequence[str], returncode: int | None) -> None:
        super().__init__(message)
        self.cmd = list(cmd)
        self.returncode = returncode


def unique_id(prefix: str = "fusesnap") -> str:
    """A container ID no other test or containerd on this machine is using."""
    return f"{prefix}-{os.getpid()}-{secrets.token_hex(4)}"


def pull_args(ref: str, *, snapshotter: str | None = None) -> list[str]:
    """Arguments for ``ctr images pull`` or ``ctr-remote images rpull`` of ``ref``:
    ``--plain-http`` when its registry is on a loopback address, and ``--snapshotter``."""
    args = ["--plain-http"] if _is_loopback(ref.split("/", 1)[0]) else []
    if snapshotter is not None:
        args += ["--snapshotter", snapshotter]
    return [*args, ref]


def _is_loopback(host_port: str) -> bool:
    host = host_port
    if host.startswith("["):
        host = host[1:].split("]", 1)[0]
    elif host.count(":") == 1:
        host = host.split(":", 1)[0]
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _with_fifo_dir(args: Sequence[str], fifo_dir: Path) -> list[str]:
    """``args`` with ``--fifo-dir`` added to ``run``, ``tasks start`` and ``tasks exec``.

    ctr's default, /run/containerd/fifo, is shared by every containerd, and a
    detached run (``run -d``) leaves its fifos there for good.
    """
    args = list(args)
    if "--fifo-dir" in args:
        return args
    if args[:1] == ["run"]:
        at = 1
    elif args[:1] in (["tasks"], ["task"], ["t"]) and args[1:2] in (["start"], ["exec"]):
        at = 2
    else:
        return args
    return [*args[:at], "--fifo-dir", str(fifo_dir), *args[at:]]


def _toml_str(value: str) -> str:
    # A JSON string of printable text is a valid TOML basic string.
    return json.dumps(value)


def _toml_bool(value: bool) -> str:
    return "true" if value else "false"


def _set_parent_death_signal() -> None:
    """In the child: get SIGTERM when the test process dies, so no containerd is leaked."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _client_env() -> dict[str, str]:
    # ctr reads CONTAINERD_ADDRESS, _NAMESPACE and _SNAPSHOTTER: only our flags count.
    return {k: v for k, v in os.environ.items() if not k.startswith("CONTAINERD_")}


def _tail(text: str, lines: int) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])


class PrivateContainerd(Started):
    """A containerd of its own, serving ``base_dir`` on a unix socket.

    Arguments:
        base_dir: where the configuration, log, root and state live (kept after
            stop, for the log).
        proxy_snapshotters: ``{name: unix socket path}``, each configured as
            ``[proxy_plugins.NAME] type = "snapshot"``; use them with
            ``--snapshotter NAME``. containerd dials them lazily, so they need
            not listen yet at start.
        namespace: the default ``--namespace`` of `ctr` and `ctr_remote`.
        cri: load Kubernetes' CRI plugin, configured so (see the module's docstring);
            None (the default) leaves it disabled.
        log_level: containerd's ``[debug] level``.
        start_timeout: seconds to wait for ``ctr version`` to answer.
        stop_timeout: seconds between SIGTERM and SIGKILL.
    """

    def __init__(
        self,
        base_dir: str | os.PathLike[str],
        *,
        proxy_snapshotters: Mapping[str, str | os.PathLike[str]] | None = None,
        namespace: str = "default",
        cri: CriConfig | None = None,
        log_level: str = "debug",
        start_timeout: float = 20.0,
        stop_timeout: float = 10.0,
    ) -> None:
        self.base_dir = Path(base_dir).resolve()
        self.proxy_snapshotters = {
            name: str(path) for name, path in (proxy_snapshotters or {}).items()
        }
        for name, path in self.proxy_snapshotters.items():
            if not name or len(os.fsencode(path)) > MAX_SOCKET_PATH:
                raise ValueError(f"proxy snapshotter {name!r}: bad name or socket path {path!r}")
        self.namespace = namespace
        self.cri = cri
        self.log_level = log_level
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self._proc: subprocess.Popen[bytes] | None = None
        self._socket_dir: Path | None = None
        self._owns_socket_dir = False

    # -- where things are ------------------------------------------------------------------

    @property
    def config_path(self) -> Path:
        return self.base_dir / "config.toml"

    @property
    def log_path(self) -> Path:
        return self.base_dir / "containerd.log"

    @property
    def root(self) -> Path:
        return self.base_dir / "root"

    @property
    def state(self) -> Path:
        return self.base_dir / "state"

    @property
    def socket_dir(self) -> Path:
        if self._socket_dir is None:
            short = self.base_dir / "run"
            if len(os.fsencode(short / "containerd.sock.ttrpc")) <= MAX_SOCKET_PATH:
                self._socket_dir = short
            else:
                self._socket_dir = Path(tempfile.mkdtemp(prefix="ctrd-", dir="/run"))
                self._owns_socket_dir = True
        return self._socket_dir

    @property
    def address(self) -> str:
        """The gRPC socket: ``ctr --address``, and what the shims are started with."""
        return str(self.socket_dir / "containerd.sock")

    @property
    def ttrpc_address(self) -> str:
        return str(self.socket_dir / "containerd.sock.ttrpc")

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def cni_conf_dir(self) -> Path:
        return self.base_dir / "cni"

    @property
    def registry_hosts_dir(self) -> Path:
        """The CRI's registry ``config_path``: ``HOST:PORT/hosts.toml`` in it."""
        return self.base_dir / "certs.d"

    def log_tail(self, lines: int = 30) -> str:
        try:
            return _tail(self.log_path.read_text(errors="replace"), lines)
        except OSError:
            return "(no log)"

    # -- configuration ---------------------------------------------------------------------

    @property
    def disabled_plugins(self) -> tuple[str, ...]:
        if self.cri is None:
            return DISABLED_PLUGINS
        return tuple(p for p in DISABLED_PLUGINS if p != CRI_PLUGIN)

    @property
    def required_plugins(self) -> tuple[str, ...]:
        return REQUIRED_PLUGINS if self.cri is None else (*REQUIRED_PLUGINS, CRI_PLUGIN)

    def config_toml(self) -> str:
        """The text of ``config.toml``."""
        disabled = ", ".join(_toml_str(p) for p in self.disabled_plugins)
        required = ", ".join(_toml_str(p) for p in self.required_plugins)
        lines = [
            "version = 2",
            f"root = {_toml_str(str(self.root))}",
            f"state = {_toml_str(str(self.state))}",
            f"temp = {_toml_str(str(self.base_dir / 'tmp'))}",
            f"disabled_plugins = [{disabled}]",
            f"required_plugins = [{required}]",
            "",
            "[grpc]",
            f"  address = {_toml_str(self.address)}",
            "",
            "[ttrpc]",
            f"  address = {_toml_str(self.ttrpc_address)}",
            "",
            "[debug]",
            f"  level = {_toml_str(self.log_level)}",
        ]
        for name, path in self.proxy_snapshotters.items():
            lines += [
                "",
                f"[proxy_plugins.{_toml_str(name)}]",
                '  type = "snapshot"',
                f"  address = {_toml_str(path)}",
            ]
        if self.cri is not None:
            lines += ["", *self._cri_toml(self.cri)]
        return "\n".join(lines) + "\n"

    def _cri_toml(self, cri: CriConfig) -> list[str]:
        table = f"plugins.{_toml_str(CRI_PLUGIN)}"
        return [
            f"[{table}]",
            f"  sandbox_image = {_toml_str(cri.sandbox_image)}",
            # containerd 1.6's defaults, which a test relies on: no TCP listener, the
            # streaming server (exec, attach) on a free loopback port, no SELinux labels.
            "  disable_tcp_service = true",
            '  stream_server_address = "127.0.0.1"',
            '  stream_server_port = "0"',
            "  enable_selinux = false",
            # Where AppArmor is on, each container's profile is loaded into the kernel.
            "  disable_apparmor = true",
            # A pod's own network namespace is mounted here, not in /var/run/netns.
            "  netns_mounts_under_state_dir = true",
            # A sandbox's OOM score is -998 unless held to containerd's own: lowering it
            # takes CAP_SYS_RESOURCE, which a test machine may not grant (runc then fails
            # with "can't get final child's PID from pipe").
            "  restrict_oom_score_adj = true",
            "",
            f"[{table}.containerd]",
            f"  snapshotter = {_toml_str(cri.snapshotter)}",
            f"  disable_snapshot_annotations = {_toml_bool(not cri.snapshot_annotations)}",
            "",
            f"[{table}.cni]",
            f"  bin_dir = {_toml_str(CNI_BIN_DIR)}",
            f"  conf_dir = {_toml_str(str(self.cni_conf_dir))}",
            "",
            f"[{table}.registry]",
            f"  config_path = {_toml_str(str(self.registry_hosts_dir))}",
        ]

    def _write_registry_hosts(self, cri: CriConfig) -> None:
        for host in cri.plain_http:
            directory = self.registry_hosts_dir / host
            directory.mkdir(parents=True, exist_ok=True)
            url = _toml_str(f"http://{host}")
            # containerd 1.6 refuses a hosts.toml without a host table ("invalid `host` tree").
            (directory / "hosts.toml").write_text(
                f'server = {url}\n\n[host.{url}]\n  capabilities = ["pull", "resolve"]\n'
            )

    def write_config(self) -> Path:
        for directory in (
            self.base_dir,
            self.root,
            self.state,
            self.base_dir / "tmp",
            self.socket_dir,
        ):
            directory.mkdir(parents=True, exist_ok=True)
        if self.cri is not None:
            self.cni_conf_dir.mkdir(exist_ok=True)
            self.registry_hosts_dir.mkdir(exist_ok=True)
            self._write_registry_hosts(self.cri)
        self.config_path.write_text(self.config_toml())
        return self.config_path

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> PrivateContainerd:
        """Start containerd and wait until ``ctr version`` answers.

        Raises `ContainerdError` with the log's tail when it does not come up
        within ``start_timeout``; whatever it started is cleaned up first.
        """
        if self._proc is not None and self._proc.poll() is None:
            return self
        absent = [tool for tool in (CONTAINERD, CTR) if shutil.which(tool) is None]
        if absent:
            raise ContainerdError(f"not on PATH: {', '.join(absent)}")
        self.write_config()
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                [CONTAINERD, "--config", str(self.config_path)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                # Its own session: a Ctrl-C meant for pytest must not stop it
                # before stop() has deleted its tasks.
                start_new_session=True,
                preexec_fn=_set_parent_death_signal,
            )
        atexit.register(self.stop)
        proc = self._proc
        if not wait_until(
            self._answers, timeout=self.start_timeout, abort=lambda: proc.poll() is not None
        ):
            exited = proc.poll()
            self.stop()
            how = f"exited with {exited}" if exited is not None else "did not answer"
            raise ContainerdError(
                f"containerd on {self.address} {how} within {self.start_timeout}s;"
                f" log {self.log_path}:\n{self.log_tail()}"
            )
        return self

    def _answers(self) -> bool:
        if not os.path.exists(self.address):
            return False
        try:
            result = self._run(CTR, ["version"], namespace=None, check=False, timeout=5.0)
        except CtrError:
            return False
        return result.returncode == 0

    def stop(self) -> None:
        """Stop containerd and take down every task, shim and mount it left; idempotent."""
        atexit.unregister(self.stop)
        proc, self._proc = self._proc, None
        try:
            if proc is not None and proc.poll() is None:
                with contextlib.suppress(ContainerdError, OSError):
                    self._delete_tasks()
                stop_process(proc, timeout=self.stop_timeout)
        finally:
            self.footprint.sweep(timeout=self.stop_timeout)
            if self._owns_socket_dir and self._socket_dir is not None:
                shutil.rmtree(self._socket_dir, ignore_errors=True)
                self._socket_dir = None
                self._owns_socket_dir = False

    def restart(self) -> None:
        """Stop containerd alone, as ``systemctl restart containerd`` does (its shims and
        their containers, and every mount, stay), and start it again on the same root,
        state and sockets."""
        proc, self._proc = self._proc, None
        if proc is not None:
            stop_process(proc, timeout=self.stop_timeout)
        self.start()

    def _delete_tasks(self) -> None:
        """Kill and delete every task through containerd, so its shim exits by itself."""
        spaces = self.ctr("namespaces", "ls", "-q", timeout=10.0).stdout.split()
        for space in spaces:
            tasks = self.ctr("tasks", "ls", "-q", namespace=space, timeout=10.0).stdout.split()
            for task in tasks:
                self.ctr(
                    "tasks", "delete", "--force", task, namespace=space, check=False, timeout=15.0
                )

    def __repr__(self) -> str:
        return f"PrivateContainerd({self.address}, pid={self.pid}, base_dir={self.base_dir})"

    # -- what may be left behind -----------------------------------------------------------

    @property
    def footprint(self) -> Footprint:
        """What on the machine is this instance's (see `tools._containerd_sweep`)."""
        dirs = [self.root, self.state, self.base_dir / "tmp"]
        if self._socket_dir is not None:
            dirs.append(self._socket_dir)
        return Footprint(self.address, self.config_path, self.state, tuple(dirs))

    def leftovers(self) -> list[str]:
        """What of this instance still runs or is mounted: daemon, shims, runc containers,
        mounts under its dirs; empty after a clean stop."""
        return self.footprint.leftovers()

    # -- clients ---------------------------------------------------------------------------

    def ctr(
        self,
        *args: str,
        namespace: str | None = None,
        check: bool = True,
        timeout: float = 120.0,
        input: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``ctr --address SOCK --namespace NS ARGS...``; text output.

        ``run``, ``tasks start`` and ``tasks exec`` get ``--fifo-dir BASE/fifo``
        unless they name one. ``CONTAINERD_*`` variables are not passed on.

        Raises `CtrError` (command, exit code, stderr's tail) when it exits
        non-zero and ``check`` is true, or when it outlives ``timeout``.
        """
        ns = namespace or self.namespace
        return self._run(CTR, args, namespace=ns, check=check, timeout=timeout, input=input)

    def ctr_remote(
        self,
        *args: str,
        namespace: str | None = None,
        check: bool = True,
        timeout: float = 120.0,
        input: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """`ctr` with ``ctr-remote`` (stargz-snapshotter's ctr, which adds ``images rpull``)."""
        ns = namespace or self.namespace
        return self._run(CTR_REMOTE, args, namespace=ns, check=check, timeout=timeout, input=input)

    def ctr_popen(self, *args: str, namespace: str | None = None) -> subprocess.Popen[str]:
        """`ctr` started, not waited for: stdout and stderr are text pipes, for a caller
        that reads the output as it comes (the moment a container prints its first line).
        The caller waits for it (and kills it on failure)."""
        cmd = self._command(CTR, args, namespace or self.namespace)
        return subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=_client_env(),
        )

    def _command(self, tool: str, args: Sequence[str], namespace: str | None) -> list[str]:
        cmd = [tool, "--address", self.address]
        if namespace is not None:
            cmd += ["--namespace", namespace]
        return cmd + _with_fifo_dir(args, self.base_dir / "fifo")

    def _run(
        self,
        tool: str,
        args: Sequence[str],
        *,
        namespace: str | None,
        check: bool,
        timeout: float,
        input: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        cmd = self._command(tool, args, namespace)
        started = time.monotonic()
        try:
            result = subprocess.run(
                cmd, capture_output=True, text=True, timeout=timeout, input=input, env=_client_env()
            )
        except subprocess.TimeoutExpired as exc:
            stderr = exc.stderr.decode(errors="replace") if exc.stderr else ""
            raise CtrError(
                f"`{shlex.join(cmd)}` timed out after {timeout}s; stderr:\n{_tail(stderr, 20)}",
                cmd=cmd,
                returncode=None,
            ) from exc
        if check and result.returncode != 0:
            raise CtrError(
                f"`{shlex.join(cmd)}` exited {result.returncode} after"
                f" {time.monotonic() - started:.1f}s; stderr:\n{_tail(result.stderr, 20)}"
                f"\n(containerd log: {self.log_path})",
                cmd=cmd,
                returncode=result.returncode,
            )
        return result
