"""Time to first output of ``python3 -c 'print(1)'`` on the Debian image, over a slow link.

    python -m tools.bench.startup [--runs 3] [--rate 100mbit] [--delay-ms 10] [--unshaped]

The registry runs inside a network namespace joined to the host by a veth pair
(10.213.77.1/30 host, 10.213.77.2/30 inside); the namespace side's egress is shaped
with ``tc qdisc ... tbf rate 100mbit burst 32kbit latency 400ms`` and clients reach it
through a delay forwarder on 127.0.0.1 that adds ``--delay-ms`` each way (RTT ≈ 20 ms;
netem is not needed). See `tools.bench.netns`.

Each mode starts from an empty store / empty directories and drops the kernel caches:

    full pull       skopeo copy docker://… oci:DIR; umoci unpack; chroot ROOTFS python3
    fusesnap pull   fusesnap pull --all; fusesnap mount; chroot MNT python3
    lazy            fusesnap mount (cold; an index artifact was pushed with ``fusesnap
                    index --push``, without a profile; the default ``--prefetch auto``
                    fetches what is opened, whole); chroot MNT python3
    lazy+profile    fusesnap mount --prefetch profile, with a profile recorded once
                    (untimed ``mount --record`` + the probe) in a store from which the
                    image and its chunks were then removed (``rmi`` + ``gc``) before
                    each run; "n/a" when ``fusesnap mount`` has no ``--record``
    run             fusesnap run --rm REF -- python3 …: a runc container on an overlay over
                    the lazy mount (the gzip image and its index artifact)
    run-estargz     the same on the image converted to eStargz (``ctr-remote image
                    convert --estargz --oci``; fusesnap reads its TOCs, no artifact)

The table shows the median seconds, the bytes the registry sent (counted by the
forwarder) and the ratios to the full pull; for the lazy mode also the bytes the
mount served to python (``fusesnap stats --json`` → ``bytes_read``).

Needs root (netns, tc, FUSE, chroot), docker-registry, skopeo, umoci, fuse3.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tools.bench.common import (
    PROBE,
    Samples,
    drop_caches,
    exit_on_sigterm,
    fusesnap,
    fusesnap_env,
    human,
    is_mounted,
    push_index_artifact,
    sh,
)
from tools.bench.netns import SlowRegistry, add_link_options
from tools.bench.results import link_label, record
from tools.images.catalog import build_and_push
from tools.images.estargz import build_and_push_estargz

_SUMMARY = "Time to first output of python3 in the Debian image: full pull vs lazy fusesnap."


def first_output(cmd: list[str], env: dict[str, str] | None = None, quiet: bool = False) -> float:
    """Run ``cmd`` (the probe, in a root of some kind); the `time.perf_counter` when its
    first line was out. ``quiet``: its stderr is dropped."""
    stderr = subprocess.DEVNULL if quiet else None
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=stderr, text=True, env=env)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    t = time.perf_counter()
    if proc.wait(timeout=300) != 0 or line != "1\n":
        raise RuntimeError(f"{' '.join(cmd)}: exit {proc.returncode}, output {line!r}")
    return t


def chroot_probe(rootfs: Path) -> list[str]:
    return ["chroot", str(rootfs), *PROBE]


@dataclass
class Result(Samples):
    read: list[int] = field(default_factory=list)  # bytes_read of the mount (fusesnap modes)
    note: str | None = None


class Bench:
    def __init__(self, work: Path, registry: SlowRegistry, ref: str, estargz_ref: str) -> None:
        self.work, self.registry, self.ref, self.estargz_ref = work, registry, ref, estargz_ref
        self.mounts: list[tuple[Path, Path]] = []  # (root, mountpoint) to undo
        self.t_out = 0.0  # when the probe's output came, in the mode being measured
        self.t_ready = 0.0  # when the image was ready (pulled/unpacked/mounted)
        self.profile_root = work / "profile-store"

    def fresh(self, name: str) -> Path:
        d = self.work / name
        if d.exists():
            shutil.rmtree(d)
        d.mkdir(parents=True)
        return d

    def measure(self, result: Result, fn: Callable[[Path], int | None]) -> None:
        """Time ``fn`` from its start to the probe's first output; count the bytes the
        registry sent until ``fn`` returns (it unmounts after reading the counters)."""
        d = self.fresh(result.name.replace(" ", "-").replace("+", "-"))
        if fn == self.lazy_profile:
            # Forget the image and its chunks; the profile's lease keeps the profile.
            fusesnap(self.profile_root, "rmi", self.ref)
            fusesnap(self.profile_root, "gc")
        drop_caches()
        before = self.registry.bytes_sent()
        t0 = time.perf_counter()
        read = fn(d)
        result.seconds.append(self.t_out - t0)
        result.ready.append(self.t_ready - t0)
        result.sent.append(self.registry.bytes_sent() - before)
        if read is not None:
            result.read.append(read)
        shutil.rmtree(d, ignore_errors=True)

    # -- modes -----------------------------------------------------------------------------

    def full_pull(self, d: Path) -> None:
        sh("skopeo", "copy", "--quiet", "--src-tls-verify=false",
           f"docker://{self.ref}", f"oci:{d / 'layout'}:img")  # fmt: skip
        sh("umoci", "unpack", "--image", f"{d / 'layout'}:img", str(d / "bundle"))
        self.t_ready = time.perf_counter()
        self.t_out = first_output(chroot_probe(d / "bundle" / "rootfs"))

    def fusesnap_pull(self, d: Path) -> int:
        fusesnap(d / "store", "pull", "--all", self.ref)
        return self._mount_and_run(d)

    def lazy(self, d: Path) -> int:
        return self._mount_and_run(d)  # --prefetch auto, and a fresh store has no profile

    def record_profile(self) -> None:
        """Untimed: a cold ``mount --record`` running the probe; the profile is stored in
        `profile_root` at unmount."""
        self.profile_root.mkdir(exist_ok=True)
        self._mount_and_run(self.work, "--record", root=self.profile_root)
        leases = fusesnap(self.profile_root, "lease", "ls").stdout
        if "fusesnap.profile" not in leases:
            raise RuntimeError(f"no profile recorded: {leases}")

    def lazy_profile(self, d: Path) -> int:
        return self._mount_and_run(d, "--prefetch", "profile", root=self.profile_root)

    def _mount_and_run(self, d: Path, *extra: str, root: Path | None = None) -> int:
        """Mount (cold unless pulled), run the probe (the clock stops at its output), then
        read the mount's counters and unmount."""
        root, mnt = root or d / "store", d / "mnt"
        mnt.mkdir()
        fusesnap(root, "mount", *extra, self.ref, str(mnt))
        self.t_ready = time.perf_counter()
        self.mounts.append((root, mnt))
        self.t_out = first_output(chroot_probe(mnt))
        stats = json.loads(fusesnap(root, "stats", "--json", str(mnt)).stdout)
        self.umount(root, mnt)
        return int(stats["bytes_read"])

    def run(self, d: Path) -> None:
        self._run_container(d, self.ref)

    def run_estargz(self, d: Path) -> None:
        self._run_container(d, self.estargz_ref)

    def _run_container(self, d: Path, ref: str) -> None:
        """``fusesnap run --rm`` of the probe on a fresh store; ready is not known from
        outside, so it is the output's time."""
        cmd = [sys.executable, "-m", "fusesnap", "--root", str(d / "store"), "run", "--rm",
               "-T", ref, "--", *PROBE]  # fmt: skip
        self.t_out = self.t_ready = first_output(cmd, env=fusesnap_env(), quiet=True)

    def umount(self, root: Path, mnt: Path) -> None:
        if (root, mnt) in self.mounts:
            self.mounts.remove((root, mnt))
        if is_mounted(mnt):
            proc = subprocess.run(
                [sys.executable, "-m", "fusesnap", "--root", str(root), "umount", str(mnt)],
                capture_output=True,
                check=False,
            )
            if proc.returncode != 0 or is_mounted(mnt):
                subprocess.run(["fusermount3", "-u", "-z", str(mnt)], check=False)

    def cleanup(self) -> None:
        for root, mnt in list(self.mounts):
            self.umount(root, mnt)


