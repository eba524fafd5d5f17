"""An upper dir as a new layer and a new image (``fusesnap commit``).

In order, under a lease (so gc spares each piece before the image record holds it):

1. the upper dir becomes an OCI layer tar (`difftar`), gzip-compressed into a
   temporary file under ``ROOT/ingest``; its diff ID and digest are hashed on the way;
2. the blob goes into the content store and through the same ingest path as a
   pulled layer (`ingest_layer_file`: index + chunks), so the mount daemon serves it;
3. the image config gets the diff ID and a history entry appended, the manifest the
   layer descriptor; both are stored as content;
4. the image record NEWREF points at the new manifest, and the committed snapshot of
   the new chain ID is recorded (parent: the image's top chain ID).

The new image's layers are all local: it mounts and runs without a registry.
"""

from __future__ import annotations

import gzip
import json
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fusesnap.digest import Digest
from fusesnap.image import ImageView
from fusesnap.oci import DOCKER_LAYER_GZIP, DOCKER_MANIFEST, OCI_LAYER_GZIP, Descriptor, chain_ids
from fusesnap.pull import ingest_layer_file
from fusesnap.reference import Reference
from fusesnap.snapshots.difftar import HashingWriter, write_diff_tar
from fusesnap.snapshots.snapshotter import Snapshotter
from fusesnap.store import COMMITTED, ImageRecord, Resource, SnapshotRecord, Store

__all__ = ["CommitResult", "commit_upper"]

_COPY = 1 << 20


@dataclass(frozen=True, slots=True)
class CommitResult:
    """What ``commit`` made."""

    image: str
    manifest_digest: Digest
    layer: Descriptor
    diff_id: Digest
    chain_id: str


def _canonical(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, separators=(",", ":")).encode()


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def commit_upper(
    store: Store, root: Path, upper: Path, base_ref: str, new_ref: str, *, comment: str = ""
) -> CommitResult:
    """Make image ``new_ref``: image ``base_ref`` plus the contents of overlay upper dir
    ``upper`` as one more layer (module docstring). Blocking."""
    view = ImageView.open(store, base_ref)
    name = str(Reference.parse(new_ref))
    manifest_doc = json.loads(store.content.read(view.record.manifest_digest))
    config_desc = view.manifest.config
    config_doc = json.loads(store.content.read(config_desc.digest))
    docker = view.manifest.media_type == DOCKER_MANIFEST
    layer_type = DOCKER_LAYER_GZIP if docker else OCI_LAYER_GZIP
    store.env.ingest_dir.mkdir(parents=True, exist_ok=True)
    with store.leases.lease(owner_pid=os.getpid(), labels={"fusesnap.commit": name}) as lease:
        with tempfile.NamedTemporaryFile(dir=store.env.ingest_dir, prefix="commit-") as tmp:
            hashing = HashingWriter(tmp)
            with gzip.GzipFile(fileobj=hashing, mode="wb", mtime=0) as gz:
                diff_id, _ = write_diff_tar(upper, gz)
            tmp.flush()
            layer = Descriptor(
                media_type=layer_type,
                digest=Digest(f"sha256:{hashing.sha.hexdigest()}"),
                size=hashing.size,
            )
            store.leases.add_resource(lease.id, Resource.content(layer.digest))
            store.leases.add_resource(lease.id, Resource.layer(layer.digest))
            _store_blob(store, Path(tmp.name), layer)
            if not store.layers.exists(layer.digest):
                ingest_layer_file(store, Path(tmp.name), layer, diff_id=diff_id)
        rootfs = config_doc.setdefault("rootfs", {"type": "layers", "diff_ids": []})
        rootfs["diff_ids"] = [*rootfs.get("diff_ids", []), str(diff_id)]
        created = _now()
        config_doc["created"] = created
        history = config_doc.get("history")
        entry = {"created": created, "created_by": "fusesnap commit", "comment": comment}
        config_doc["history"] = [*(history if isinstance(history, list) else []), entry]
        config_bytes = _canonical(config_doc)
        config_digest = _put(store, lease.id, config_bytes, config_desc.media_type)
        manifest_doc["config"] = {
            **manifest_doc["config"],
            "digest": str(config_digest),
            "size": len(config_bytes),
        }
        manifest_doc["layers"] = [*manifest_doc.get("layers", []), layer.to_dict()]
        manifest_bytes = _canonical(manifest_doc)
        manifest_digest = _put(store, lease.id, manifest_bytes, view.manifest.media_type)
        store.images.put(
            ImageRecord(
                name=name,
                target_digest=manifest_digest,
                target_media_type=view.manifest.media_type,
                target_size=len(manifest_bytes),
                manifest_digest=manifest_digest,
                platform=view.record.platform,
            )
        )
    chains = chain_ids([*view.config.diff_ids, diff_id])
    Snapshotter(store, root).ensure_image(view)
    store.snapshots.create(
        SnapshotRecord(
            key=chains[-1],
            kind=COMMITTED,
            parent=chains[-2] if len(chains) > 1 else None,
            layer=layer.digest,
            diff_id=diff_id,
            labels={"fusesnap.image": name},
        ),
        exist_ok=True,
    )
    return CommitResult(name, manifest_digest, layer, diff_id, chains[-1])


def _put(store: Store, lease_id: str, data: bytes, media_type: str) -> Digest:
    digest = Digest.of(data)
    store.leases.add_resource(lease_id, Resource.content(digest))
    store.content.put(data, digest=digest, media_type=media_type)
    return digest


def _store_blob(store: Store, path: Path, layer: Descriptor) -> None:
    if store.content.exists(layer.digest):
        return
    with store.content.writer(layer.digest, size=layer.size, media_type=layer.media_type) as w:
        w.truncate()
        with open(path, "rb") as f:
            while data := f.read(_COPY):
                w.write(data)
        w.commit()
