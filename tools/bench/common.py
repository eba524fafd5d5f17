"""What the benchmarks share: running commands and fusesnap's CLI, daemons on a unix socket
and the processes a benchmark left, cold caches, the index artifact of a pushed image, the
facts of the machine, progress lines, and exits on SIGTERM."""

from __future__ import annotations

import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

from tools._net import wait_until
from tools._process import stop_process
from tools.registry import _set_parent_death_signal

__all__ = [
    "PROBE",
    "START_TIMEOUT",
    "STOP_TIMEOUT",
    "Samples",
    "drop_caches",
    "end_processes",
    "exit_on_sigterm",
    "fusesnap",
    "fusesnap_env",
    "human",
    "is_mounted",
    "log_tail",
    "machine_facts",
    "mounts_under",
    "processes_naming",
    "progress",
    "push_index_artifact",
    "sh",
    "start_daemon",
]

# The workload of the start-up benchmarks: the first output of an interpreter.
PROBE = ("python3", "-c", "print(1)")
_REPO = Path(__file__).resolve().parents[2]
# Seconds a daemon gets to listen, and to exit after SIGTERM.
START_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0


@dataclass
class Samples:
    """The runs of one mode: seconds until the probe's output, seconds until the image was
    ready (pulled, unpacked or mounted), bytes the registry sent; `t` and `b` are the
    medians."""

    name: str
    seconds: list[float] = field(default_factory=list)
    ready: list[float] = field(default_factory=list)
    sent: list[int] = field(default_factory=list)

    @property
    def t(self) -> float:
        return statistics.median(self.seconds)

    @property
    def b(self) -> float:
        return statistics.median(self.sent)

    def values(self) -> dict[str, list[float] | list[int]]:
        """The runs, for `tools.bench.results.record`."""
        return {"seconds": self.seconds, "ready": self.ready, "sent": self.sent}


