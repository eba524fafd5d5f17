"""Builders shared by the store tests."""

from __future__ import annotations

import hashlib
import json
import random
import subprocess
import sys
from pathlib import Path

from fusesnap.digest import Digest
from fusesnap.oci import OCI_CONFIG, OCI_INDEX, OCI_LAYER_GZIP, OCI_MANIFEST
from fusesnap.store import ContentInfo, ImageRecord, LayerRecord, Store, pack_chunk_digests

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


def chunk(data: bytes) -> tuple[bytes, bytes]:
    """A ``(digest, data)`` pair for `ChunkStore.put_many`."""
    return hashlib.sha256(data).digest(), data


def layer_digest(name: str) -> Digest:
    """A made-up layer (blob) digest; layers here are stored as records only."""
    return Digest.of(f"layer blob {name}".encode())


def layer_record(name: str, chunk_digests: list[bytes], index: bytes = b"") -> LayerRecord:
    return LayerRecord(
        digest=layer_digest(name),
        diff_id=Digest.of(f"diff {name}".encode()),
        media_type=OCI_LAYER_GZIP,
        size=1000,
        uncompressed_size=4000,
        entry_count=3,
        source="built",
        index=index or f"index of {name}".encode(),
        chunks=pack_chunk_digests(chunk_digests),
    )


def put_layer_manifest(store: Store, config: bytes, layers: list[Digest]) -> Digest:
    """Store config and a manifest naming ``layers`` (not stored as content,
    as a pull leaves them); return the manifest digest."""
    put(store, config, OCI_CONFIG)
    doc = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": Digest.of(config), "size": len(config)},
        "layers": [{"mediaType": OCI_LAYER_GZIP, "digest": d, "size": 1000} for d in layers],
    }
    return put(store, json.dumps(doc).encode(), OCI_MANIFEST).digest
