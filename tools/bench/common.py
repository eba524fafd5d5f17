"""What the benchmarks share: running commands and fusesnap's CLI, cold caches, the index
artifact of a pushed image, the facts of the machine, and exits on SIGTERM."""

from __future__ import annotations

import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

__all__ = [
    "PROBE",
    "Samples",
    "drop_caches",
    "exit_on_sigterm",
    "fusesnap",
    "fusesnap_env",
    "human",
    "is_mounted",
    "machine_facts",
    "mounts_under",
    "push_index_artifact",
    "sh",
]

# The workload of the start-up benchmarks: the first output of an interpreter.
PROBE = ("python3", "-c", "print(1)")
_REPO = Path(__file__).resolve().parents[2]


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
