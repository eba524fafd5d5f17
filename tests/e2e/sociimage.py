"""Images made of the zTOC test vectors' gzip layers, pushed with a SOCI index of the golden
zTOCs: v2 (an image manifest annotated with the index digest) or v1 (an index whose subject
is the image manifest, listed under the referrers fallback tag), and an OCI layout of the
same image for ``umoci unpack``."""

from __future__ import annotations

import gzip
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.e2e.rawpush import OCI_CONFIG, OCI_MANIFEST, push_blob
from tests.lazy.sociztoc import Vector
from tools.images.umoci import umoci_unpack

OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
V1 = "application/vnd.amazon.soci.index.v1+json"
V2 = "application/vnd.amazon.soci.index.v2+json"


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _desc(media_type: str, data: bytes, **extra: object) -> dict[str, object]:
    return {"mediaType": media_type, "digest": _digest(data), "size": len(data), **extra}


def _json(doc: object) -> bytes:
    return json.dumps(doc, separators=(",", ":")).encode()


@dataclass(frozen=True)
class SociImage:
    ref: str
    manifest_digest: str
    index_digest: str
    layers: list[dict[str, object]]  # the image's layer descriptors
    ztocs: dict[str, str]  # image layer digest -> zTOC digest
    layout_dir: Path

    def unpack(self, dest: Path) -> Path:
        return umoci_unpack(self.layout_dir, "latest", dest)


def push_soci_image(
    host: str,
    repo: str,
    tag: str,
    layers: list[tuple[Vector, bytes | None]],
    *,
    version: str,
    layout_dir: Path,
) -> SociImage:
    """Push an image of ``layers`` (each a vector and the zTOC to index it with; None: no
    zTOC for that layer) and its SOCI index ``version`` (``v2`` or ``v1``)."""
    config = _json({
        "architecture": "amd64", "os": "linux", "config": {},
        "rootfs": {"type": "layers",
                   "diff_ids": [_digest(gzip.decompress(v.blob)) for v, _ in layers]},
    })  # fmt: skip
    layer_descs = [_desc(OCI_LAYER_GZIP, v.blob) for v, _ in layers]
    ztoc_descs = [
        _desc("application/octet-stream", ztoc, annotations={
            "com.amazon.soci.image-layer-digest": _digest(v.blob),
            "com.amazon.soci.image-layer-mediaType": OCI_LAYER_GZIP,
        })
        for v, ztoc in layers if ztoc is not None
    ]  # fmt: skip
    empty = b"{}"
    index_config = _desc(V2 if version == "v2" else V1, empty)
    image: dict[str, object] = {
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": _desc(OCI_CONFIG, config), "layers": layer_descs,
    }  # fmt: skip
    blobs: dict[str, bytes] = {_digest(config): config, _digest(empty): empty}
    blobs.update((_digest(v.blob), v.blob) for v, _ in layers)
    blobs.update((_digest(z), z) for _, z in layers if z is not None)
    base = f"http://{host}"
    with httpx.Client(timeout=30) as client:
        for data in blobs.values():
            push_blob(client, base, repo, data)
        if version == "v2":
            index = _json({
                "schemaVersion": 2, "mediaType": OCI_MANIFEST, "artifactType": V2,
                "config": index_config, "layers": ztoc_descs,
            })  # fmt: skip
            _put(client, base, repo, _digest(index), index)
            image["annotations"] = {"com.amazon.soci.index-digest": _digest(index)}
            manifest = _json(image)
            _put(client, base, repo, tag, manifest)
        else:
            manifest = _json(image)
            _put(client, base, repo, tag, manifest)
            index = _json({
                "schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": index_config,
                "layers": ztoc_descs, "subject": _desc(OCI_MANIFEST, manifest),
            })  # fmt: skip
            _put(client, base, repo, _digest(index), index)
            referrers = _json({
                "schemaVersion": 2, "mediaType": OCI_INDEX,
                "manifests": [_desc(OCI_MANIFEST, index, artifactType=V1)],
            })  # fmt: skip
            fallback = "sha256-" + _digest(manifest)[7:]
            _put(client, base, repo, fallback, referrers, OCI_INDEX)
    _write_layout(layout_dir, manifest, blobs)
    return SociImage(
        ref=f"{host}/{repo}:{tag}",
        manifest_digest=_digest(manifest),
        index_digest=_digest(index),
        layers=layer_descs,
        ztocs={_digest(v.blob): _digest(z) for v, z in layers if z is not None},
        layout_dir=layout_dir,
    )


def _put(
    client: httpx.Client, base: str, repo: str, ref: str, body: bytes, media_type: str = ""
) -> None:
    r = client.put(
        f"{base}/v2/{repo}/manifests/{ref}",
        content=body,
        headers={"Content-Type": media_type or OCI_MANIFEST},
    )
    r.raise_for_status()


def _write_layout(layout: Path, manifest: bytes, blobs: Mapping[str, bytes]) -> None:
    """An OCI layout of the image (tag ``latest``) for ``umoci unpack``."""
    store = layout / "blobs" / "sha256"
    store.mkdir(parents=True, exist_ok=True)
    for digest, data in {**blobs, _digest(manifest): manifest}.items():
        (store / digest[7:]).write_bytes(data)
    (layout / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    tag = {"org.opencontainers.image.ref.name": "latest"}
    entry = _desc(OCI_MANIFEST, manifest, annotations=tag)
    (layout / "index.json").write_bytes(
        _json({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [entry]})
    )
