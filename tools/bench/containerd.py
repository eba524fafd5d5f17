"""Cold container start through containerd over a slow link: overlayfs, fusesnap's snapshotter
and stargz-snapshotter.

    python -m tools.bench.containerd [--runs 3] [--rate 100mbit] [--delay-ms 10]
                                     [--keep-logs DIR] [--modes NAME,...]

The link is `tools.bench.startup`'s (`tools.bench.netns.SlowRegistry`): the registry in
a network namespace whose egress is shaped by ``tc tbf`` (``--rate``), reached through a
forwarder on 127.0.0.1 that adds ``--delay-ms`` each way and counts the bytes it sends.
The Debian test image is pushed twice, to two repositories, each with an index artifact
(``fusesnap index --push``) from a store of its own: one without an access profile, one
with the profile a first ``fusesnap run`` of the probe recorded. It is also converted to
eStargz (``ctr-remote image convert --estargz --oci``, `tools.images.estargz`; no
prioritized files, so no prefetch landmark) and pushed next to the first, and copied
(``skopeo copy --preserve-digests``) to a third repository with an index artifact carrying
a profile.

Each measurement starts a private containerd (`tools.containerd.PrivateContainerd`) on a
fresh root and state and the mode's snapshotter on a fresh directory: ``fusesnap
snapshotter`` (containerd's ``[proxy_plugins.fusesnap]``) or stargz-snapshotter's daemon
(``[proxy_plugins.stargz]``: the library of Debian's package served by our own main,
built on first use, see `tools.bench.stargz`, with the library's default config). Once both
answer, the page cache is dropped and the clock starts. It stops when the container prints
``1``:

    overlayfs         ctr images pull REF
                      ctr run --rm REF ID python3 -c 'print(1)'
    fusesnap          ctr-remote image rpull --snapshotter fusesnap REF
                      ctr run --rm --snapshotter fusesnap REF ID python3 -c 'print(1)'
    fusesnap+profile  the same, of the repository whose index artifact has a profile
    stargz            ctr-remote image rpull --snapshotter stargz ESTARGZ_REF
                      ctr run --rm --snapshotter stargz ESTARGZ_REF ID python3 -c 'print(1)'
    fusesnap-estargz  the fusesnap mode's commands on ESTARGZ_REF (fusesnap reads its TOCs;
                      no index artifact)
    fusesnap-estargz+profile
                      the same on a copy of ESTARGZ_REF in a repository of its own, whose
                      index artifact carries the profile a first ``fusesnap run`` recorded

The bytes are those the registry sent from the pull's start until ``ctr run`` exited (a
prefetch still going at the first output counts until the container's lower mount goes).
Modes take turns within each run; the table shows the median of ``--runs``. The error and
warning lines of fusesnap's logs (the snapshotter's, its mount daemons') are counted and
printed to stderr at the end; ``--keep-logs`` keeps every log, containerd's and
stargz-snapshotter's too.

After each measurement containerd (its tasks, shims and mounts), the snapshotter, and the
lower mounts fusesnap's leaves up by design are taken down (stargz-snapshotter's daemon
unmounts its layers, all under its root, as it exits on SIGTERM); a measurement that leaves
any process, mount or runc container behind fails the benchmark. On Ctrl-C, SIGTERM or an
error the same happens to whatever runs, and the namespace (with its qdisc) is removed.

Needs root (netns, tc, FUSE, drop_caches), containerd, ctr, ctr-remote, runc,
docker-registry, skopeo; the Debian packages of `tools.bench.stargz.PACKAGES` (installed
when missing) and containerd's source package, for stargz-snapshotter's daemon.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

from tools._process import stop_process
from tools.bench import stargz
from tools.bench.common import (
    PROBE,
    STOP_TIMEOUT,
    Samples,
    drop_caches,
    end_processes,
    exit_on_sigterm,
    fusesnap_env,
    human,
    machine_facts,
    mounts_under,
    processes_naming,
    progress,
    push_index_artifact,
    start_daemon,
)
from tools.bench.netns import SlowRegistry, add_link_options
from tools.bench.results import link_label, record
from tools.containerd import PrivateContainerd, pull_args, unique_id
from tools.images.catalog import PushedImage, build_and_push
from tools.images.estargz import build_and_push_estargz
from tools.images.push import skopeo

_SUMMARY = (
    "Cold container start through containerd: overlayfs, fusesnap's snapshotter and"
    " stargz-snapshotter."
)
REQUIRED = ("containerd", "ctr", "ctr-remote", "runc", "docker-registry", "skopeo", "ip", "tc")
SNAPSHOTTER = "fusesnap"
STARGZ = "stargz"  # stargz-snapshotter's proxy plugin: ctr-remote's default name for it
RUN_TIMEOUT = 300.0
PULL_TIMEOUT = 900.0
# What in fusesnap's logs is worth a look after a run.
_PROBLEM = re.compile(r"\b(ERROR|WARNING|CRITICAL)\b|Traceback|internal error")


@dataclass(frozen=True, slots=True)
class Mode:
    name: str
    ref: str
    snapshotter: str | None  # None: containerd's default, overlayfs; else SNAPSHOTTER or STARGZ
    legend: str  # the commands, under the table
    row: str  # its name in the markdown rows

    @property
    def slug(self) -> str:
        return self.name.replace("+", "-")


# -- what runs during a measurement ----------------------------------------------------------


class SnapshotterProcess:
    """``fusesnap --root ROOT snapshotter --address SOCK``, in a session of its own (so a
    Ctrl-C reaches the benchmark, which stops it after containerd).

    `start` returns once the socket accepts connections. `stop` sends SIGTERM (SIGKILL
    after `STOP_TIMEOUT`), then unmounts the lower mounts it leaves up by design and ends
    their daemons. Idempotent.
    """

    def __init__(self, root: Path, sock: Path, log_path: Path) -> None:
        self.root, self.sock, self.log_path = root, sock, log_path
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> SnapshotterProcess:
        cmd = [sys.executable, "-m", "fusesnap", "--root", str(self.root), "snapshotter"]
        self._proc = start_daemon(
            [*cmd, "--address", str(self.sock)],
            sock=self.sock,
            log_path=self.log_path,
            env=fusesnap_env(),
        )
        return self

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            stop_process(proc, timeout=STOP_TIMEOUT)
        for mountpoint in reversed(mounts_under(self.root)):
            umount = ["umount", "--lazy", mountpoint]
            done = subprocess.run(
                [sys.executable, "-m", "fusesnap", "--root", str(self.root), *umount],
                capture_output=True,
                check=False,
                env=fusesnap_env(),
                timeout=60,
            )
            if done.returncode != 0 and mountpoint in mounts_under(self.root):
                subprocess.run(["umount", "-l", mountpoint], capture_output=True, check=False)
        end_processes(str(self.root))  # mount daemons still serving a detached mount


def snapshotter_daemon(
    name: str, base: Path, stargz_bin: Path
) -> SnapshotterProcess | stargz.StargzDaemon:
    """The daemon of the proxy snapshotter ``name`` of a measurement under ``base``."""
    if name == STARGZ:
        sock, log = base / "stargz.sock", base / "stargz.log"
        return stargz.StargzDaemon(stargz_bin, base / "stargz", sock, log)
    return SnapshotterProcess(base / "store", base / "fs.sock", base / "snapshotter.log")


@contextmanager
def node(base: Path, snapshotter: str | None, stargz_bin: Path) -> Iterator[PrivateContainerd]:
    """A containerd on a fresh root and state under ``base`` and ``snapshotter`` on a fresh
    directory there, wired in by that name: fusesnap's (its store in ``base/store``) or
    stargz-snapshotter's daemon ``stargz_bin`` (its root in ``base/stargz``); both stopped
    after the block, containerd first."""
    with ExitStack() as stack:
        proxies: dict[str, Path] = {}
        if snapshotter is not None:
            snap = snapshotter_daemon(snapshotter, base, stargz_bin)
            stack.callback(snap.stop)
            snap.start()
            proxies[snapshotter] = snap.sock
        yield stack.enter_context(
            PrivateContainerd(base / "ctrd", proxy_snapshotters=proxies, log_level="info")
        )


def leftovers(base: Path) -> list[str]:
    """What of a measurement under ``base`` still runs or is mounted."""
    left = [f"mount {p}" for p in mounts_under(base)]
    left += [f"process {pid}: {cmd}" for pid, cmd in processes_naming(str(base))]
    return left


def fusesnap_logs(base: Path) -> list[Path]:
    """The logs of fusesnap under ``base``: the snapshotter's and its mount daemons'."""
    daemons = sorted((base / "store" / "mounts").glob("*/daemon.log"))
    return [base / "snapshotter.log", *daemons]


def copy_logs(base: Path, dest: Path) -> None:
    """Copy containerd's, fusesnap's and stargz-snapshotter's logs under ``base`` to
    ``dest``, where they keep their paths relative to ``base``."""
    ours = [base / "ctrd" / "containerd.log", base / "stargz.log"]
    for log in [*ours, *fusesnap_logs(base)]:
        if log.is_file():
            target = dest / log.relative_to(base)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(log, target)


def problems(base: Path) -> list[str]:
    """The error and warning lines of the fusesnap logs under ``base`` (the snapshotter's
    and its mount daemons'), without their timestamps."""
    lines = []
    for log in fusesnap_logs(base):
        try:
            text = log.read_text(errors="replace")
        except OSError:
            continue
        for line in text.splitlines():
            if _PROBLEM.search(line):
                # "2026-01-01 12:00:00,123 logger LEVEL message" -> "logger LEVEL message"
                lines.append(re.sub(r"^\d{4}-\d\d-\d\d [\d:,.]+ ", "", line).strip())
    return lines


# -- one measurement -------------------------------------------------------------------------


def first_output(ctrd: PrivateContainerd, mode: Mode) -> float:
    """``ctr run --rm`` of the probe; the `time.perf_counter` of its first line (the run
    itself is waited for, so that its bytes count and its container is gone)."""
    snap = ["--snapshotter", mode.snapshotter] if mode.snapshotter else []
    proc = ctrd.ctr_popen("run", "--rm", *snap, mode.ref, unique_id("bench"), *PROBE)
    watchdog = threading.Timer(RUN_TIMEOUT, proc.kill)
    watchdog.start()
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        t = time.perf_counter()
        _, err = proc.communicate()
    finally:
        watchdog.cancel()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if proc.returncode != 0 or line != "1\n":
        raise RuntimeError(
            f"ctr run ({mode.name}): exit {proc.returncode}, output {line!r}: {err.strip()}"
            f" (containerd log: {ctrd.log_tail(10)})"
        )
    return t


def measure(
    mode: Mode,
    samples: Samples,
    base: Path,
    registry: SlowRegistry,
    *,
    stargz_bin: Path,
    keep_logs: Path | None = None,
) -> list[str]:
    """One cold start of ``mode`` under ``base`` (removed after; its logs copied to
    ``keep_logs``/NAME first), appended to ``samples``; the problem lines of fusesnap's
    logs. ``stargz_bin``: stargz-snapshotter's daemon, for its mode."""
    base.mkdir(parents=True)
    with node(base, mode.snapshotter, stargz_bin) as ctrd:
        drop_caches()
        before = registry.bytes_sent()
        t0 = time.perf_counter()
        if mode.snapshotter is None:
            ctrd.ctr("images", "pull", *pull_args(mode.ref), timeout=PULL_TIMEOUT)
        else:
            pull = pull_args(mode.ref, snapshotter=mode.snapshotter)
            ctrd.ctr_remote("image", "rpull", *pull, timeout=PULL_TIMEOUT)
        t_pulled = time.perf_counter()
        t_out = first_output(ctrd, mode)
        sent = registry.bytes_sent() - before
    left = ctrd.leftovers() + leftovers(base)
    if left:
        raise RuntimeError(f"{mode.name}: left behind after the measurement: {'; '.join(left)}")
    found = problems(base)
    if keep_logs is not None:
        copy_logs(base, keep_logs / base.name)
    shutil.rmtree(base, ignore_errors=True)
    samples.seconds.append(t_out - t0)
    samples.ready.append(t_pulled - t0)
    samples.sent.append(sent)
    return found


# -- the report ------------------------------------------------------------------------------


def span(values: list[float]) -> str:
    return f"{min(values):.2f}-{max(values):.2f}s"


def report(results: list[tuple[Mode, Samples]], header: list[str]) -> None:
    base = results[0][1]
    w = max(17, *(len(mode.name) + 1 for mode, _ in results))  # the name column's width
    print("\n".join(header))
    print(
        f"  {'mode':{w}s} {'seconds':>8s} {'min-max':>12s} {'pulled':>7s} "
        f"{'from registry':>14s} {'speedup':>8s} {'bytes vs 1':>11s}"
    )
    for mode, r in results:
        cols = [
            f"{r.t:7.2f}s",
            f"{span(r.seconds):>12s}",
            f"{statistics.median(r.ready):6.2f}s",
            f"{human(r.b):>14s}",
            f"{base.t / r.t:7.1f}x",
            f"{r.b / base.b:10.2f}x",
        ]
        print(f"  {mode.name:{w}s} " + " ".join(cols))
    print("  seconds: from the pull's start to the container's '1'; pulled: until the pull")
    print("  returned (medians); speedup, bytes vs 1: against the first row")
    for mode, _ in results:
        print(f"  {mode.name + ':':{w}s} {mode.legend}")
    print("\nMarkdown rows for the README:\n")
    print("| mode | seconds (median) | min-max | MB from the registry | speed-up |")
    print("|---|---|---|---|---|")
    for mode, r in results:
        print(
            f"| {mode.row} | {r.t:.2f} s | {span(r.seconds)} | {r.b / 1e6:.1f} | "
            f"{base.t / r.t:.1f}x |"
        )


# -- main ------------------------------------------------------------------------------------


def prepare(registry: SlowRegistry, work: Path) -> tuple[PushedImage, PushedImage, list[Mode]]:
    """Push the Debian image to two repositories, with an index artifact each, one of
    them carrying an access profile, and as eStargz next to the first; the first push,
    the eStargz one and the modes that pull from them."""
    progress("pushing the Debian image twice, each with an index artifact ...")
    plain = build_and_push("debian", registry.host)
    push_index_artifact(work / "builder", plain.ref)
    profiled = build_and_push("debian", registry.host, repo="fusesnap-test/debian-profiled")
    progress("and, for the second, an access profile (fusesnap run, untimed) ...")
    push_index_artifact(work / "builder-profile", profiled.ref, record_profile=True)
    progress("converting it to eStargz (ctr-remote image convert --estargz --oci) ...")
    esgz = build_and_push_estargz("debian", registry.host)
    progress("and copying that to a repository of its own, with a profile's index artifact ...")
    esgz_profiled = f"{registry.host}/fusesnap-test/debian-estargz-profiled:estargz-oci"
    skopeo(
        [
            "copy",
            "--quiet",
            "--preserve-digests",
            "--src-tls-verify=false",
            "--dest-tls-verify=false",
            f"docker://{esgz.ref}",
            f"docker://{esgz_profiled}",
        ]
    )
    push_index_artifact(work / "builder-estargz-profile", esgz_profiled, record_profile=True)
    rpull = "ctr-remote image rpull --snapshotter fusesnap; ctr run --snapshotter fusesnap"
    version = stargz.library_version()
    modes = [
        Mode(
            "overlayfs",
            plain.ref,
            None,
            "ctr images pull; ctr run (containerd's default snapshotter)",
            "containerd, overlayfs: `ctr images pull` + `ctr run`",
        ),
        Mode(
            "fusesnap",
            plain.ref,
            SNAPSHOTTER,
            f"{rpull} (an index artifact, no profile)",
            "fusesnap snapshotter: `ctr-remote image rpull` + `ctr run`",
        ),
        Mode(
            "fusesnap+profile",
            profiled.ref,
            SNAPSHOTTER,
            "the same, the index artifact carrying an access profile",
            "fusesnap snapshotter, index artifact with an access profile",
        ),
        Mode(
            "stargz",
            esgz.ref,
            STARGZ,
            "ctr-remote image rpull --snapshotter stargz; ctr run --snapshotter stargz"
            f" (the eStargz image; stargz-snapshotter {version}, default config)",
            f"containerd + stargz-snapshotter {version}: `ctr-remote image rpull` + `ctr run`,"
            " eStargz image",
        ),
        Mode(
            "fusesnap-estargz",
            esgz.ref,
            SNAPSHOTTER,
            f"{rpull} (the eStargz image: its TOCs, no index artifact)",
            "fusesnap snapshotter, same eStargz image",
        ),
        Mode(
            "fusesnap-estargz+profile",
            esgz_profiled,
            SNAPSHOTTER,
            "the same eStargz image, with an index artifact carrying an access profile",
            "fusesnap snapshotter, same eStargz image, index artifact with a profile",
        ),
    ]
    return plain, esgz, modes


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tools.bench.containerd", description=_SUMMARY)
    ap.add_argument("--runs", type=int, default=3)
    add_link_options(ap)
    ap.add_argument(
        "--keep-logs", type=Path, metavar="DIR", help="keep each measurement's logs in DIR"
    )
    ap.add_argument(
        "--modes", metavar="NAME,...", help="measure only these modes (default: every one)"
    )
    args = ap.parse_args(argv)
    if args.runs < 1:
        ap.error("--runs must be at least 1")
    if os.geteuid() != 0:
        print("error: needs root (ip netns, tc, FUSE, drop_caches, containerd)", file=sys.stderr)
        return 1
    missing = [tool for tool in REQUIRED if shutil.which(tool) is None]
    if missing:
        print(f"error: not on PATH: {', '.join(missing)}", file=sys.stderr)
        return 1
    exit_on_sigterm()
    try:
        stargz_bin = stargz.ensure_daemon()
    except stargz.StargzBuildError as exc:
        print(f"error: stargz-snapshotter's daemon: {exc}", file=sys.stderr)
        return 1
    command = shlex.join(["python", "-m", "tools.bench.containerd", *sys.argv[1:]])
    work = Path(tempfile.mkdtemp(prefix="fusesnap-bench-containerd-"))
    registry = SlowRegistry.from_options(work / "registry", args)
    try:
        registry.open()
        progress(f"registry {registry.inside} in netns {args.netns}, reached via {registry.host}")
        image, esgz, modes = prepare(registry, work)
        if args.modes:
            wanted = args.modes.split(",")
            unknown = set(wanted) - {m.name for m in modes}
            if unknown:
                ap.error(f"no such mode: {', '.join(sorted(unknown))}")
            modes = [m for m in modes if m.name in wanted]
        results = [(mode, Samples(mode.name)) for mode in modes]
        found: Counter[str] = Counter()
        for run in range(args.runs):
            for mode, samples in results:
                progress(f"run {run + 1}/{args.runs}: {mode.name} ...")
                base = work / f"{run + 1}-{mode.slug}"
                found.update(
                    measure(
                        mode,
                        samples,
                        base,
                        registry,
                        stargz_bin=stargz_bin,
                        keep_logs=args.keep_logs,
                    )
                )
                progress(
                    f"  {samples.seconds[-1]:.2f} s (pulled after {samples.ready[-1]:.2f} s),"
                    f" {human(samples.sent[-1])}"
                )
                record(f"containerd@{link_label(args)}", mode.name, **samples.values())
        header = [
            f"$ {command}",
            *machine_facts([["containerd", "--version"], ["runc", "--version"]]),
            f"{registry.describe()}; the Debian test image:"
            f" {len(image.layers)} layers, {human(sum(x.size for x in image.layers))} compressed"
            f" ({human(sum(x.size for x in esgz.layers))} as eStargz)",
            f"\nDebian image, ctr run python3 -c 'print(1)': median of {args.runs} run(s),"
            " cold containerd, store and page cache",
        ]
        report(results, header)
        for line, count in found.most_common():
            print(f"fusesnap log ({count}x): {line}", file=sys.stderr)
        return 0
    finally:
        # Cleaning up is not to be cut short by a second Ctrl-C.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        progress("cleaning up ...")
        sweep(work, stargz_bin)
        registry.close()
        shutil.rmtree(work, ignore_errors=True)


def sweep(work: Path, stargz_bin: Path) -> None:
    """Take down what an interrupted measurement under ``work`` left: containerd (its
    tasks, shims and mounts, through `PrivateContainerd.stop`), the snapshotters and their
    mounts, in that order."""
    for config in sorted(work.glob("*/ctrd/config.toml")):
        base = config.parent.parent
        if processes_naming(str(base)) or mounts_under(base):
            PrivateContainerd(base / "ctrd").stop()
            for name in (SNAPSHOTTER, STARGZ):
                snapshotter_daemon(name, base, stargz_bin).stop()
    for mountpoint in reversed(mounts_under(work)):
        subprocess.run(["umount", "-l", mountpoint], capture_output=True, check=False)
    end_processes(str(work))


if __name__ == "__main__":
    sys.exit(main())
