"""Write OCI image layout directories from layer tarballs.

A layout (image-spec ``image-layout.md``) as written here::

    DIR/oci-layout                {"imageLayoutVersion": "1.0.0"}
    DIR/index.json                one entry per tag (annotation org.opencontainers.image.ref.name)
    DIR/blobs/sha256/<hex>        layers, configs, manifests, nested indexes

A tag names an image manifest (`Image`) or, for a multi-platform image (a
sequence of `Image`), a nested image index whose manifests carry their
platform; each such manifest is also tagged ``TAG-OS-ARCH[-VARIANT]`` so that
tools which want a single manifest (umoci) can name it.

Output is deterministic: the same layers and settings give the same digests
(gzip with mtime 0 and no file name, zstd level 3 single-threaded, JSON in a
fixed key order). Layers given as a path are streamed in 1 MiB pieces, so a
300 MB layer is never held in memory.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gzip
import hashlib
import io
import json
import os
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, BinaryIO, Literal, Protocol, cast

import zstandard

__all__ = [
    "MEDIA_TYPES",
    "Compression",
    "Descriptor",
    "Image",
    "Layer",
    "Platform",
    "WrittenImage",
    "read_json_blob",
    "resolve_tag",
    "write_layout",
]

Compression = Literal["gzip", "zstd", "none"]

MEDIA_TYPES: Mapping[str, str] = {
    "gzip": "application/vnd.oci.image.layer.v1.tar+gzip",
    "zstd": "application/vnd.oci.image.layer.v1.tar+zstd",
    "none": "application/vnd.oci.image.layer.v1.tar",
}
MANIFEST = "application/vnd.oci.image.manifest.v1+json"
INDEX = "application/vnd.oci.image.index.v1+json"
CONFIG = "application/vnd.oci.image.config.v1+json"
REF_NAME = "org.opencontainers.image.ref.name"
DEFAULT_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
FIXED_CREATED = "2023-11-14T22:13:20Z"

_PIECE = 1 << 20
GZIP_LEVEL = 6
ZSTD_LEVEL = 3


@dataclass(frozen=True, slots=True)
class Layer:
    """One layer: an uncompressed tarball (bytes, or a file to stream) and how to compress it."""

    tar: bytes | Path
    compression: Compression = "gzip"
    created_by: str = ""


@dataclass(frozen=True, slots=True)
class Platform:
    os: str = "linux"
    architecture: str = "amd64"
    variant: str | None = None

    @classmethod
    def parse(cls, text: str) -> Platform:
        """``linux/arm64`` or ``linux/arm64/v8``."""
        parts = text.split("/")
        if len(parts) not in (2, 3):
            raise ValueError(f"platform {text!r}: expected OS/ARCH[/VARIANT]")
        return cls(parts[0], parts[1], parts[2] if len(parts) == 3 else None)

    def to_json(self) -> dict[str, str]:
        out = {"architecture": self.architecture, "os": self.os}
        if self.variant:
            out["variant"] = self.variant
        return out

    def tag_suffix(self) -> str:
        return "-".join(p for p in (self.os, self.architecture, self.variant) if p)

    def __str__(self) -> str:
        return "/".join(p for p in (self.os, self.architecture, self.variant) if p)


@dataclass(frozen=True, slots=True)
class Image:
    """An image to write: layers (bottom first) and the runtime part of its config."""

    layers: Sequence[Layer]
    env: Sequence[str] = (DEFAULT_PATH,)
    cmd: Sequence[str] | None = ("/bin/sh",)
    entrypoint: Sequence[str] | None = None
    working_dir: str = ""
    user: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)
    platform: Platform = Platform()
    created: str = FIXED_CREATED
    annotations: Mapping[str, str] = field(default_factory=dict)

    def with_compression(self, compression: Compression) -> Image:
        layers = [dataclasses.replace(layer, compression=compression) for layer in self.layers]
        return dataclasses.replace(self, layers=layers)


@dataclass(frozen=True, slots=True)
class Descriptor:
    media_type: str
    digest: str
    size: int
    platform: Platform | None = None
    annotations: Mapping[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, object]:
        out: dict[str, object] = {
            "mediaType": self.media_type,
            "digest": self.digest,
            "size": self.size,
        }
        if self.platform is not None:
            out["platform"] = self.platform.to_json()
        if self.annotations:
            out["annotations"] = dict(self.annotations)
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, object]) -> Descriptor:
        platform = data.get("platform")
        annotations = data.get("annotations")
        size = data["size"]
        assert isinstance(size, int)
        return cls(
            media_type=str(data["mediaType"]),
            digest=str(data["digest"]),
            size=size,
            platform=(
                Platform(
                    str(platform["os"]), str(platform["architecture"]), platform.get("variant")
                )
                if isinstance(platform, dict)
                else None
            ),
            annotations=dict(annotations) if isinstance(annotations, dict) else {},
        )


@dataclass(frozen=True, slots=True)
class WrittenImage:
    """What `write_layout` wrote for one platform image."""

    manifest: Descriptor
    config: Descriptor
    layers: tuple[Descriptor, ...]
    diff_ids: tuple[str, ...]


def _dumps(obj: object) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


class _HashingWriter(io.RawIOBase):
    """A write-only file object that hashes and counts what passes through."""

    def __init__(self, out: BinaryIO) -> None:
        super().__init__()
        self._out = out
        self.sha = hashlib.sha256()
        self.size = 0

    def writable(self) -> bool:
        return True

    def write(self, data: bytes | bytearray | memoryview) -> int:  # type: ignore[override]
        view = memoryview(data)
        self.sha.update(view)
        self.size += view.nbytes
        self._out.write(view)
        return view.nbytes


class _Sink(Protocol):
    def write(self, data: bytes, /) -> int: ...

    def close(self) -> None: ...


class _Blobs:
    def __init__(self, layout_dir: Path) -> None:
        self.dir = layout_dir / "blobs" / "sha256"
        self.dir.mkdir(parents=True, exist_ok=True)

    @contextlib.contextmanager
    def _new_blob(self) -> Iterator[_HashingWriter]:
        fd, tmp = tempfile.mkstemp(dir=self.dir, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as f:
                writer = _HashingWriter(f)
                yield writer
            os.replace(tmp, self.dir / writer.sha.hexdigest())
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise

    def put(
        self,
        data: bytes,
        media_type: str,
        *,
        platform: Platform | None = None,
        annotations: Mapping[str, str] | None = None,
    ) -> Descriptor:
        digest = hashlib.sha256(data).hexdigest()
        if not (self.dir / digest).exists():
            with self._new_blob() as w:
                w.write(data)
        return Descriptor(media_type, f"sha256:{digest}", len(data), platform, annotations or {})

    def put_layer(self, layer: Layer) -> tuple[Descriptor, str]:
        """Compress and store ``layer``; return its descriptor and diff ID."""
        diff = hashlib.sha256()
        source: BinaryIO
        with contextlib.ExitStack() as stack:
            if isinstance(layer.tar, bytes):
                source = io.BytesIO(layer.tar)
            else:
                source = stack.enter_context(open(layer.tar, "rb"))
            with self._new_blob() as out:
                sink: _Sink
                if layer.compression == "gzip":
                    # No file name and mtime 0 in the header: same input, same digest.
                    sink = gzip.GzipFile(
                        filename="", mode="wb", fileobj=out, compresslevel=GZIP_LEVEL, mtime=0
                    )
                elif layer.compression == "zstd":
                    cctx = zstandard.ZstdCompressor(level=ZSTD_LEVEL)
                    sink = cctx.stream_writer(cast(IO[bytes], out), closefd=False)
                elif layer.compression == "none":
                    sink = out
                else:
                    raise ValueError(f"unknown compression {layer.compression!r}")
                while piece := source.read(_PIECE):
                    diff.update(piece)
                    sink.write(piece)
                if sink is not out:
                    sink.close()  # flushes the compressor; ``out`` stays open
        descriptor = Descriptor(
            MEDIA_TYPES[layer.compression], f"sha256:{out.sha.hexdigest()}", out.size
        )
        return descriptor, f"sha256:{diff.hexdigest()}"


def _write_image(blobs: _Blobs, image: Image, annotations: Mapping[str, str]) -> WrittenImage:
    layers, diff_ids = [], []
    for layer in image.layers:
        descriptor, diff_id = blobs.put_layer(layer)
        layers.append(descriptor)
        diff_ids.append(diff_id)
    runtime: dict[str, object] = {"Env": list(image.env)}
    if image.entrypoint is not None:
        runtime["Entrypoint"] = list(image.entrypoint)
    if image.cmd is not None:
        runtime["Cmd"] = list(image.cmd)
    if image.working_dir:
        runtime["WorkingDir"] = image.working_dir
    if image.user:
        runtime["User"] = image.user
    if image.labels:
        runtime["Labels"] = dict(image.labels)
    config = {
        "created": image.created,
        **image.platform.to_json(),
        "config": runtime,
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": [
            {"created": image.created, "created_by": layer.created_by or f"layer {i}"}
            for i, layer in enumerate(image.layers)
        ],
    }
    config_desc = blobs.put(_dumps(config), CONFIG)
    manifest: dict[str, object] = {
        "schemaVersion": 2,
        "mediaType": MANIFEST,
        "config": config_desc.to_json(),
        "layers": [d.to_json() for d in layers],
    }
    if image.annotations:
        manifest["annotations"] = dict(image.annotations)
    manifest_desc = blobs.put(
        _dumps(manifest), MANIFEST, platform=image.platform, annotations=dict(annotations)
    )
    return WrittenImage(manifest_desc, config_desc, tuple(layers), tuple(diff_ids))


def write_layout(
    layout_dir: str | os.PathLike[str],
    images: Mapping[str, Image | Sequence[Image]],
) -> dict[str, list[WrittenImage]]:
    """Write ``images`` (tag -> image, or tag -> images of several platforms) to a layout.

    ``index.json`` is rewritten to name exactly these tags (plus the per-platform
    tags of multi-platform images); existing blobs are kept. Returns, per tag,
    the images written (one, or one per platform).
    """
    root = Path(layout_dir)
    root.mkdir(parents=True, exist_ok=True)
    blobs = _Blobs(root)
    entries: list[Descriptor] = []
    written: dict[str, list[WrittenImage]] = {}
    for tag, spec in images.items():
        if isinstance(spec, Image):
            image = _write_image(blobs, spec, {REF_NAME: tag})
            entries.append(image.manifest)
            written[tag] = [image]
            continue
        platform_images = [_write_image(blobs, one, {}) for one in spec]
        if len({str(i.manifest.platform) for i in platform_images}) != len(platform_images):
            raise ValueError(f"tag {tag!r}: two images with the same platform")
        index = {
            "schemaVersion": 2,
            "mediaType": INDEX,
            "manifests": [
                dataclasses.replace(i.manifest, annotations={}).to_json() for i in platform_images
            ],
        }
        entries.append(blobs.put(_dumps(index), INDEX, annotations={REF_NAME: tag}))
        for one in platform_images:
            assert one.manifest.platform is not None
            name = f"{tag}-{one.manifest.platform.tag_suffix()}"
            entries.append(dataclasses.replace(one.manifest, annotations={REF_NAME: name}))
        written[tag] = platform_images
    (root / "oci-layout").write_bytes(_dumps({"imageLayoutVersion": "1.0.0"}))
    top = {"schemaVersion": 2, "mediaType": INDEX, "manifests": [e.to_json() for e in entries]}
    (root / "index.json").write_bytes(_dumps(top))
    return written


def read_json_blob(layout_dir: str | os.PathLike[str], digest: str) -> dict[str, object]:
    data = json.loads((Path(layout_dir) / "blobs" / digest.replace(":", "/", 1)).read_bytes())
    assert isinstance(data, dict)
    return data


def resolve_tag(layout_dir: str | os.PathLike[str], tag: str) -> Descriptor:
    """The descriptor ``index.json`` names ``tag`` (a manifest or a nested index)."""
    index = json.loads((Path(layout_dir) / "index.json").read_bytes())
    for entry in index.get("manifests", []):
        if entry.get("annotations", {}).get(REF_NAME) == tag:
            return Descriptor.from_json(entry)
    raise KeyError(f"layout {layout_dir}: no tag {tag!r}")
