"""A real Debian 12 image: ``debootstrap --variant=minbase --include=python3 bookworm``.

Two layers, as a Dockerfile ``FROM scratch; ADD base; RUN apt-get install python3
&& apt-get clean && rm -rf /var/lib/apt/lists`` would leave them:

- layer 0, base: the whole rootfs except what the python3 packages own (their
  ``.list`` files in /var/lib/dpkg/info, and everything under /usr/lib/python3*),
  without the downloaded .debs except python's (left for layer 1 to delete) and
  without /dev's nodes (runtimes create those);
- layer 1, python: those files, plus whiteouts of the python .debs in
  /var/cache/apt/archives and an opaque /var/lib/apt/lists holding only an
  empty ``partial/``.

Tarballs are PAX with numeric owners, exact modes (setuid ``su``, ``passwd``…),
hardlinks (``perl``/``perl5.36.0``, ``gunzip``/``uncompress``) and xattrs if any.

Cache (`tools.images.cache.cache_dir`)::

    debian-bookworm/lock
    debian-bookworm/rootfs/          debootstrap's output; rootfs.done marks it complete
    debian-bookworm/split-vN/        layer0-base.tar, layer1-python.tar

debootstrap takes a minute or two with a nearby mirror; afterwards building
is a matter of seconds. The mirror is the first Debian URI in apt's sources.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import tarfile
from collections.abc import Iterable
from pathlib import Path

from tools.images.cache import cache_dir, locked
from tools.images.layout import Image, Layer
from tools.images.tarutil import (
    FIXED_MTIME,
    OPAQUE_MARKER,
    WHITEOUT_PREFIX,
    tar_tree,
    walk_sorted,
)

__all__ = [
    "DEFAULT_MIRROR",
    "SUITE",
    "debian_image",
    "debian_layer_tars",
    "debian_mirror",
    "debian_rootfs",
]

SUITE = "bookworm"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
SPLIT_VERSION = 2  # bump when the split below changes, so cached tarballs are rebuilt
DEBOOTSTRAP_TIMEOUT = 3600

_PYTHON_PACKAGES = re.compile(r"^(lib)?python3[^/]*$")
# Also what the packages' maintainer scripts create (byte code, config), not in .list files.
_PYTHON_PREFIXES = (
    "usr/lib/python3/",
    "usr/lib/python3.",
    "usr/share/python3/",
    "usr/local/lib/python3.",
    "etc/python3/",
    "etc/python3.",
    "var/lib/python/",
)
APT_ARCHIVES = "var/cache/apt/archives"
APT_LISTS = "var/lib/apt/lists"


def debian_mirror(sources_dir: Path = Path("/etc/apt")) -> str:
    """The first plain Debian archive URI in apt's sources (deb822 or one-line style)."""
    texts = []
    for path in sorted((sources_dir / "sources.list.d").glob("*.sources")):
        texts += re.findall(r"^URIs:\s*(.+)$", path.read_text(errors="replace"), re.M)
    for path in [
        sources_dir / "sources.list",
        *sorted((sources_dir / "sources.list.d").glob("*.list")),
    ]:
        if path.exists():
            texts += re.findall(r"^\s*deb\s+(?:\[[^]]*\]\s+)?(\S+)", path.read_text(), re.M)
    for uris in texts:
        for uri in uris.split():
            if uri.rstrip("/").endswith("/debian"):
                return uri.rstrip("/")
    return DEFAULT_MIRROR


def _base(cache: Path | None) -> Path:
    return (cache or cache_dir()) / f"debian-{SUITE}"


def debian_rootfs(*, cache: Path | None = None, mirror: str | None = None) -> Path:
    """The debootstrapped root filesystem, built once and cached (takes the build lock)."""
    base = _base(cache)
    rootfs, done = base / "rootfs", base / "rootfs.done"
    if done.exists():
        return rootfs
    with locked(base / "lock"):
        if done.exists():
            return rootfs
        tmp = base / "rootfs.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(rootfs, ignore_errors=True)
        mirror = mirror or debian_mirror()
        cmd = ["debootstrap", "--variant=minbase", "--include=python3", SUITE, str(tmp), mirror]
        proc = subprocess.run(
            cmd, capture_output=True, text=True, timeout=DEBOOTSTRAP_TIMEOUT, check=False
        )
        if proc.returncode != 0:
            log = tmp / "debootstrap/debootstrap.log"
            detail = log.read_text(errors="replace")[-3000:] if log.exists() else proc.stdout
            raise RuntimeError(
                f"{' '.join(cmd)}: exit {proc.returncode}\n{detail}\n{proc.stderr[-2000:]}"
            )
        tmp.rename(rootfs)
        done.write_text(f"{mirror}\n")
    return rootfs


def _canonical(root: Path, listed: str) -> str | None:
    """A path from a dpkg .list file, relative to ``root``, with /bin etc. (symlinks to
    /usr/… on merged-/usr systems) resolved; None if it does not exist."""
    rel = listed.strip().lstrip("/")
    if not rel:
        return None
    parent, _, name = rel.rpartition("/")
    real_parent = Path(os.path.realpath(root / parent)) if parent else root.resolve()
    try:
        rel_parent = real_parent.relative_to(root.resolve())
    except ValueError:
        return None
    out = str(rel_parent / name) if str(rel_parent) != "." else name
    return out if os.path.lexists(root / out) else None


