"""Builders shared by the store tests."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

from fusesnap.digest import Digest
from fusesnap.oci import OCI_CONFIG, OCI_INDEX, OCI_LAYER_GZIP, OCI_MANIFEST
from fusesnap.store import ContentInfo, ImageRecord, Store

MiB = 1024 * 1024
REPO = Path(__file__).resolve().parents[2]


def blob(size: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(size)


def put(store: Store, data: bytes, media_type: str = "application/octet-stream") -> ContentInfo:
    return store.content.put(data, digest=Digest.of(data), media_type=media_type)


def put_manifest(store: Store, config: bytes, layers: list[bytes], **extra: object) -> Digest:
    """Store config, layers and a manifest naming them; return the manifest digest."""
    put(store, config, OCI_CONFIG)
    for layer in layers:
        put(store, layer, OCI_LAYER_GZIP)
    doc = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": Digest.of(config), "size": len(config)},
        "layers": [
            {"mediaType": OCI_LAYER_GZIP, "digest": Digest.of(x), "size": len(x)} for x in layers
        ],
        **extra,
    }
    data = json.dumps(doc).encode()
    return put(store, data, OCI_MANIFEST).digest


def put_index(store: Store, manifests: list[Digest]) -> Digest:
    doc = {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [
            {
                "mediaType": OCI_MANIFEST,
                "digest": d,
                "size": store.content.info(d).size if store.content.exists(d) else 1,
                "platform": {"os": "linux", "architecture": "amd64"},
            }
            for d in manifests
        ],
    }
    return put(store, json.dumps(doc).encode(), OCI_INDEX).digest


def image(name: str, target: Digest, manifest: Digest | None = None) -> ImageRecord:
    return ImageRecord(
        name=name,
        target_digest=target,
        target_media_type=OCI_MANIFEST,
        target_size=1,
        manifest_digest=manifest or target,
        platform="linux/amd64",
    )


def run_python(code: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
