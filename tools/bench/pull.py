"""A full pull of the Debian image over a slow link: ``fusesnap pull --all`` against
``skopeo copy`` + ``umoci unpack``.

    python -m tools.bench.pull [--runs 3] [--rate 100mbit] [--delay-ms 10]

The registry sits behind the same shaped link as the start-up benchmark
(`tools.bench.netns`: tbf ``--rate`` + a forwarder adding ``--delay-ms`` each way). Each
run starts from an empty store / empty directories with the kernel caches dropped:

    skopeo + umoci   skopeo copy docker://… oci:DIR; umoci unpack (a rootfs on disk)
    fusesnap pull    fusesnap pull --all (every layer indexed, every chunk stored)

The table gives the median seconds, the CPU seconds the tools used (user + system of
the child processes: what the machine's load does not change), the bytes the registry
sent, and the time the link needs for them at ``--rate`` (the floor for any full pull).
The goal is a pull within `GOAL_OVER_LINK` of that floor (7.5 s for 6.6 s of Debian).

Needs root (netns, tc), docker-registry, skopeo, umoci.
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tools.bench.common import Samples, drop_caches, exit_on_sigterm, fusesnap, human, sh
from tools.bench.netns import SlowRegistry, add_link_options
from tools.bench.results import link_label, record
from tools.images.catalog import build_and_push

_SUMMARY = "Full pull of the Debian image over a slow link: fusesnap pull --all vs skopeo + umoci."
# The goal for a full pull: this many times the time the link needs for the bytes.
GOAL_OVER_LINK = 7.5 / 6.6
_UNITS = {"": 1, "k": 1e3, "m": 1e6, "g": 1e9}


def link_bytes_per_second(rate: str) -> float:
    """tc's ``100mbit`` (bits) or ``12mbps`` (bytes) as bytes per second."""
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([kmg]?)(bit|bps)", rate.lower())
    if m is None:
        raise ValueError(f"cannot read rate {rate!r} (want e.g. 100mbit)")
    value = float(m.group(1)) * _UNITS[m.group(2)]
    return value / 8 if m.group(3) == "bit" else value


@dataclass
class Result(Samples):
    cpu: list[float] = field(default_factory=list)  # user + system seconds of the tools


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


class Bench:
    def __init__(self, work: Path, registry: SlowRegistry, ref: str) -> None:
        self.work, self.registry, self.ref = work, registry, ref

    def measure(self, result: Result, fn: Callable[[Path], None]) -> None:
        d = self.work / result.name.replace(" ", "-").replace("+", "")
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)
        drop_caches()
        before, cpu = self.registry.bytes_sent(), children_cpu()
        t0 = time.perf_counter()
        fn(d)
        result.seconds.append(time.perf_counter() - t0)
        result.cpu.append(children_cpu() - cpu)
        result.sent.append(self.registry.bytes_sent() - before)
        shutil.rmtree(d, ignore_errors=True)

    def skopeo_umoci(self, d: Path) -> None:
        sh("skopeo", "copy", "--quiet", "--src-tls-verify=false",
           f"docker://{self.ref}", f"oci:{d / 'layout'}:img")  # fmt: skip
        sh("umoci", "unpack", "--image", f"{d / 'layout'}:img", str(d / "bundle"))

    def fusesnap_pull(self, d: Path) -> None:
        fusesnap(d / "store", "pull", "--all", self.ref)


def report(results: list[Result], runs: int, rate: str, delay_ms: float) -> None:
    base, ours = results
    link = statistics.median(ours.sent) / link_bytes_per_second(rate)
    goal = link * GOAL_OVER_LINK
    print(
        f"\nDebian image, full pull: median of {runs} run(s), cold store and caches, "
        f"link {rate} (tbf) + {2 * delay_ms:g} ms RTT"
    )
    print(
        f"  {'mode':16s} {'seconds':>8s} {'vs skopeo':>10s} {'CPU s':>7s} "
        f"{'transferred':>12s} {'goal':>14s}"
    )
    for r in results:
        verdict = f"<= {goal:.2f}s " + ("met" if r.t <= goal else "NOT met")
        cols = [
            f"{r.t:7.2f}s", f"{base.t / r.t:9.2f}x", f"{statistics.median(r.cpu):7.2f}",
            f"{human(r.b):>12s}", f"{verdict if r is ours else '':>14s}",
        ]  # fmt: skip
        print(f"  {r.name:16s} " + " ".join(cols))
    print(f"  {'the link alone':16s} {link:7.2f}s   (the bytes fusesnap received at {rate})")
    print("  vs skopeo: skopeo + umoci seconds / mode seconds; CPU s: user + system of the")
    print("  tools (the machine's load changes seconds, not these); goal: link time x 1.14")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tools.bench.pull", description=_SUMMARY)
    ap.add_argument("--runs", type=int, default=3)
    add_link_options(ap)
    ap.set_defaults(netns="fsbpull")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("error: needs root (ip netns, tc, drop_caches)", file=sys.stderr)
        return 1
    exit_on_sigterm()
    work = Path(tempfile.mkdtemp(prefix="fusesnap-bench-pull-"))
    registry = SlowRegistry.from_options(work / "registry", args)
    try:
        registry.open()
        print(f"registry {registry.inside} in netns {args.netns}, reached via {registry.host}; "
              "pushing the Debian image ...", file=sys.stderr)  # fmt: skip
        img = build_and_push("debian", registry.host)
        bench = Bench(work, registry, img.ref)
        modes = [
            (Result("skopeo + umoci"), bench.skopeo_umoci),
            (Result("fusesnap pull"), bench.fusesnap_pull),
        ]
        for run in range(args.runs):
            for result, fn in modes:
                print(f"run {run + 1}/{args.runs}: {result.name} ...", file=sys.stderr)
                bench.measure(result, fn)
                print(f"  {result.seconds[-1]:.2f} s, {result.cpu[-1]:.2f} CPU s, "
                      f"{human(result.sent[-1])}", file=sys.stderr)  # fmt: skip
                record(f"pull@{link_label(args)}", result.name, cpu=result.cpu, **result.values())
        report([r for r, _ in modes], args.runs, args.rate, args.delay_ms)
        return 0
    finally:
        registry.close()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
