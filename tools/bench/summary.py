"""The goals of fusesnap's speed work, checked against one ``make bench`` run.

    python -m tools.bench.summary RESULTS.json [--svg docs/bench-startup.svg]

``make bench`` runs every benchmark with ``FUSESNAP_BENCH_RESULTS=RESULTS.json`` (see
`tools.bench.results`) and then this, which prints, as Markdown for the README:

- cold container start per mode, through containerd and through ``fusesnap run``, on
  the unshaped link and on the slow one (`tools.bench.containerd`, `tools.bench.startup`);
- every goal row: the measured value, the peer's where there is one, the goal, and
  whether the median met it;

and draws the cold start times on the slow link as an SVG bar chart. A row whose
benchmark did not run shows "-" and counts as not met.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tools.bench.results import load

Results = dict[str, dict[str, dict[str, Any]]]

# (label, bench without the link suffix, row): the cold-start modes, in table order.
START_MODES: list[tuple[str, str, str]] = [
    ("containerd, overlayfs (pull + unpack)", "containerd", "overlayfs"),
    ("containerd + stargz-snapshotter, eStargz image", "containerd", "stargz"),
    ("containerd + fusesnap snapshotter, eStargz image", "containerd", "fusesnap-estargz"),
    ("containerd + fusesnap snapshotter, gzip + index artifact", "containerd", "fusesnap"),
    ("containerd + fusesnap snapshotter, artifact with profile", "containerd", "fusesnap+profile"),
    (
        "containerd + fusesnap snapshotter, eStargz + profile",
        "containerd",
        "fusesnap-estargz+profile",
    ),
    ("`fusesnap run`, eStargz image", "startup", "run-estargz"),
    ("`fusesnap run`, gzip + index artifact", "startup", "run"),
    ("`fusesnap mount` + chroot, no profile", "startup", "lazy"),
    ("`fusesnap mount` + chroot, with profile", "startup", "lazy+profile"),
    ("skopeo copy + umoci unpack + chroot (full pull)", "startup", "full pull"),
]


def median(values: list[float] | None) -> float | None:
    return statistics.median(values) if values else None


def start_time(
    results: Results, bench: str, row: str, link: str, key: str = "seconds"
) -> float | None:
    return median(results.get(f"{bench}@{link}", {}).get(row, {}).get(key))


def cell(text: str) -> str:
    """``text`` safe inside a Markdown table cell."""
    return text.replace("|", "\\|")


def fmt_s(t: float | None) -> str:
    return "-" if t is None else f"{t:.2f} s"


def start_table(results: Results) -> list[str]:
    lines = [
        "| mode | unshaped link (median) | 100 Mbit + 20 ms (median) | MB from the registry |",
        "|---|---|---|---|",
    ]
    for label, bench, row in START_MODES:
        sent = start_time(results, bench, row, "link", "sent")
        mb = "-" if sent is None else f"{sent / 1e6:.1f}"
        fast, slow = (start_time(results, bench, row, link) for link in ("unshaped", "link"))
        lines.append(f"| {label} | {fmt_s(fast)} | {fmt_s(slow)} | {mb} |")
    return lines


@dataclass
class Goal:
    """One row: ``measure`` gives (what fusesnap did, the peer's value or "", met)."""

    name: str
    goal: str
    measure: Callable[[Results], tuple[str, str, bool] | None]


def _read_ratio(results: Results, row: str, system: str) -> float | None:
    values = results.get("read", {}).get(row, {})
    if system not in values or "local" not in values:
        return None
    return float(values[system]) / float(values["local"])


def _vs_squashfuse(row: str, factor: float) -> Callable[[Results], tuple[str, str, bool] | None]:
    def measure(results: Results) -> tuple[str, str, bool] | None:
        ours, peer = _read_ratio(results, row, "fusesnap"), _read_ratio(results, row, "squashfuse")
        if ours is None or peer is None:
            return None
        return f"{ours:.2f}x", f"{peer:.2f}x", ours <= factor * peer

    return measure


def _vs_local(row: str, limit: float) -> Callable[[Results], tuple[str, str, bool] | None]:
    def measure(results: Results) -> tuple[str, str, bool] | None:
        ours, peer = _read_ratio(results, row, "fusesnap"), _read_ratio(results, row, "squashfuse")
        if ours is None:
            return None
        return f"{ours:.2f}x", "-" if peer is None else f"{peer:.2f}x", ours <= limit

    return measure


def _lazy_start(
    row: str, limit: float, speedup: float
) -> Callable[[Results], tuple[str, str, bool] | None]:
    def measure(results: Results) -> tuple[str, str, bool] | None:
        t = start_time(results, "startup", row, "link")
        full = start_time(results, "startup", "full pull", "link")
        if t is None or full is None:
            return None
        return f"{t:.2f} s, {full / t:.1f}x", "", t <= limit and full / t >= speedup

    return measure


def _mount_ready(results: Results) -> tuple[str, str, bool] | None:
    t = start_time(results, "startup", "lazy", "link", "ready")
    return None if t is None else (f"{t:.2f} s", "", t <= 0.35)


def _full_pull(results: Results) -> tuple[str, str, bool] | None:
    pull = results.get("pull@link", {})
    ours, peer = median(pull.get("fusesnap pull", {}).get("seconds")), None
    if ours is not None:
        peer = median(pull.get("skopeo + umoci", {}).get("seconds"))
    else:  # the start-up benchmark's pull modes: ready = pulled (and mounted) / unpacked
        ours = start_time(results, "startup", "fusesnap pull", "link", "ready")
        peer = start_time(results, "startup", "full pull", "link", "ready")
    if ours is None or peer is None:
        return None
    return f"{ours:.2f} s ({peer / ours:.2f}x)", f"{peer:.2f} s", ours <= 7.5


def _index_build(results: Results) -> tuple[str, str, bool] | None:
    build = results.get("index", {}).get("build")
    if not build:
        return None
    speed = build["baseline"] / build["fusesnap"]
    return f"{speed:.2f}x its speed", "", speed >= 0.8


def _beats_stargz(row: str) -> Callable[[Results], tuple[str, str, bool] | None]:
    def measure(results: Results) -> tuple[str, str, bool] | None:
        ours = start_time(results, "containerd", row, "link")
        peer = start_time(results, "containerd", "stargz", "link")
        if ours is None or peer is None:
            return None
        return f"{ours:.2f} s", f"{peer:.2f} s", ours < peer

    return measure


GOALS = [
    Goal(
        "Debian `find | xargs cat`, cold",
        "<= squashfuse",
        _vs_squashfuse("debian: find|xargs cat, cold", 1.0),
    ),
    Goal(
        "Debian `find | xargs cat`, warm",
        "<= 2x local",
        _vs_local("debian: find|xargs cat, warm", 2.0),
    ),
    Goal("Debian `ls -lR`, warm", "<= 2x local", _vs_local("debian: ls -lR, warm", 2.0)),
    Goal(
        "1 GiB file, sequential, cold", "<= squashfuse", _vs_squashfuse("big: seq read, cold", 1.0)
    ),
    Goal(
        "1 GiB file, 4 KiB random, cold",
        "<= 1.5x squashfuse",
        _vs_squashfuse("big: 4K random, cold", 1.5),
    ),
    Goal(
        "lazy start, no profile (`mount` + chroot)", "<= 1.2 s (8x)", _lazy_start("lazy", 1.2, 8.0)
    ),
    Goal("lazy start, with profile", "<= 0.9 s (>= 10x)", _lazy_start("lazy+profile", 0.9, 10.0)),
    Goal("cold mount ready on that link", "<= 0.35 s", _mount_ready),
    Goal("`pull --all` vs skopeo copy + umoci unpack", "<= 7.5 s", _full_pull),
    Goal("index build vs `gzip -dc | tar -t`", ">= 0.8x", _index_build),
    Goal(
        "containerd start, eStargz image, vs stargz-snapshotter",
        "faster",
        _beats_stargz("fusesnap-estargz"),
    ),
    Goal(
        "containerd start, index artifact, vs stargz-snapshotter",
        "faster",
        _beats_stargz("fusesnap"),
    ),
    Goal(
        "containerd start, with profile, vs stargz-snapshotter",
        "faster",
        _beats_stargz("fusesnap+profile"),
    ),
    Goal(
        "containerd start, eStargz image with profile, vs stargz-snapshotter",
        "faster",
        _beats_stargz("fusesnap-estargz+profile"),
    ),
]


def goal_table(results: Results) -> tuple[list[str], int]:
    """The Markdown rows and how many goals were met."""
    lines = [
        "| workload | fusesnap | peer (squashfuse / stargz / skopeo) | goal | met |",
        "|---|---|---|---|---|",
    ]
    met = 0
    for goal in GOALS:
        got = goal.measure(results)
        if got is None:
            lines.append(f"| {cell(goal.name)} | - | - | {goal.goal} | not measured |")
            continue
        ours, peer, ok = got
        met += ok
        verdict = "yes" if ok else "no"
        lines.append(f"| {cell(goal.name)} | {ours} | {peer or '-'} | {goal.goal} | {verdict} |")
    return lines, met


def start_svg(results: Results) -> str:
    """A horizontal bar per cold-start mode on the slow link (median, seconds)."""
    bars = [(label, start_time(results, bench, row, "link")) for label, bench, row in START_MODES]
    shown = [(label.replace("`", ""), t) for label, t in bars if t is not None]
    width, left, bar_h, gap, top = 860, 400, 22, 8, 40
    scale = (width - left - 80) / max((t for _, t in shown), default=1.0)
    height = top + len(shown) * (bar_h + gap) + 30
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        'font-family="sans-serif" font-size="13">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        '<text x="10" y="22" font-size="15" font-weight="bold">Cold start of '
        "python3 -c 'print(1)' in the Debian image, 100 Mbit + 20 ms link (median)</text>",
    ]
    for i, (label, t) in enumerate(shown):
        y = top + i * (bar_h + gap)
        colour = (
            "#d9822b"
            if "stargz-snapshotter" in label
            else ("#888888" if "overlayfs" in label or "full pull" in label else "#2b6cb0")
        )
        out.append(f'<text x="{left - 8}" y="{y + 16}" text-anchor="end">{_xml(label)}</text>')
        out.append(
            f'<rect x="{left}" y="{y}" width="{t * scale:.1f}" height="{bar_h}" fill="{colour}"/>'
        )
        out.append(f'<text x="{left + t * scale + 6:.1f}" y="{y + 16}">{t:.2f} s</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def _xml(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tools.bench.summary", description=__doc__)
    ap.add_argument("results", type=Path)
    ap.add_argument("--svg", type=Path, help="write the cold-start chart here")
    args = ap.parse_args(argv)
    results = load(args.results)
    print("\nCold container start, Debian image, `python3 -c 'print(1)'`, cold caches:\n")
    print("\n".join(start_table(results)))
    lines, met = goal_table(results)
    print(f"\nGoals ({met} of {len(GOALS)} met):\n")
    print("\n".join(lines))
    if args.svg is not None:
        args.svg.parent.mkdir(parents=True, exist_ok=True)
        args.svg.write_text(start_svg(results))
        print(f"\nchart: {args.svg}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
