"""Layer index build throughput, side by side with ``gzip -dc LAYER | tar -t``.

    python -m tools.bench.index [LAYER.tar.gz] [--runs 3] [--budget-mb 256]

Without LAYER, the Debian test image's largest layer is used (``--from-usr``: a
layer is made of the first ``--budget-mb`` MB of regular files and symlinks under
/usr, sorted walk, tarred and gzip'd -6). Each measurement runs ``--runs`` times;
the median is printed as MB/s of *uncompressed tar* (what both sides read), with
its ratio to the ``gzip -dc | tar -t`` baseline (a C decompressor and C tar lister
that hash nothing and keep nothing; fusesnap also hashes the blob, the tar and
every chunk, and notes the gzip checkpoints, in one pass). The CPU column is the
user + system seconds spent (the child processes' for the baseline): on a busy
machine the seconds vary with the load, the CPU seconds much less.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fusesnap.digest import Digest
from fusesnap.index import LayerIndex, build_index, encode
from fusesnap.index.gzipindex import build_checkpoints
from fusesnap.lazy import with_windows_blob
from fusesnap.oci import OCI_LAYER_GZIP, Descriptor
from fusesnap.pull import ingest_layer_file
from fusesnap.store import open_store
from tools.bench.results import record

_SUMMARY = "Layer index build throughput vs gzip -dc | tar -t."
# The goal: the index build at this fraction of the baseline's speed, or better.
GOAL = 0.8
BASELINE = 'set -o pipefail; gzip -dc "$1" | tar -t > /dev/null'


def make_layer(directory: Path, budget: int, source: str = "/usr") -> Path:
    """Tar + gzip the first ``budget`` bytes of files under ``source`` into ``directory``."""
    names: list[bytes] = []
    total = 0
    for root, dirs, files in os.walk(source):
        dirs.sort()
        names.append(os.fsencode(root.lstrip("/")))
        for name in sorted(files):
            path = os.path.join(root, name)
            if os.path.islink(path) or (os.path.isfile(path) and os.access(path, os.R_OK)):
                names.append(os.fsencode(path.lstrip("/")))
                total += os.lstat(path).st_size
            if total >= budget:
                break
        if total >= budget:
            break
    listing = directory / "files"
    listing.write_bytes(b"\0".join(names) + b"\0")
    layer = directory / "layer.tar.gz"
    subprocess.run(
        ["bash", "-c", 'set -o pipefail; tar -C / --no-recursion --null -T "$1" -cf - | '
         'gzip -6 > "$2"', "bash", str(listing), str(layer)],
        check=True,
    )  # fmt: skip
    return layer


def _cpu() -> float:
    mine = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return mine.ru_utime + mine.ru_stime + children.ru_utime + children.ru_stime


def timed(runs: int, fn: Callable[[], object]) -> tuple[float, float]:
    """Median seconds and median CPU seconds of ``runs`` calls of ``fn``."""
    times, cpus = [], []
    for _ in range(runs):
        t0, c0 = time.perf_counter(), _cpu()
        fn()
        times.append(time.perf_counter() - t0)
        cpus.append(_cpu() - c0)
    return statistics.median(times), statistics.median(cpus)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tools.bench.index", description=_SUMMARY)
    ap.add_argument(
        "layer", nargs="?", help="a .tar.gz layer blob (default: the Debian image's largest layer)"
    )
    ap.add_argument("--from-usr", action="store_true", help="make the layer from /usr instead")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--budget-mb", type=int, default=256, help="size of the made-up layer's files")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="fusesnap-bench-") as tmp:
        if args.layer:
            layer = Path(args.layer)
        elif not args.from_usr:
            layer = debian_largest_layer()
        else:
            print(f"making a layer from the first {args.budget_mb} MB of /usr ...", flush=True)
            layer = make_layer(Path(tmp), args.budget_mb << 20)
        return run(layer, args.runs)


def debian_largest_layer() -> Path:
    """The biggest layer blob of the test Debian image (built with debootstrap once, cached)."""
    from tools.images.catalog import LAYOUT_TAG, build_layout
    from tools.images.layout import read_json_blob, resolve_tag

    layout = build_layout("debian")
    manifest = read_json_blob(layout, resolve_tag(layout, LAYOUT_TAG).digest)
    layers: Any = manifest["layers"]
    biggest = max(layers, key=lambda d: d["size"])
    return layout / "blobs" / "sha256" / str(biggest["digest"]).split(":", 1)[1]


def run(layer: Path, runs: int) -> int:
    h = hashlib.sha256()
    with layer.open("rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    digest = f"sha256:{h.hexdigest()}"

    def baseline() -> None:
        subprocess.run(["bash", "-c", BASELINE, "bash", str(layer)], check=True)

    result: list[LayerIndex] = []

    def full() -> None:
        with layer.open("rb") as f:
            result[:] = [build_index(f, layer_digest=digest, media_type=OCI_LAYER_GZIP)]

    def checkpoints() -> None:
        with layer.open("rb") as f:
            build_checkpoints(f)

    def pull_path() -> None:
        # What `fusesnap pull` does with a downloaded layer: index it and put every
        # chunk, zstd-compressed and de-duplicated, into a fresh LMDB store.
        desc = Descriptor(OCI_LAYER_GZIP, Digest(digest), layer.stat().st_size)
        with (
            tempfile.TemporaryDirectory(prefix="fusesnap-bench-store-") as root,
            open_store(Path(root)) as store,
        ):
            ingest_layer_file(store, layer, desc, diff_id=None)

    t_base = timed(runs, baseline)
    t_full = timed(runs, full)
    t_cp = timed(runs, checkpoints)
    t_pull = timed(runs, pull_path)
    idx = result[0]
    tar_mb = idx.uncompressed_size / 1e6
    encoded = encode(idx.without_windows())  # as stored and pushed: windows by digest
    print(
        f"layer {layer}: {idx.compressed_size / 1e6:.1f} MB gzip, {tar_mb:.1f} MB tar, "
        f"{idx.entry_count} entries, {len(idx.chunk_digests())} distinct chunks"
    )
    print(f"median of {runs} runs, MB/s of uncompressed tar:")
    rows = [
        ("gzip -dc | tar -t", t_base),
        ("fusesnap build_index (one pass, checkpoints too)", t_full),
        ("fusesnap pull path (index + chunks into LMDB)", t_pull),
        ("(indexed_gzip's checkpoint pass alone)", t_cp),
    ]
    print(f"  {'':48s} {'seconds':>9s} {'MB/s':>9s} {'vs baseline':>12s} {'CPU s':>7s}")
    for name, (t, cpu) in rows:
        print(f"  {name:48s} {t:8.2f}s {tar_mb / t:9.1f} {t / t_base[0]:11.2f}x {cpu:7.2f}")
    share = 100 * len(encoded) / idx.compressed_size
    points = len(idx.checkpoints.points) if idx.checkpoints else 0
    size = f"{len(encoded) / 1e3:.0f} kB"
    print(f"index: {size} encoded = {share:.2f}% of the blob ({points} checkpoints)")
    _, windows = with_windows_blob(idx, None)
    if windows is not None:
        print(f"gzip windows blob (each window a zstd frame): {len(windows) / 1e3:.0f} kB")
    speed = t_base[0] / t_full[0]
    verdict = "met" if speed >= GOAL else "NOT met"
    print(f"index build speed / gzip -dc | tar -t speed: {speed:.2f} (goal >= {GOAL}: {verdict})")
    print(f"  the same in CPU seconds: {t_base[1] / t_full[1]:.2f}")
    record("index", "build", baseline=t_base[0], fusesnap=t_full[0], tar_mb=tar_mb)
    return 0


if __name__ == "__main__":
    sys.exit(main())
