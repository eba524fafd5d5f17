"""Read performance of a fusesnap mount against local disk, squashfuse and ratarmount.

    python -m tools.bench.read [--images debian,big] [--big-size 1G] [--runs 3]
                               [--work DIR] [--systems fusesnap,local,squashfuse,ratarmount]
                               (also: fusesnap-lru256M, fusesnap with a 256 MiB chunk LRU)

For each image (the cached Debian test image; ``crafted-big``, one file of
``--big-size`` bytes) the same tree is served four ways:

    fusesnap    the image pushed to a local registry, pulled, ``fusesnap mount``
    local       ``umoci unpack`` of the image on the local disk (the baseline)
    squashfuse  ``mksquashfs`` of that unpacked tree (zstd), ``squashfuse``
    ratarmount  ``ratarmount`` over the image's gzip layer blobs (several layers are
                union-mounted: whiteouts are not applied, so that tree is a little
                larger; its index is built once, before any timing)

and each workload is timed ``--runs`` times; the table shows the median and its
ratio to local disk. "Cold" runs drop the kernel caches
(``echo 3 > /proc/sys/vm/drop_caches``) and mount a FUSE system afresh before
each run (the mount itself is not timed; the ``mount`` row times it); "warm"
runs repeat a workload right after one untimed pass.

Workloads: sequential read of the largest file, 2000 random 4 KiB reads of it
(``POSIX_FADV_RANDOM``, same offsets everywhere), ``find -type f -print0 |
xargs -0 cat`` and ``ls -lR`` over the whole tree.

Needs root (drop_caches, FUSE), docker-registry, skopeo, umoci, fuse3; and,
for their columns, mksquashfs + squashfuse and ratarmount (``pip install
ratarmount``); a system whose tools are missing is left out. Prepared trees,
squashfs images and the registry are kept under ``--work`` between runs.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tools.bench.common import drop_caches, is_mounted, sh
from tools.bench.results import record
from tools.images.cache import cache_dir
from tools.images.catalog import LAYOUT_TAG, PushedImage, build_and_push
from tools.images.layout import read_json_blob, resolve_tag
from tools.registry import Registry

SYSTEMS = ("fusesnap", "local", "squashfuse", "ratarmount")
RANDOM_READS = 2000
MiB = 1 << 20


def fuse_unmount(path: Path) -> None:
    if is_mounted(path):
        subprocess.run(["fusermount3", "-u", "-z", str(path)], check=False)


def wait_mounted(path: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not is_mounted(path):
        if time.monotonic() > deadline:
            raise RuntimeError(f"{path}: not mounted after {timeout}s")
        time.sleep(0.01)
    os.listdir(path)  # and answering


# -- the image, prepared once for every system ------------------------------------------------


@dataclass
class Subject:
    name: str
    pushed: PushedImage
    work: Path
    rootfs: Path = field(init=False)
    big_file: str = field(init=False)  # relative to the tree root

    def layer_blobs(self) -> list[Path]:
        layout = self.pushed.truth_layout_dir or self.pushed.layout_dir
        manifest = read_json_blob(layout, resolve_tag(layout, LAYOUT_TAG).digest)
        layers = manifest["layers"]
        assert isinstance(layers, list)
        return [layout / "blobs" / "sha256" / d["digest"].split(":", 1)[1] for d in layers]


def prepare(name: str, registry: Registry, work: Path, *, big_size: int) -> Subject:
    print(f"preparing {name} ...", file=sys.stderr)
    tag = f"big{big_size}" if name == "crafted-big" else None
    pushed = build_and_push(name, registry, big_size=big_size, tag=tag)
    key = f"{name}-{pushed.manifest_digest.split(':')[1][:16]}"
    subject = Subject(name, pushed, work / key)
    subject.work.mkdir(parents=True, exist_ok=True)
    subject.rootfs = subject.work / "bundle" / "rootfs"
    if not (subject.work / "unpacked.done").exists():
        shutil.rmtree(subject.work / "bundle", ignore_errors=True)
        pushed.unpack(subject.work / "bundle")
        (subject.work / "unpacked.done").touch()
    files = [
        (p.stat().st_size, str(p.relative_to(subject.rootfs)))
        for p in subject.rootfs.rglob("*")
        if p.is_file() and not p.is_symlink()
    ]
    subject.big_file = max(files)[1]
    return subject


# -- the systems ---------------------------------------------------------------------------


class System:
    """One way of serving a `Subject`'s tree; `mount` returns the tree's root."""

    name = ""

    def __init__(self, subject: Subject) -> None:
        self.subject = subject
        self.mountpoint = subject.work / f"mnt-{self.name}"

    @staticmethod
    def available() -> bool:
        return True

    def setup(self) -> None:
        """Untimed, once: build what the mount needs."""

    def mount(self) -> Path:
        raise NotImplementedError

    def unmount(self) -> None:
        fuse_unmount(self.mountpoint)


class Local(System):
    name = "local"

    def mount(self) -> Path:
        return self.subject.rootfs

    def unmount(self) -> None:
        pass


class Fusesnap(System):
    name = "fusesnap"

    def __init__(self, subject: Subject) -> None:
        super().__init__(subject)
        self.root = subject.work.parent / "store"

    def _cli(self, *args: str) -> None:
        sh(sys.executable, "-m", "fusesnap", "--root", str(self.root), *args)

    def setup(self) -> None:
        self._cli("pull", self.subject.pushed.ref)

    mount_args: tuple[str, ...] = ()

    def mount(self) -> Path:
        if not is_mounted(self.mountpoint):
            self.mountpoint.mkdir(exist_ok=True)
            self._cli("mount", *self.mount_args, self.subject.pushed.ref, str(self.mountpoint))
        return self.mountpoint

    def unmount(self) -> None:
        if is_mounted(self.mountpoint):
            self._cli("umount", str(self.mountpoint))


class FusesnapBigLru(Fusesnap):
    """fusesnap with the chunk LRU it had before the page cache became the cache."""

    name = "fusesnap-lru256M"
    mount_args = ("--cache-size", "256M")


class Squashfuse(System):
    name = "squashfuse"

    @staticmethod
    def available() -> bool:
        return bool(shutil.which("mksquashfs") and shutil.which("squashfuse"))

    @property
    def image(self) -> Path:
        return self.subject.work / "tree.sqfs"

    def setup(self) -> None:
        if not self.image.exists():
            tmp = self.image.with_suffix(".tmp")
            sh("mksquashfs", str(self.subject.rootfs), str(tmp), "-noappend", "-comp", "zstd",
               "-quiet", "-no-progress")  # fmt: skip
            tmp.rename(self.image)

    def mount(self) -> Path:
        if not is_mounted(self.mountpoint):
            self.mountpoint.mkdir(exist_ok=True)
            sh("squashfuse", str(self.image), str(self.mountpoint))
            wait_mounted(self.mountpoint)
        return self.mountpoint


class Ratarmount(System):
    name = "ratarmount"

    @staticmethod
    def _command() -> str | None:
        here = Path(sys.executable).parent / "ratarmount"
        return str(here) if here.exists() else shutil.which("ratarmount")

    @classmethod
    def available(cls) -> bool:
        return cls._command() is not None

    def _args(self) -> list[str]:
        index = self.subject.work / "ratarmount-index"
        index.mkdir(exist_ok=True)
        cmd = self._command()
        assert cmd is not None
        return [cmd, "--index-folders", str(index),
                *(str(p) for p in self.subject.layer_blobs()), str(self.mountpoint)]  # fmt: skip

    def setup(self) -> None:
        self.mount()  # builds the indexes (slow the first time), kept for the timed mounts
        self.unmount()

    def mount(self) -> Path:
        if not is_mounted(self.mountpoint):
            self.mountpoint.mkdir(exist_ok=True)
            sh(*self._args())
            wait_mounted(self.mountpoint, timeout=1800)
        return self.mountpoint


# -- workloads -------------------------------------------------------------------------------


def read_sequential(root: Path, subject: Subject) -> None:
    with open(root / subject.big_file, "rb", buffering=0) as f:
        while f.read(MiB):
            pass


def read_random(root: Path, subject: Subject) -> None:
    fd = os.open(root / subject.big_file, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
        blocks = max(os.fstat(fd).st_size // 4096, 1)
        rng = random.Random(42)
        for _ in range(RANDOM_READS):
            os.pread(fd, 4096, rng.randrange(blocks) * 4096)
    finally:
        os.close(fd)


def cat_all(root: Path, subject: Subject) -> None:
    sh("bash", "-c", 'find "$1" -type f -print0 | xargs -0 -r cat > /dev/null', "bash", str(root))


def ls_all(root: Path, subject: Subject) -> None:
    sh("bash", "-c", 'ls -lR "$1" > /dev/null', "bash", str(root))


Workload = Callable[[Path, Subject], None]
WORKLOADS: list[tuple[str, Workload, bool]] = [  # name, function, cold
    ("seq read, cold", read_sequential, True),
    ("seq read, warm", read_sequential, False),
    ("4K random, cold", read_random, True),
    ("4K random, warm", read_random, False),
    ("find|xargs cat, cold", cat_all, True),
    ("find|xargs cat, warm", cat_all, False),
    ("ls -lR, cold", ls_all, True),
    ("ls -lR, warm", ls_all, False),
]


def time_mount(system: System, runs: int) -> float | None:
    if isinstance(system, Local):
        return None
    times = []
    for _ in range(runs):
        system.unmount()
        drop_caches()
        started = time.perf_counter()
        system.mount()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def time_workload(system: System, work: Workload, cold: bool, runs: int) -> float:
    times = []
    if not cold:
        work(system.mount(), system.subject)  # warm-up, untimed
    for _ in range(runs):
        if cold:
            system.unmount()
            drop_caches()
        root = system.mount()
        started = time.perf_counter()
        work(root, system.subject)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def bench(subject: Subject, systems: list[type[System]], runs: int) -> dict[str, dict[str, float]]:
    results: dict[str, dict[str, float]] = {}
    instances = [cls(subject) for cls in systems]
    try:
        for system in instances:
            print(f"  setting up {system.name} ...", file=sys.stderr)
            system.setup()
        for system in instances:
            mount_time = time_mount(system, runs)
            if mount_time is not None:
                results.setdefault("mount", {})[system.name] = mount_time
        for name, work, cold in WORKLOADS:
            for system in instances:
                print(f"  {name}: {system.name} ...", file=sys.stderr)
                results.setdefault(name, {})[system.name] = time_workload(system, work, cold, runs)
    finally:
        for system in instances:
            system.unmount()
    return results


def table(title: str, results: dict[str, dict[str, float]], systems: list[str]) -> str:
    header = ["", *systems]
    rows = [header]
    for workload, by_system in results.items():
        base = by_system.get("local")
        row = [workload]
        for s in systems:
            t = by_system.get(s)
            if t is None:
                row.append("-")
            elif base and s != "local":
                row.append(f"{t:.3f}s ({t / base:.2f}x)")
            else:
                row.append(f"{t:.3f}s")
        rows.append(row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = [title, ""]
    for r in rows:
        lines.append("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    return "\n".join(lines)


def parse_size(text: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    text = text.strip().upper()
    return int(float(text[:-1]) * units[text[-1]]) if text[-1] in units else int(text)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--images", default="debian,big")
    parser.add_argument("--big-size", type=parse_size, default=1 << 30)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--work", type=Path, default=cache_dir() / "bench-read")
    parser.add_argument("--systems", default=",".join(SYSTEMS))
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        parser.error("needs root (drop_caches, FUSE mounts)")
    classes = {"fusesnap": Fusesnap, "local": Local, "squashfuse": Squashfuse,
               "ratarmount": Ratarmount, "fusesnap-lru256M": FusesnapBigLru}  # fmt: skip
    chosen: list[type[System]] = []
    for name in args.systems.split(","):
        cls = classes[name]
        if cls.available():
            chosen.append(cls)
        else:
            print(f"{name}: not available here, left out", file=sys.stderr)
    names = {"debian": "debian", "big": "crafted-big"}
    args.work.mkdir(parents=True, exist_ok=True)
    reports = []
    with Registry(args.work / "registry") as registry:
        for short in args.images.split(","):
            subject = prepare(names[short], registry, args.work, big_size=args.big_size)
            size = (subject.rootfs / subject.big_file).stat().st_size
            results = bench(subject, chosen, args.runs)
            for workload, by_system in results.items():
                record("read", f"{short}: {workload}", **by_system)
            title = (f"{subject.name}: big file /{subject.big_file} ({size / MiB:.0f} MiB); "
                     f"median of {args.runs}; ratio to local disk")  # fmt: skip
            report = table(title, results, [c.name for c in chosen])
            print(report + "\n", flush=True)
            reports.append(report)
    print("\n\n".join(reports))


if __name__ == "__main__":
    main()
