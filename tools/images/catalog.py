"""Named test images, built (cached where expensive) and pushed in one call.

    pushed = build_and_push("busybox", registry, compression="zstd")
    pushed.ref               "127.0.0.1:PORT/fusesnap-test/busybox:zstd-oci"
    pushed.manifest_digest   what the registry serves for that tag
    pushed.layers            [(digest, size, media_type), ...] as pushed
    pushed.unpack(dest)      umoci's rootfs of the same image (ground truth)

Names: ``busybox``, ``busybox-multi`` (linux/amd64 + linux/arm64/v8 in one
index), ``busybox-pause`` (whose command sleeps for ever: a CRI sandbox
image), ``debian`` (slow the first time, then cached), the `CRAFTED` edge
cases (``crafted-whiteouts`` …), ``crafted-big`` (``big_size`` bytes) and the
`MALICIOUS` ones (``malicious-escape``, ``malicious-links``).

Compressions: ``gzip``, ``zstd``, ``none`` (written by `tools.images.layout`),
and ``zstd:chunked`` (a layout skopeo converts from the gzip one: a real
zstd:chunked producer, with the TOC annotations). ``docker_v2`` pushes a
Docker schema 2 manifest (skopeo ``--format v2s2``); Docker has no zstd, and
skopeo gzips ``none`` layers for it.

Layouts of cheap images are rebuilt once per process (milliseconds); those
of ``debian`` and ``crafted-big`` are cached on disk (`tools.images.cache`);
a push of a built layout keeps its digests (``--preserve-digests``).

Concurrency: safe across processes (file locks around cached builds); within
one process, call from one thread at a time.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, NamedTuple, Protocol

from tools.images.busybox import busybox_image, busybox_multi_images, busybox_pause_image
from tools.images.cache import cache_dir, locked
from tools.images.crafted import BIG_DEFAULT_SIZE, CRAFTED, MALICIOUS, big_image
from tools.images.debian import SPLIT_VERSION, debian_image
from tools.images.layout import INDEX, Compression, Image, write_layout
from tools.images.push import inspect_raw, manifest_digest, push_layout, skopeo
from tools.images.umoci import umoci_unpack

__all__ = [
    "COMPRESSIONS",
    "NAMES",
    "LayerInfo",
    "PushedImage",
    "build_and_push",
    "build_layout",
]

CatalogCompression = Literal["gzip", "zstd", "none", "zstd:chunked"]
CHUNKED = "zstd:chunked"
COMPRESSIONS: tuple[CatalogCompression, ...] = ("gzip", "zstd", "none", "zstd:chunked")
LAYOUT_TAG = "latest"
# Bump when an on-disk cached image would change (layout.py, crafted.big_image).
LAYOUT_CACHE_VERSION = 1

_CHEAP: dict[str, Callable[[], Image | list[Image]]] = {
    "busybox": busybox_image,
    "busybox-multi": busybox_multi_images,
    "busybox-pause": busybox_pause_image,
    **CRAFTED,
    **MALICIOUS,
}
NAMES: tuple[str, ...] = (*_CHEAP, "debian", "crafted-big")


class HasHost(Protocol):
    @property
    def host(self) -> str: ...


class LayerInfo(NamedTuple):
    digest: str
    size: int
    media_type: str


@dataclass(frozen=True, slots=True)
class PushedImage:
    """An image in a registry, and the layout it was pushed from."""

    ref: str  # HOST/REPO:TAG
    manifest_digest: str  # of the manifest, or of the index for a multi-platform image
    media_type: str
    layers: list[LayerInfo]  # empty for a multi-platform index
    layout_dir: Path
    layout_tag: str
    manifests: list[tuple[str, str]] = field(default_factory=list)  # index: (platform, digest)
    # What `unpack` reads: layout_dir, except for zstd:chunked: the gzip layout it came from.
    truth_layout_dir: Path | None = None

    @property
    def host(self) -> str:
        return self.ref.split("/", 1)[0]

    @property
    def repo(self) -> str:
        return self.ref.split("/", 1)[1].rsplit(":", 1)[0]

    @property
    def tag(self) -> str:
        return self.ref.rsplit(":", 1)[1]

    @property
    def digest_ref(self) -> str:
        """``HOST/REPO@sha256:…``"""
        return f"{self.host}/{self.repo}@{self.manifest_digest}"

    def unpack(self, dest: str | os.PathLike[str], *, platform: str | None = None) -> Path:
        """umoci's rootfs of this image (``platform`` such as ``linux/arm64/v8`` for a
        multi-platform one); see `tools.images.umoci.umoci_unpack`."""
        tag = self.layout_tag
        if platform is not None:
            tag = f"{tag}-{platform.replace('/', '-')}"
        return umoci_unpack(self.truth_layout_dir or self.layout_dir, tag, dest)


_memo: dict[tuple[str, str], Path] = {}
_memo_lock = threading.Lock()
_session_dir: Path | None = None


def _process_dir() -> Path:
    """Where this process keeps the layouts of cheap images; removed when it exits."""
    global _session_dir
    if _session_dir is None:
        _session_dir = Path(tempfile.mkdtemp(prefix="fusesnap-images-"))
        atexit.register(shutil.rmtree, _session_dir, ignore_errors=True)
    return _session_dir


def build_layout(
    name: str,
    *,
    compression: CatalogCompression = "gzip",
    big_size: int = BIG_DEFAULT_SIZE,
) -> Path:
    """An OCI layout holding image ``name`` under the tag ``latest``; built once per
    process, or once per machine for the expensive images."""
    if compression not in COMPRESSIONS:
        raise ValueError(f"compression {compression!r}: expected one of {COMPRESSIONS}")
    if compression == "zstd:chunked":
        return _chunked_layout(name, big_size=big_size)
    if name in _CHEAP:
        key = (name, compression)
        with _memo_lock:
            if key not in _memo:
                target = _process_dir() / f"{name}-{compression}"
                write_layout(target, {LAYOUT_TAG: _compress(_CHEAP[name](), compression)})
                _memo[key] = target
            return _memo[key]
    if name == "debian":
        entry = f"debian-s{SPLIT_VERSION}-{compression}"
        return _cached_layout(
            entry,
            lambda tmp: write_layout(tmp, {LAYOUT_TAG: _compress(debian_image(), compression)}),
        )
    if name == "crafted-big":
        work = cache_dir() / "work"
        return _cached_layout(
            f"big-{big_size}-{compression}",
            lambda tmp: write_layout(
                tmp, {LAYOUT_TAG: _compress(big_image(big_size, workdir=work), compression)}
            ),
        )
    raise KeyError(f"unknown test image {name!r}; known: {', '.join(NAMES)}")


def _chunked_layout(name: str, *, big_size: int) -> Path:
    source = build_layout(name, compression="gzip", big_size=big_size)

    def convert(tmp: Path) -> None:
        skopeo(
            [
                "copy",
                "--quiet",
                "--all",
                "--dest-compress",
                f"--dest-compress-format={CHUNKED}",
                f"oci:{source}:{LAYOUT_TAG}",
                f"oci:{tmp}:{LAYOUT_TAG}",
            ]
        )

    if name in _CHEAP:
        key = (name, CHUNKED)
        with _memo_lock:
            if key not in _memo:
                target = _process_dir() / f"{name}-zstd-chunked"
                convert(target)
                _memo[key] = target
            return _memo[key]
    return _cached_layout(f"{source.name}-to-zstd-chunked", convert)


def _compress(spec: Image | Sequence[Image], compression: Compression) -> Image | list[Image]:
    if isinstance(spec, Image):
        return spec.with_compression(compression)
    return [one.with_compression(compression) for one in spec]


def _cached_layout(entry: str, make: Callable[[Path], object]) -> Path:
    """``cache/layouts-vN/ENTRY``, made by ``make(tmp_dir)`` under a lock if missing."""
    root = cache_dir() / f"layouts-v{LAYOUT_CACHE_VERSION}"
    target = root / entry
    if (target / "index.json").exists():
        return target
    with locked(root / f"{entry}.lock"):
        if (target / "index.json").exists():
            return target
        tmp = root / f"{entry}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        make(tmp)
        tmp.rename(target)
    return target


def build_and_push(
    name: str,
    registry: HasHost | str,
    *,
    compression: CatalogCompression = "gzip",
    docker_v2: bool = False,
    repo: str | None = None,
    tag: str | None = None,
    creds: str | tuple[str, str] | None = None,
    big_size: int = BIG_DEFAULT_SIZE,
) -> PushedImage:
    """Build image ``name`` and push it to ``registry`` (a `Registry`, `FaultProxy` or
    ``host:port``).

    ``repo`` defaults to ``fusesnap-test/NAME`` (``fusesnap-test/NAME-zstd-chunked`` for
    zstd:chunked) and ``tag`` to ``COMPRESSION-oci`` or ``COMPRESSION-v2s2`` (zstd:chunked
    spelled ``zstd-chunked``), so the variants of one image live side by side.
    """
    if compression not in COMPRESSIONS:
        raise ValueError(f"compression {compression!r}: expected one of {COMPRESSIONS}")
    if docker_v2 and compression.startswith("zstd"):
        raise ValueError("Docker schema 2 manifests cannot carry zstd layers")
    host = registry if isinstance(registry, str) else registry.host
    repo = repo or f"fusesnap-test/{name}"
    tag = tag or f"{compression.replace(':', '-')}-{'v2s2' if docker_v2 else 'oci'}"
    layout = build_layout(name, compression=compression, big_size=big_size)
    digest = push_layout(
        layout,
        LAYOUT_TAG,
        host,
        repo,
        dest_tag=tag,
        docker_v2=docker_v2,
        all_platforms=name == "busybox-multi",
        creds=creds,
    )
    ref = f"{host}/{repo}:{tag}"
    raw = inspect_raw(f"{host}/{repo}@{digest}", creds=creds)
    if manifest_digest(raw) != digest:
        raise RuntimeError(f"{ref}: registry serves {manifest_digest(raw)}, skopeo pushed {digest}")
    doc = json.loads(raw)
    media_type = str(doc.get("mediaType", ""))
    layers = [
        LayerInfo(str(d["digest"]), int(d["size"]), str(d["mediaType"]))
        for d in doc.get("layers", [])
    ]
    manifests = []
    if media_type == INDEX or "manifests" in doc:
        for d in doc["manifests"]:
            p = d.get("platform", {})
            platform = "/".join(
                x for x in (p.get("os"), p.get("architecture"), p.get("variant")) if x
            )
            manifests.append((platform, str(d["digest"])))
    truth = (
        build_layout(name, compression="gzip", big_size=big_size)
        if (compression == CHUNKED)
        else None
    )
    return PushedImage(ref, digest, media_type, layers, layout, LAYOUT_TAG, manifests, truth)