def _split(root: Path) -> tuple[list[str], list[str | tarfile.TarInfo]]:
    """Entries of layer 0 and of layer 1 (paths, and synthetic whiteout entries)."""
    info_dir = root / "var/lib/dpkg/info"
    packages = sorted(
        {
            _package_of(p.name)
            for p in info_dir.glob("*.list")
            if _PYTHON_PACKAGES.match(_package_of(p.name))
        }
    )
    python: set[str] = set()
    for path in info_dir.iterdir():
        if _package_of(path.name) in packages:
            python.add(str(path.relative_to(root)))
            if path.suffix != ".list":
                continue
            for line in path.read_text().splitlines():
                rel = _canonical(root, line)
                if rel is not None and not stat.S_ISDIR((root / rel).lstat().st_mode):
                    python.add(rel)

    all_paths = walk_sorted(root)
    python_debs = {
        p
        for p in all_paths
        if p.startswith(f"{APT_ARCHIVES}/")
        and p.endswith(".deb")
        and _PYTHON_PACKAGES.match(p.rsplit("/", 1)[1].split("_")[0])
    }

    def excluded(p: str) -> bool:
        if p.startswith("dev/"):
            return True
        return p.startswith(f"{APT_ARCHIVES}/") and p.endswith(".deb") and p not in python_debs

    kept = [p for p in all_paths if not excluded(p)]
    upper = {p for p in kept if p in python or p.startswith(_PYTHON_PREFIXES)}

    # A directory goes up too when everything under it does (it exists for python only).
    def ancestors(p: str) -> list[str]:
        parts = p.split("/")
        return ["/".join(parts[:i]) for i in range(1, len(parts))]

    lower_parents = {a for p in kept if p not in upper for a in ancestors(p)}
    upper_parents = {a for p in upper for a in ancestors(p)}
    upper |= {p for p in upper_parents - lower_parents if stat.S_ISDIR((root / p).lstat().st_mode)}
    lower = [p for p in kept if p not in upper]

    # Layer 1 also carries the parents of its files (their metadata as in layer 0),
    # the deletions of the python .debs and the emptied apt lists.
    upper |= {APT_ARCHIVES, APT_LISTS, f"{APT_LISTS}/partial"}
    upper |= {a for p in upper for a in ancestors(p)}
    synthetic = {f"{APT_LISTS}/{OPAQUE_MARKER}": _whiteout(f"{APT_LISTS}/{OPAQUE_MARKER}")}
    for deb in python_debs:
        name = f"{APT_ARCHIVES}/{WHITEOUT_PREFIX}{deb.rsplit('/', 1)[1]}"
        synthetic[name] = _whiteout(name)

    def key(p: str) -> list[str]:
        # Whiteouts before their siblings, as the image spec asks of producers.
        return ["\0" + c if c.startswith(WHITEOUT_PREFIX) else c for c in p.split("/")]

    names = sorted([*upper, *synthetic], key=key)
    return lower, [synthetic.get(n, n) for n in names]


def _package_of(info_file: str) -> str:
    """``python3.11-minimal`` from ``python3.11-minimal.list`` or ``…:amd64.md5sums``."""
    return info_file.rsplit(".", 1)[0].split(":")[0]


def _whiteout(name: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.mode = 0
    info.mtime = FIXED_MTIME
    return info


def debian_layer_tars(*, cache: Path | None = None) -> tuple[Path, Path]:
    """The two layer tarballs (base, python), built once from `debian_rootfs` and cached."""
    root = debian_rootfs(cache=cache)
    split = _base(cache) / f"split-v{SPLIT_VERSION}"
    tars = (split / "layer0-base.tar", split / "layer1-python.tar")
    if all(t.exists() for t in tars):
        return tars
    with locked(_base(cache) / "lock"):
        if all(t.exists() for t in tars):
            return tars
        split.mkdir(parents=True, exist_ok=True)
        lower, upper = _split(root)
        layers: list[tuple[Path, Iterable[str | tarfile.TarInfo]]] = [
            (tars[0], lower),
            (tars[1], upper),
        ]
        for path, entries in layers:
            tmp = path.with_suffix(".tmp")
            with open(tmp, "wb") as out:
                tar_tree(root, entries, out)
            tmp.rename(path)
    return tars


def debian_image(*, cache: Path | None = None) -> Image:
    """The two-layer Debian 12 image (uncompressed tarballs; pick a compression on write)."""
    base, python = debian_layer_tars(cache=cache)
    return Image(
        [
            Layer(base, created_by=f"debootstrap --variant=minbase {SUITE} (without python3)"),
            Layer(
                python,
                created_by="apt-get install python3 && apt-get clean"
                " && rm -rf /var/lib/apt/lists/*",
            ),
        ],
        cmd=("/bin/bash",),
        env=("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG=C.UTF-8"),
        labels={"org.fusesnap.test": "debian"},
    )
