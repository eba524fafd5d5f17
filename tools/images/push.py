"""Push OCI layouts to a registry with ``skopeo copy`` (plain HTTP on loopback).

skopeo is a real, independent producer: whatever it uploads is what
``podman push`` / ``buildah push`` would upload, including its conversions
(``--format v2s2`` Docker manifests, ``--dest-compress-format zstd:chunked``).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

from tools.images.layout import Compression, Image, Layer, write_layout

__all__ = ["SkopeoError", "inspect_raw", "push_layout", "push_tar_layers", "skopeo"]

DEFAULT_TIMEOUT = 900.0


class SkopeoError(RuntimeError):
    """skopeo failed; the message carries its command line and stderr."""


# skopeo remembers, machine-wide, which compressed blobs hold which uncompressed
# content and where it pushed them (/var/lib/containers/cache for root), and then
# "reuses" a blob of another compression or repository when it may change the
# manifest (--format v2s2, --dest-compress-format). What a push produces would
# depend on earlier pushes, so each skopeo runs with an empty, private cache.
_SYSTEM_CACHE = Path("/var/lib/containers/cache")
_HERMETIC = (
    'mount -t tmpfs -o mode=0700 fusesnap-skopeo-cache "$0" 2>/dev/null'
    ' || { echo "skopeo-cache-unavailable" >&2; exit 97; }; exec skopeo "$@"'
)
_hermetic_ok: bool | None = None


def _hermetic_command(args: Sequence[str], env: dict[str, str], tmp: str) -> list[str]:
    global _hermetic_ok
    if os.geteuid() != 0:
        env["XDG_DATA_HOME"] = tmp  # an unprivileged skopeo keeps its cache there
        return ["skopeo", *args]
    if _hermetic_ok is None:
        _SYSTEM_CACHE.mkdir(parents=True, exist_ok=True)
        probe = subprocess.run(
            ["unshare", "--mount", "--", "sh", "-c", _HERMETIC, str(_SYSTEM_CACHE), "--version"],
            capture_output=True,
            check=False,
        )
        _hermetic_ok = probe.returncode == 0
    if not _hermetic_ok:
        return ["skopeo", *args]
    return ["unshare", "--mount", "--", "sh", "-c", _HERMETIC, str(_SYSTEM_CACHE), *args]


def skopeo(args: Sequence[str], *, timeout: float = DEFAULT_TIMEOUT) -> str:
    """Run ``skopeo ARGS`` with a private blob-info cache; return stdout.

    Raises `SkopeoError` (with stderr) on failure.
    """
    env = dict(os.environ)
    with tempfile.TemporaryDirectory(prefix="fusesnap-skopeo-") as tmp:
        cmd = _hermetic_command(args, env, tmp)
        try:
            proc = subprocess.run(
                cmd, capture_output=True, text=True, timeout=timeout, check=False, env=env
            )
        except subprocess.TimeoutExpired as exc:
            raise SkopeoError(f"{_shown(args)}: timed out after {timeout}s") from exc
    if proc.returncode != 0:
        raise SkopeoError(f"{_shown(args)}: exit {proc.returncode}: {proc.stderr.strip()}")
    return proc.stdout


def _shown(args: Sequence[str]) -> str:
    """The command line for messages, with credentials masked."""
    masked = [a.split("=", 1)[0] + "=***" if "creds=" in a else a for a in args]
    return " ".join(["skopeo", *masked])


def _creds_args(flag: str, creds: str | tuple[str, str] | None) -> list[str]:
    if creds is None:
        return []
    text = creds if isinstance(creds, str) else f"{creds[0]}:{creds[1]}"
    return [f"--{flag}={text}"]


def inspect_raw(ref: str, *, creds: str | tuple[str, str] | None = None) -> bytes:
    """The manifest (or index) bytes the registry serves for ``HOST/REPO:TAG|@DIGEST``."""
    out = skopeo(
        ["inspect", "--raw", "--tls-verify=false", *_creds_args("creds", creds), f"docker://{ref}"]
    )
    return out.encode()


def push_layout(
    layout_dir: str | os.PathLike[str],
    tag: str,
    registry_host: str,
    repo: str,
    *,
    dest_tag: str | None = None,
    docker_v2: bool = False,
    all_platforms: bool = False,
    creds: str | tuple[str, str] | None = None,
    dest_compression: str | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> str:
    """Copy ``oci:LAYOUT:TAG`` to ``docker://HOST/REPO:DEST_TAG``; return the manifest digest.

    Arguments:
        docker_v2: convert to a Docker schema 2 manifest (``--format v2s2``);
            zstd layers cannot be expressed there and make skopeo fail.
        all_platforms: copy every manifest of a multi-platform index (``--all``);
            the digest returned is then the index's.
        creds: ``"user:password"`` or a pair, for a registry with auth.
        dest_compression: let skopeo recompress layers (``gzip``, ``zstd``,
            ``zstd:chunked``); None keeps the layout's blobs and digests as they are.
    """
    args = ["copy", "--quiet", "--dest-tls-verify=false", *_creds_args("dest-creds", creds)]
    if docker_v2:
        args.append("--format=v2s2")
    if all_platforms:
        args.append("--all")
    if dest_compression is not None:
        args += ["--dest-compress", f"--dest-compress-format={dest_compression}"]
    elif not docker_v2:
        # Otherwise skopeo would gzip uncompressed layers on the way to a registry.
        args.append("--preserve-digests")
    with tempfile.TemporaryDirectory(prefix="fusesnap-push-") as tmp:
        digestfile = Path(tmp) / "digest"
        args += [
            f"--digestfile={digestfile}",
            f"oci:{os.fspath(layout_dir)}:{tag}",
            f"docker://{registry_host}/{repo}:{dest_tag or tag}",
        ]
        skopeo(args, timeout=timeout)
        digest = digestfile.read_text().strip()
    if not digest.startswith("sha256:"):
        raise SkopeoError(f"skopeo wrote an unexpected digest {digest!r}")
    return digest


def manifest_digest(raw: bytes) -> str:
    return f"sha256:{hashlib.sha256(raw).hexdigest()}"


def push_tar_layers(
    tars: Sequence[bytes | Path],
    registry_host: str,
    repo: str,
    tag: str = "latest",
    *,
    compression: Compression = "gzip",
    layout_dir: str | os.PathLike[str] | None = None,
    docker_v2: bool = False,
    creds: str | tuple[str, str] | None = None,
) -> str:
    """Write ``tars`` (bottom layer first) as a one-platform image and push it; return the
    manifest digest. The layout goes to ``layout_dir``, or a temporary directory."""
    image = Image([Layer(t, compression, f"layer {i}") for i, t in enumerate(tars)])
    with tempfile.TemporaryDirectory(prefix="fusesnap-layout-") as tmp:
        target = Path(layout_dir) if layout_dir is not None else Path(tmp)
        write_layout(target, {tag: image})
        return push_layout(target, tag, registry_host, repo, docker_v2=docker_v2, creds=creds)
