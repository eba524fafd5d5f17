"""Push hand-made (possibly broken) images with plain HTTP calls, so a test controls every byte
of every blob: truncated gzip streams, garbage tars, lying diff_ids."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import httpx

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"


@dataclass(frozen=True)
class RawLayer:
    blob: bytes
    media_type: str
    diff_id: str  # what the config claims
    annotations: tuple[tuple[str, str], ...] = ()  # the descriptor's


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def push_blob(client: httpx.Client, base: str, repo: str, data: bytes) -> str:
    digest = _digest(data)
    start = client.post(f"{base}/v2/{repo}/blobs/uploads/")
    start.raise_for_status()
    location = httpx.URL(base).join(start.headers["location"])
    # The upload URL carries its own state in its query string: add to it, don't replace it.
    done = client.put(
        location.copy_merge_params({"digest": digest}),
        content=data,
        headers={"Content-Type": "application/octet-stream"},
    )
    done.raise_for_status()
    return digest


def push_raw_image(host: str, repo: str, tag: str, layers: list[RawLayer]) -> str:
    """Push ``layers`` with a matching config and manifest; return ``host/repo:tag``."""
    base = f"http://{host}"
    config = json.dumps({
        "architecture": "amd64", "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [layer.diff_id for layer in layers]},
        "config": {},
    }).encode()  # fmt: skip
    with httpx.Client(timeout=30) as client:
        descs = [
            {"mediaType": layer.media_type, "digest": push_blob(client, base, repo, layer.blob),
             "size": len(layer.blob),
             **({"annotations": dict(layer.annotations)} if layer.annotations else {})}
            for layer in layers
        ]  # fmt: skip
        manifest = json.dumps({
            "schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": push_blob(client, base, repo, config),
                       "size": len(config)},
            "layers": descs,
        }).encode()  # fmt: skip
        r = client.put(
            f"{base}/v2/{repo}/manifests/{tag}",
            content=manifest,
            headers={"Content-Type": OCI_MANIFEST},
        )
        r.raise_for_status()
    return f"{host}/{repo}:{tag}"
