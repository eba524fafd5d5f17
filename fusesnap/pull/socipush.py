"""Push a SOCI index (manifest v2) for an image: soci-snapshotter's way of making gzip images lazy.

    pushed = await push_soci_index(client, ref, options=SociOptions(), tag="v1")

What soci-snapshotter's ``soci convert`` makes, and what is pushed here:

- a **zTOC** per gzip layer of at least ``min_layer_size`` bytes (default 10 MiB,
  soci's; smaller layers are fetched whole by soci), spans of ``span`` bytes
  (4 MiB), built by `fusesnap.index.ztocwrite` from the layer blob, which is
  downloaded to a temporary file and verified against its digest first;
- the **SOCI index**, an image manifest with config media type (and
  ``artifactType``) ``application/vnd.amazon.soci.index.v2+json`` and the empty
  JSON config, whose layers are the zTOCs (media type ``application/octet-stream``,
  annotated ``com.amazon.soci.image-layer-digest`` and
  ``com.amazon.soci.image-layer-mediaType``), annotated
  ``com.amazon.soci.build-tool-identifier``; it has no ``subject``;
- the **image manifest**, rewritten as an OCI manifest (config media type OCI
  too; layers and config unchanged) with the annotation
  ``com.amazon.soci.index-digest`` naming the SOCI index: this binds the index
  to the image, and changes the manifest's digest;
- an **image index** holding that manifest (its descriptor carries the same
  annotations) and the SOCI index's descriptor (``artifactType`` v2, the
  platform, annotation ``com.amazon.soci.image-manifest-digest``): REF's own
  index with the platform's entry replaced (an older SOCI index of the same
  platform is dropped; other platforms are left as they are), or, for a
  single-manifest REF, a new index of the two, as ``soci convert`` does, so that
  the SOCI index is reachable from the tag and copied with the image.

The image index is pushed under ``tag`` (default: REF's tag); everything else
by digest, blobs the repository has being skipped. Layers and config are shared
with the original image; the original manifest and index stay in the
repository.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fusesnap.blocking import run_blocking
from fusesnap.digest import Digest, Verifier
from fusesnap.errors import LayerError, ManifestError
from fusesnap.index import ztocwrite
from fusesnap.oci import (
    OCI_CONFIG,
    OCI_INDEX,
    OCI_MANIFEST,
    Descriptor,
    ImageConfig,
    Platform,
    layer_compression,
)
from fusesnap.pull.indexsource import NoProgress, PullProgress
from fusesnap.pull.socispec import (
    BUILD_TOOL_ANNOTATION,
    INDEX_DIGEST_ANNOTATION,
    LAYER_DIGEST_ANNOTATION,
    LAYER_MEDIA_TYPE_ANNOTATION,
    MANIFEST_DIGEST_ANNOTATION,
    SOCI_INDEX_V2,
    ZTOC_MEDIA_TYPE,
)
from fusesnap.reference import Reference
from fusesnap.registry import RegistryClient, Resolved
from fusesnap.termui import human_size

__all__ = [
    "DEFAULT_MIN_LAYER_SIZE",
    "PushedSoci",
    "SociOptions",
    "push_soci_index",
]

DEFAULT_MIN_LAYER_SIZE = 10 << 20
_EMPTY = b"{}"
_EMPTY_DIGEST = Digest.of(_EMPTY)


@dataclass(frozen=True, slots=True)
class SociOptions:
    """How zTOCs are built: span size, smallest layer indexed, build tool named in them."""

    span: int = ztocwrite.DEFAULT_SPAN
    min_layer_size: int = DEFAULT_MIN_LAYER_SIZE
    build_tool: str = ztocwrite.BUILD_TOOL


@dataclass(frozen=True, slots=True)
class PushedSoci:
    """What `push_soci_index` pushed: the SOCI index, the annotated manifest, the image
    index under ``tag``; ``ztocs`` counts zTOCs, ``ztoc_bytes`` their size."""

    index: Descriptor
    manifest: Descriptor
    image_index: Descriptor
    tag: str
    ztocs: int
    ztoc_bytes: int
    skipped: int


def _count(n: int, noun: str) -> str:
    if n == 1:
        return f"1 {noun}"
    return f"{n} {noun[:-1]}ies" if noun.endswith("y") else f"{n} {noun}s"


def _json(doc: Any) -> bytes:
    return json.dumps(doc, separators=(",", ":")).encode()


class _FileSink:
    """A `BlobSink` into a local file, verified (digest and size) by `check`."""

    def __init__(self, path: Path, layer: Descriptor, progress: PullProgress) -> None:
        self._file = path.open("wb")
        self._layer = layer
        self._verifier = Verifier(layer.digest, layer.size)
        self._progress = progress

    @property
    def offset(self) -> int:
        return self._verifier.count

    async def write(self, data: bytes) -> None:
        await run_blocking(self._file.write, data)
        self._verifier.update(data)
        self._progress.advance(len(data))

    async def reset(self) -> None:
        await run_blocking(self._file.truncate, 0)
        self._file.seek(0)
        self._verifier = Verifier(self._layer.digest, self._layer.size)

    def check(self) -> None:
        self._file.close()
        self._verifier.check(what="layer")

    def close(self) -> None:
        self._file.close()


async def _build_layer_ztoc(
    client: RegistryClient,
    ref: Reference,
    layer: Descriptor,
    options: SociOptions,
    workdir: Path,
    progress: PullProgress,
) -> ztocwrite.Ztoc:
    path = workdir / layer.digest.hex
    sink = _FileSink(path, layer, progress)
    try:
        await client.download_blob(ref, layer, sink)
        sink.check()
    finally:
        sink.close()
    try:
        return await run_blocking(
            lambda: ztocwrite.build_ztoc(
                str(path),
                span=options.span,
                build_tool=options.build_tool,
                what=f"layer {layer.digest.short}",
            )
        )
    finally:
        path.unlink(missing_ok=True)


async def push_soci_index(
    client: RegistryClient,
    ref: Reference,
    *,
    options: SociOptions,
    tag: str | None = None,
    platform: Platform | None = None,
    progress: PullProgress | None = None,
    on_step: Callable[[str], None] = lambda line: None,
) -> PushedSoci:
    """Build the zTOCs of ``ref``'s image (for ``platform``) and push a SOCI index v2
    with it (module docstring); ``on_step`` gets one line per layer and per push.

    Raise `LayerError` if no layer gets a zTOC (all too small, not gzip, or not a
    tar soci's builder accepts), `ManifestError` when there is no tag to push to.
    A layer whose blob does not verify raises `DigestMismatchError`.
    """
    push_tag = tag or ref.tag
    if not push_tag:
        raise ManifestError(f"{ref}: no tag to push the SOCI-enabled image to; name one (--tag)")
    progress = progress or NoProgress()
    resolved = await client.resolve(ref, platform=platform)
    manifest = resolved.parsed
    unique = list({layer.digest: layer for layer in manifest.layers}.values())
    chosen = []
    skipped = 0
    for layer in unique:
        if layer_compression(layer.media_type) != "gzip":
            on_step(f"layer {layer.digest.short}: no zTOC (not gzip: {layer.media_type})")
        elif "nondistributable" in layer.media_type or "foreign" in layer.media_type:
            on_step(f"layer {layer.digest.short}: no zTOC (not distributable)")
        elif layer.size < options.min_layer_size:
            on_step(
                f"layer {layer.digest.short}: no zTOC ({human_size(layer.size)}, under "
                f"{human_size(options.min_layer_size)}; fetched whole)"
            )
        else:
            chosen.append(layer)
            continue
        skipped += 1
    progress.start(total_bytes=sum(layer.size for layer in chosen), items=len(chosen))
    ztoc_descs = []
    with tempfile.TemporaryDirectory(prefix="fusesnap-soci-") as tmp:
        for layer in chosen:
            try:
                ztoc = await _build_layer_ztoc(client, ref, layer, options, Path(tmp), progress)
            except LayerError as exc:
                on_step(f"layer {layer.digest.short}: no zTOC ({exc})")
                skipped += 1
                progress.item_done()
                continue
            digest = Digest(ztoc.digest)
            if not await client.blob_exists(ref, digest):
                await client.put_blob(ref, ztoc.data, digest)
            ztoc_descs.append(
                Descriptor(
                    ZTOC_MEDIA_TYPE,
                    digest,
                    ztoc.size,
                    annotations={
                        LAYER_MEDIA_TYPE_ANNOTATION: layer.media_type,
                        LAYER_DIGEST_ANNOTATION: str(layer.digest),
                    },
                )
            )
            progress.item_done()
            on_step(
                f"layer {layer.digest.short} ({human_size(layer.size)}): zTOC {digest.short} "
                f"({human_size(ztoc.size)}, {_count(ztoc.spans, 'span')}, "
                f"{_count(ztoc.entries, 'entry')})"
            )
    if not ztoc_descs:
        raise LayerError(f"{ref}: no layer gets a zTOC; nothing to push")
    if not await client.blob_exists(ref, _EMPTY_DIGEST):
        await client.put_blob(ref, _EMPTY, _EMPTY_DIGEST)
    index_body = _json(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "artifactType": SOCI_INDEX_V2,
            "config": {
                "mediaType": SOCI_INDEX_V2,
                "digest": str(_EMPTY_DIGEST),
                "size": len(_EMPTY),
            },
            "layers": [d.to_dict() for d in ztoc_descs],
            "annotations": {BUILD_TOOL_ANNOTATION: options.build_tool},
        }
    )
    index_digest = await client.put_manifest(ref, index_body, OCI_MANIFEST, tag=None)
    on_step(f"pushed SOCI index {index_digest.short} ({_count(len(ztoc_descs), 'zTOC')})")

    doc = json.loads(resolved.manifest_bytes)
    doc["mediaType"] = OCI_MANIFEST
    doc["config"]["mediaType"] = OCI_CONFIG
    annotations = dict(doc.get("annotations") or {})
    annotations[INDEX_DIGEST_ANNOTATION] = str(index_digest)
    doc["annotations"] = annotations
    manifest_body = _json(doc)
    manifest_digest = await client.put_manifest(ref, manifest_body, OCI_MANIFEST, tag=None)
    on_step(
        f"pushed image manifest {manifest_digest.short} "
        f"(was {resolved.manifest.digest.short}; annotated {INDEX_DIGEST_ANNOTATION})"
    )

    plat = resolved.manifest.platform or await _config_platform(client, ref, manifest.config)
    manifest_desc = Descriptor(
        OCI_MANIFEST, manifest_digest, len(manifest_body), platform=plat, annotations=annotations
    )
    index_desc = Descriptor(
        OCI_MANIFEST,
        index_digest,
        len(index_body),
        platform=plat,
        annotations={MANIFEST_DIGEST_ANNOTATION: str(manifest_digest)},
        artifact_type=SOCI_INDEX_V2,
    )
    image_index = _image_index(resolved.target_bytes, resolved, manifest_desc, index_desc)
    image_digest = await client.put_manifest(ref, image_index, OCI_INDEX, tag=push_tag)
    on_step(f"pushed image index {image_digest.short} as {ref.name}:{push_tag}")
    return PushedSoci(
        index=index_desc,
        manifest=manifest_desc,
        image_index=Descriptor(OCI_INDEX, image_digest, len(image_index)),
        tag=push_tag,
        ztocs=len(ztoc_descs),
        ztoc_bytes=sum(d.size for d in ztoc_descs),
        skipped=skipped,
    )


async def _config_platform(client: RegistryClient, ref: Reference, config: Descriptor) -> Platform:
    data = await client.get_blob(ref, config)
    return ImageConfig.parse(data, what=f"config {config.digest.short}").platform


def _image_index(
    target_bytes: bytes, resolved: Resolved, manifest: Descriptor, soci_index: Descriptor
) -> bytes:
    """REF's index with the platform's manifest and SOCI index replaced, or a new one."""
    if resolved.index is None:
        doc: dict[str, Any] = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []}
        entries: list[dict[str, Any]] = [manifest.to_dict()]
    else:
        doc = json.loads(target_bytes)  # fields we do not know survive
        doc["mediaType"] = OCI_INDEX
        old = str(resolved.manifest.digest)
        entries = []
        for entry in doc.get("manifests") or []:
            if entry.get("digest") == old:
                entries.append(manifest.to_dict())
            elif entry.get("artifactType") == SOCI_INDEX_V2 and _same_platform(entry, manifest):
                continue  # an older SOCI index of this platform
            else:
                entries.append(entry)
    entries.append(soci_index.to_dict())
    doc["manifests"] = entries
    return _json(doc)


def _same_platform(entry: dict[str, Any], desc: Descriptor) -> bool:
    p = entry.get("platform")
    if not isinstance(p, dict) or desc.platform is None:
        return False
    return bool(
        p.get("os") == desc.platform.os
        and p.get("architecture") == desc.platform.architecture
        and (p.get("variant") or "") == desc.platform.variant
    )