def sh(*cmd: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    """Run ``cmd``; its output; `RuntimeError` with its stderr if it fails."""
    proc = subprocess.run(cmd, text=True, capture_output=True, check=False, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: exit {proc.returncode}: {proc.stderr.strip()}")
    return proc


def fusesnap_env() -> dict[str, str]:
    """The environment fusesnap runs in, as a user runs it: no ``FUSESNAP_ROOT``, and its
    bytecode cached (a developer's shell may say ``PYTHONDONTWRITEBYTECODE``)."""
    return {
        k: v for k, v in os.environ.items() if k not in ("FUSESNAP_ROOT", "PYTHONDONTWRITEBYTECODE")
    }


def fusesnap(root: Path, *args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    """``fusesnap --root ROOT ARGS``, by this interpreter; `RuntimeError` if it fails."""
    proc = subprocess.run(
        [sys.executable, "-m", "fusesnap", "--root", str(root), *args],
        text=True,
        capture_output=True,
        check=False,
        timeout=timeout,
        env=fusesnap_env(),
    )
    if proc.returncode != 0:
        raise RuntimeError(
            f"fusesnap {' '.join(args)}: exit {proc.returncode}: {proc.stderr.strip()}"
        )
    return proc


def progress(message: str) -> None:
    """A progress line, on stderr when it is a terminal."""
    if sys.stderr.isatty():
        print(message, file=sys.stderr, flush=True)


def log_tail(path: Path, lines: int = 20) -> str:
    """The last ``lines`` lines of the log at ``path``."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.rstrip().splitlines()[-lines:])


def start_daemon(
    cmd: Sequence[str],
    *,
    sock: Path,
    log_path: Path,
    env: Mapping[str, str] | None = None,
) -> subprocess.Popen[bytes]:
    """Start ``cmd``, its output appended to ``log_path``, in a session of its own (so a
    Ctrl-C reaches the benchmark, which stops it in order), and wait until it accepts
    connections on the unix socket ``sock``.

    `RuntimeError` with the log's tail if it exits or does not listen within
    `START_TIMEOUT`; it is stopped first.
    """
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            list(cmd),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
            preexec_fn=_set_parent_death_signal,
        )
    if not wait_until(
        lambda: _listens(sock), timeout=START_TIMEOUT, abort=lambda: proc.poll() is not None
    ):
        how = f"exited {proc.returncode}" if proc.poll() is not None else "did not listen"
        stop_process(proc, timeout=STOP_TIMEOUT)
        raise RuntimeError(f"{Path(cmd[0]).name} {how}: {log_tail(log_path)}")
    return proc


def _listens(sock: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        try:
            s.connect(str(sock))
        except OSError:
            return False
    return True


def processes_naming(text: str) -> list[tuple[int, str]]:
    """(pid, command line) of the processes, other than this one, whose command line has
    ``text`` in it."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline:
            found.append((int(entry.name), cmdline.strip()))
    return found


def end_processes(text: str) -> None:
    """SIGTERM, then SIGKILL, to each process `processes_naming` ``text`` (the benchmark's
    own: ``text`` is a path in its temporary directory)."""
    pids = [pid for pid, _ in processes_naming(text)]
    if not pids:
        return
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            with suppress(ProcessLookupError):
                os.kill(pid, sig)
        if wait_until(lambda: not processes_naming(text), timeout=STOP_TIMEOUT):
            return


def drop_caches() -> None:
    """Write back, then drop the page cache, dentries and inodes (needs root)."""
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def is_mounted(path: Path) -> bool:
    target = str(path)
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == target for line in f)


def mounts_under(top: Path) -> list[str]:
    """Mount points below ``top``, in mount order."""
    prefix = str(top.resolve()) + "/"
    with open("/proc/self/mountinfo") as f:
        points = [line.split()[4] for line in f]
    return [p for p in points if p.startswith(prefix)]


def human(n: float) -> str:
    return f"{n / 1e6:.1f} MB"


def push_index_artifact(store: Path, ref: str, *, record_profile: bool = False) -> None:
    """Push ``ref``'s index artifact (``fusesnap index --push``) from ``store``, a store
    of its own, as if it had been built on another machine.

    With ``record_profile``, then, as on a third machine: a first ``fusesnap run --rm REF
    PROBE`` on a fresh store (``store`` + ``-run``), whose lazy pull goes through that
    artifact and whose start records the image's access profile, and ``index --push``
    from there: the newer artifact, which pulls prefer, carries the profile.

    The stores must not exist yet; each is removed after, unless a failed command left a
    mount in it (`shutil.rmtree` would walk into the mount).
    """
    with _scratch(store):
        fusesnap(store, "index", "--push", ref)
    if not record_profile:
        return
    runner = store.with_name(f"{store.name}-run")
    with _scratch(runner):
        fusesnap(runner, "run", "--rm", ref, "--", *PROBE)
        leases = fusesnap(runner, "lease", "ls").stdout
        if "fusesnap.profile" not in leases:
            raise RuntimeError(f"{ref}: fusesnap run recorded no access profile: {leases}")
        out = fusesnap(runner, "index", "--push", ref).stdout
        if "access profile" not in out:
            raise RuntimeError(f"{ref}: the index artifact went without the profile: {out}")


@contextmanager
def _scratch(store: Path) -> Iterator[Path]:
    try:
        yield store
    finally:
        if not mounts_under(store):
            shutil.rmtree(store, ignore_errors=True)


def machine_facts(tools: Sequence[Sequence[str]] = ()) -> list[str]:
    """Lines that say where a benchmark ran: CPU, memory, kernel, Python, fusesnap's
    commit, and the first line of each of ``tools`` (version commands) that runs."""
    cpu = "unknown CPU"
    mem = "? GiB"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem = f"{int(line.split()[1]) / (1 << 20):.1f} GiB"
                break
    except OSError:
        pass
    git = subprocess.run(
        ["git", "-C", str(_REPO), "describe", "--always", "--dirty"],
        capture_output=True,
        text=True,
        check=False,
    )
    commit = git.stdout.strip() or "unknown"
    facts = [
        f"{cpu}, {os.cpu_count()} CPUs, {mem} RAM; Linux {platform.release()}",
        f"Python {platform.python_version()}; fusesnap at {commit}",
    ]
    versions = []
    for cmd in tools:
        try:
            proc = subprocess.run(list(cmd), capture_output=True, text=True, check=False)
        except OSError:
            continue
        first = (proc.stdout or proc.stderr).strip().splitlines()
        if proc.returncode == 0 and first:
            versions.append(first[0])
    if versions:
        facts.append("; ".join(versions))
    return facts


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def exit_on_sigterm() -> None:
    """Make SIGTERM end the program as Ctrl-C does, through its ``finally`` clauses."""
    signal.signal(signal.SIGTERM, _terminate)
