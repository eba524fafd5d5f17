"""eStargz test images, written by the real producer: ``ctr-remote image convert --estargz``.

Debian's ``stargz-snapshotter`` package ships ``ctr-remote``; it converts
images held by a containerd. `tools.containerd.PrivateContainerd` runs one
for the duration of a conversion, as root, on a socket, root and state
directory of its own (nothing of a system containerd is touched, no CRI, the
``native`` snapshotter: no mounts are left behind)::

    gzip = build_and_push("busybox", registry)                 # tools.images.catalog
    esgz = build_and_push_estargz("busybox", registry, chunk_size=64 << 10,
                                  prioritized=["etc/passwd"])
    esgz.ref              HOST/fusesnap-test/busybox:estargz-oci[-c65536][-p<hash>]
                          (zstdchunked=True: ctr-remote's zstd:chunked, zstd-chunked-ctr-oci…)
    esgz.unpack(dest)     umoci's rootfs of the *gzip* image it came from (ground truth)

The conversion pulls the gzip image from the registry (``--plain-http``),
converts it (``--oci``: OCI media types; ``--estargz-chunk-size``; a record
file of ``prioritized`` paths puts those files first, then a
``.prefetch.landmark``; without one ctr-remote writes a
``.no.prefetch.landmark``), and pushes the result next to the source. What
ctr-remote writes (v0.12): 51-byte eStargz footers and the layer annotations
``containerd.io/snapshot/stargz/toc.digest`` and
``io.containers.estargz.uncompressed-size``.

Concurrency: one conversion at a time per process (results are memoized per
registry, image and options); containerd is stopped, by its pid, before
`convert_to_estargz` returns.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path

from tools.containerd import ContainerdError, PrivateContainerd
from tools.images.catalog import HasHost, LayerInfo, PushedImage, build_and_push
from tools.images.push import inspect_raw, manifest_digest

__all__ = [
    "ConvertError",
    "build_and_push_estargz",
    "convert_to_estargz",
]

_TIMEOUT = 300.0


class ConvertError(RuntimeError):
    """containerd or ctr-remote failed; the message carries the command and its output."""


def convert_to_estargz(
    src_ref: str,
    dst_ref: str,
    *,
    chunk_size: int = 0,
    prioritized: Sequence[str] = (),
    zstdchunked: bool = False,
) -> str:
    """Convert the gzip image ``src_ref`` (``HOST/REPO:TAG`` on a plain-HTTP registry) to
    eStargz and push it as ``dst_ref``; return the digest of the manifest pushed.

    ``chunk_size`` 0 is ctr-remote's default (4 MiB); ``prioritized`` paths
    (relative to the root) go first, followed by a ``.prefetch.landmark``.
    ``zstdchunked`` writes ctr-remote's zstd:chunked instead (``--zstdchunked``:
    eStargz's TOC and layout in zstd frames, with containers/storage's annotations).
    """
    with (
        tempfile.TemporaryDirectory(prefix="fusesnap-ctr-") as tmp,
        PrivateContainerd(tmp, log_level="info") as ctrd,
    ):
        try:
            ctrd.ctr_remote("image", "pull", "--plain-http", "--snapshotter", "native", src_ref)
            args = ["image", "convert", "--oci", "--zstdchunked" if zstdchunked else "--estargz"]
            if chunk_size:
                args += ["--estargz-chunk-size", str(chunk_size)]
            if prioritized:
                record = Path(tmp) / "record.json"
                record.write_text("".join(json.dumps({"path": p}) + "\n" for p in prioritized))
                args += ["--estargz-record-in", str(record)]
            ctrd.ctr_remote(*args, src_ref, dst_ref, timeout=_TIMEOUT)
            ctrd.ctr_remote("image", "push", "--plain-http", dst_ref, timeout=_TIMEOUT)
        except ContainerdError as exc:
            raise ConvertError(str(exc)) from exc
    return manifest_digest(inspect_raw(dst_ref))


_memo: dict[tuple[str, str, int, tuple[str, ...], bool], PushedImage] = {}
_memo_lock = threading.Lock()


def build_and_push_estargz(
    name: str,
    registry: HasHost | str,
    *,
    chunk_size: int = 0,
    prioritized: Sequence[str] = (),
    zstdchunked: bool = False,
) -> PushedImage:
    """The catalog image ``name`` as eStargz in ``registry`` (its gzip form is pushed first,
    `tools.images.catalog.build_and_push`); converted once per process and options.
    ``zstdchunked``: ctr-remote's zstd:chunked instead (see `convert_to_estargz`).

    The result's ``unpack`` gives umoci's rootfs of the gzip image: the truth
    the eStargz one must match (minus the landmark files).
    """
    host = registry if isinstance(registry, str) else registry.host
    key = (host, name, chunk_size, tuple(prioritized), zstdchunked)
    with _memo_lock:
        if key in _memo:
            return _memo[key]
        src = build_and_push(name, registry)
        tag = "zstd-chunked-ctr-oci" if zstdchunked else "estargz-oci"
        if chunk_size:
            tag += f"-c{chunk_size}"
        if prioritized:
            tag += "-p" + hashlib.sha256("\n".join(prioritized).encode()).hexdigest()[:12]
        dst = f"{host}/{src.repo}:{tag}"
        digest = convert_to_estargz(src.ref, dst, chunk_size=chunk_size, prioritized=prioritized,
                                    zstdchunked=zstdchunked)  # fmt: skip
        doc = json.loads(inspect_raw(f"{host}/{src.repo}@{digest}"))
        layers = [LayerInfo(str(d["digest"]), int(d["size"]), str(d["mediaType"]))
                  for d in doc.get("layers", [])]  # fmt: skip
        pushed = PushedImage(
            dst,
            digest,
            str(doc.get("mediaType", "")),
            layers,
            src.layout_dir,
            src.layout_tag,
            [],
            src.truth_layout_dir or src.layout_dir,
        )
        _memo[key] = pushed
        return pushed


if __name__ == "__main__":  # python -m tools.images.estargz HOST [NAME ...]
    import sys

    for image in sys.argv[2:] or ["busybox"]:
        print(build_and_push_estargz(image, sys.argv[1]).ref)