def profile_option() -> str | None:
    """The ``fusesnap mount`` option for a recorded prefetch profile, if there is one."""
    text = subprocess.run([sys.executable, "-m", "fusesnap", "mount", "--help"],
                          capture_output=True, text=True, check=False).stdout  # fmt: skip
    return "--record" if "--record" in text and "profile" in text else None


def report(results: list[Result], runs: int, link: str) -> None:
    base = results[0]
    print(f"\nDebian image, python3 -c 'print(1)': median of {runs} run(s), cold store, {link}")
    print(
        f"  {'mode':16s} {'seconds':>9s} {'speedup':>8s} {'transferred':>12s} "
        f"{'vs full':>8s} {'read by python':>15s} {'sent/read':>9s}"
    )
    for r in results:
        if r.note is not None:
            print(f"  {r.name:16s} {r.note}")
            continue
        read = statistics.median(r.read) if r.read else None
        cols = [
            f"{r.t:8.2f}s", f"{base.t / r.t:7.1f}x", f"{human(r.b):>12s}",
            f"{r.b / base.b:7.2f}x",
            f"{human(read):>15s}" if read else f"{'-':>15s}",
            f"{r.b / read:8.2f}x" if read else f"{'-':>9s}",
        ]  # fmt: skip
        print(f"  {r.name:16s} " + " ".join(cols))
    print("  speedup: full-pull seconds / mode seconds; vs full: bytes / full-pull bytes;")
    print("  sent/read: bytes from the registry / bytes the mount served (fusesnap stats)")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tools.bench.startup", description=_SUMMARY)
    ap.add_argument("--runs", type=int, default=3)
    add_link_options(ap)
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("error: needs root (ip netns, tc, FUSE, chroot)", file=sys.stderr)
        return 1
    exit_on_sigterm()
    bench: Bench | None = None
    work = Path(tempfile.mkdtemp(prefix="fusesnap-bench-startup-"))
    registry = SlowRegistry.from_options(work / "registry", args)
    try:
        registry.open()
        print(
            f"registry {registry.inside} in netns {args.netns}, "
            f"reached via {registry.host}; pushing the Debian image ...",
            file=sys.stderr,
        )
        img = build_and_push("debian", registry.host)
        push_index_artifact(work / "builder", img.ref)
        print("converting it to eStargz (ctr-remote image convert) ...", file=sys.stderr)
        esgz = build_and_push_estargz("debian", registry.host)
        bench = Bench(work, registry, img.ref, esgz.ref)
        has_profile = profile_option() is not None
        if has_profile:
            print("recording an access profile (mount --record, untimed) ...", file=sys.stderr)
            bench.record_profile()
        modes: list[tuple[Result, Callable[[Path], int | None] | None]] = [
            (Result("full pull"), bench.full_pull),
            (Result("fusesnap pull"), bench.fusesnap_pull),
            (Result("lazy"), bench.lazy),
            (Result("lazy+profile"), bench.lazy_profile)
            if has_profile
            else (Result("lazy+profile", note="n/a (no profile support yet)"), None),
            (Result("run"), bench.run),
            (Result("run-estargz"), bench.run_estargz),
        ]
        for run in range(args.runs):
            for result, fn in modes:
                if fn is None:
                    continue
                print(f"run {run + 1}/{args.runs}: {result.name} ...", file=sys.stderr)
                bench.measure(result, fn)
                print(
                    f"  {result.seconds[-1]:.2f} s (rootfs ready after {result.ready[-1]:.2f} s),"
                    f" {human(result.sent[-1])}",
                    file=sys.stderr,
                )
                record(
                    f"startup@{link_label(args)}", result.name, read=result.read, **result.values()
                )
        report([r for r, _ in modes], args.runs, registry.describe())
        return 0
    finally:
        if bench is not None:
            bench.cleanup()
        registry.close()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
