"""Ground truth: what an image's root filesystem is, according to ``umoci unpack``.

umoci is an independent implementation of the OCI layer rules (whiteouts,
opaque directories, hardlinks, xattrs), so tests compare fusesnap's tree
with the directory it writes. umoci 0.4.7 cannot read zstd layers; for those
``skopeo`` first rewrites the layout with gzip layers (same tar content, same
diff IDs), which keeps the judge independent of fusesnap.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path

from tools.images.layout import INDEX, read_json_blob, resolve_tag
from tools.images.push import skopeo

__all__ = ["UmociError", "umoci_unpack"]


class UmociError(RuntimeError):
    """umoci failed; the message carries its stderr."""


def _has_zstd_layers(layout_dir: Path, manifest_digest: str) -> bool:
    manifest = read_json_blob(layout_dir, manifest_digest)
    layers = manifest.get("layers", [])
    assert isinstance(layers, list)
    return any("zstd" in str(layer.get("mediaType", "")) for layer in layers)


def umoci_unpack(
    layout_dir: str | os.PathLike[str], tag: str, dest: str | os.PathLike[str]
) -> Path:
    """Unpack ``oci:LAYOUT:TAG`` into ``dest`` (which must not exist); return ``dest/rootfs``.

    ``tag`` must name one manifest; for a multi-platform tag use its
    per-platform tag (``TAG-linux-arm64-v8``). Runs as the current user
    (root: owners, devices and ``security.*`` xattrs are restored).
    """
    layout = Path(layout_dir)
    dest = Path(dest)
    descriptor = resolve_tag(layout, tag)
    if descriptor.media_type == INDEX:
        raise UmociError(
            f"{layout}:{tag} is a multi-platform index; unpack one of its per-platform tags"
        )
    with tempfile.TemporaryDirectory(prefix="fusesnap-umoci-") as tmp:
        if _has_zstd_layers(layout, descriptor.digest):
            converted = Path(tmp) / "gzip-layout"
            skopeo(
                [
                    "copy",
                    "--quiet",
                    "--dest-compress",
                    "--dest-compress-format=gzip",
                    f"oci:{layout}:{tag}",
                    f"oci:{converted}:{tag}",
                ]
            )
            layout = converted
        cmd = ["umoci", "unpack"]
        if os.geteuid() != 0:
            cmd.append("--rootless")
        cmd += ["--image", f"{layout}:{tag}", str(dest)]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise UmociError(f"{' '.join(cmd)}: exit {proc.returncode}: {proc.stderr.strip()}")
    return dest / "rootfs"
