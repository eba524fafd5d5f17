"""OCI / Docker image formats: media types, descriptors, manifests, indexes, platforms.

Parsing validates what later code relies on (digests, sizes, media types), so a
corrupt or hostile manifest fails here with a `ManifestError` that names it.
"""

from __future__ import annotations

import hashlib
import json
import platform as _platform
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from fusesnap.digest import Digest
from fusesnap.errors import InvalidDigestError, ManifestError, PlatformNotFoundError

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_EMPTY = "application/vnd.oci.empty.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"

OCI_LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
OCI_LAYER_NONDIST_GZIP = "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
DOCKER_LAYER_FOREIGN = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"

MANIFEST_TYPES = (OCI_MANIFEST, DOCKER_MANIFEST)
INDEX_TYPES = (OCI_INDEX, DOCKER_LIST)
LAYER_TYPES = (
    OCI_LAYER_TAR,
    OCI_LAYER_GZIP,
    OCI_LAYER_ZSTD,
    OCI_LAYER_NONDIST_GZIP,
    DOCKER_LAYER_GZIP,
    DOCKER_LAYER_FOREIGN,
)
ACCEPT_MANIFESTS = ", ".join((OCI_INDEX, DOCKER_LIST, OCI_MANIFEST, DOCKER_MANIFEST))

# A manifest is small; anything far bigger is hostile or broken.
MAX_MANIFEST_SIZE = 4 * 1024 * 1024


def layer_compression(media_type: str) -> str:
    """``gzip``, ``zstd`` or ``none`` for a layer media type."""
    if media_type.endswith("+gzip") or media_type.endswith(".tar.gzip"):
        return "gzip"
    if media_type.endswith("+zstd"):
        return "zstd"
    if media_type.endswith(".tar"):
        return "none"
    raise ManifestError(f"unsupported layer media type {media_type!r}")


@dataclass(frozen=True, slots=True)
class Platform:
    os: str
    architecture: str
    variant: str = ""

    @classmethod
    def parse(cls, text: str) -> Platform:
        """``linux/amd64`` or ``linux/arm64/v8``."""
        parts = text.split("/")
        if len(parts) not in (2, 3) or not all(parts):
            raise ManifestError(f"invalid platform {text!r}: want os/arch[/variant]")
        return cls(*parts).normalized()

    @classmethod
    def host(cls) -> Platform:
        machine = _platform.machine().lower()
        arch = {
            "x86_64": "amd64",
            "amd64": "amd64",
            "aarch64": "arm64",
            "arm64": "arm64",
            "armv7l": "arm",
            "armv6l": "arm",
            "i686": "386",
            "i386": "386",
            "ppc64le": "ppc64le",
            "s390x": "s390x",
            "riscv64": "riscv64",
        }.get(machine, machine)
        variant = {"armv7l": "v7", "armv6l": "v6"}.get(machine, "")
        return cls("linux", arch, variant).normalized()

    def normalized(self) -> Platform:
        variant = self.variant
        if self.architecture == "arm64" and variant == "v8":
            variant = ""
        return Platform(self.os.lower(), self.architecture.lower(), variant)

    def matches(self, other: Platform) -> bool:
        a, b = self.normalized(), other.normalized()
        if (a.os, a.architecture) != (b.os, b.architecture):
            return False
        return not a.variant or not b.variant or a.variant == b.variant

    def to_dict(self) -> dict[str, str]:
        d = {"os": self.os, "architecture": self.architecture}
        if self.variant:
            d["variant"] = self.variant
        return d

    def __str__(self) -> str:
        return "/".join(p for p in (self.os, self.architecture, self.variant) if p)


@dataclass(frozen=True, slots=True)
class Descriptor:
    media_type: str
    digest: Digest
    size: int
    platform: Platform | None = None
    annotations: dict[str, str] = field(default_factory=dict, hash=False, compare=False)
    artifact_type: str = ""

    @classmethod
    def from_dict(cls, d: Any, *, where: str) -> Descriptor:
        if not isinstance(d, dict):
            raise ManifestError(f"{where}: descriptor is not an object")
        try:
            digest = Digest(d["digest"])
            size = d["size"]
            media_type = d["mediaType"]
        except KeyError as exc:
            raise ManifestError(f"{where}: descriptor lacks {exc.args[0]!r}") from None
        except InvalidDigestError as exc:
            raise ManifestError(f"{where}: {exc}") from None
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise ManifestError(f"{where}: descriptor {digest.short} has invalid size {size!r}")
        if not isinstance(media_type, str):
            raise ManifestError(f"{where}: descriptor {digest.short} has invalid mediaType")
        plat = None
        p = d.get("platform")
        if isinstance(p, dict) and p.get("os") and p.get("architecture"):
            plat = Platform(str(p["os"]), str(p["architecture"]), str(p.get("variant") or ""))
        ann = d.get("annotations") or {}
        if not isinstance(ann, dict):
            raise ManifestError(f"{where}: descriptor {digest.short} has invalid annotations")
        return cls(
            media_type=media_type,
            digest=digest,
            size=size,
            platform=plat,
            annotations={str(k): str(v) for k, v in ann.items()},
            artifact_type=str(d.get("artifactType") or ""),
        )

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "mediaType": self.media_type,
            "digest": str(self.digest),
            "size": self.size,
        }
        if self.platform:
            d["platform"] = self.platform.to_dict()
        if self.annotations:
            d["annotations"] = dict(self.annotations)
        if self.artifact_type:
            d["artifactType"] = self.artifact_type
        return d


@dataclass(frozen=True, slots=True)
class Manifest:
    """An image manifest (OCI or Docker schema 2)."""

    media_type: str
    config: Descriptor
    layers: tuple[Descriptor, ...]
    subject: Descriptor | None = None
    artifact_type: str = ""
    annotations: dict[str, str] = field(default_factory=dict, hash=False, compare=False)

    def children(self) -> tuple[Descriptor, ...]:
        return (self.config, *self.layers)


@dataclass(frozen=True, slots=True)
class Index:
    """An OCI image index or a Docker manifest list."""

    media_type: str
    manifests: tuple[Descriptor, ...]
    subject: Descriptor | None = None

    def children(self) -> tuple[Descriptor, ...]:
        return self.manifests

    def select(self, want: Platform) -> Descriptor:
        """The first image manifest for ``want``; raise `PlatformNotFoundError` if none.

        An entry with an ``artifactType`` is not an image (a SOCI index v2 sits in an
        image index with its image's platform) and is passed over."""
        for d in self.manifests:
            if (
                d.platform is not None
                and d.media_type in MANIFEST_TYPES
                and not d.artifact_type
                and want.matches(d.platform)
            ):
                return d
        have = ", ".join(sorted({str(d.platform) for d in self.manifests if d.platform})) or "none"
        raise PlatformNotFoundError(f"no manifest for platform {want} (index has: {have})")


def _load_json(data: bytes, what: str) -> dict[str, Any]:
    if len(data) > MAX_MANIFEST_SIZE:
        raise ManifestError(f"{what}: too large ({len(data)} bytes)")
    try:
        doc = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ManifestError(f"{what}: not valid JSON ({exc})") from None
    if not isinstance(doc, dict):
        raise ManifestError(f"{what}: not a JSON object")
    return doc


def detect_media_type(data: bytes, declared: str | None = None, *, what: str = "manifest") -> str:
    """The media type of a manifest document, from its own field or its shape."""
    doc = _load_json(data, what)
    mt = doc.get("mediaType") or declared or ""
    if mt in MANIFEST_TYPES or mt in INDEX_TYPES:
        return str(mt)
    if "manifests" in doc:
        return OCI_INDEX
    if "config" in doc and "layers" in doc:
        return OCI_MANIFEST
    raise ManifestError(f"{what}: unsupported media type {mt or 'unknown'!r}")


def parse_manifest(
    data: bytes, media_type: str | None = None, *, what: str = "manifest"
) -> Manifest | Index:
    """Parse a manifest or index; the media type comes from the document when present."""
    doc = _load_json(data, what)
    mt = detect_media_type(data, media_type, what=what)
    if doc.get("schemaVersion") != 2:
        raise ManifestError(f"{what}: unsupported schemaVersion {doc.get('schemaVersion')!r}")
    subject = (
        Descriptor.from_dict(doc["subject"], where=f"{what} subject")
        if doc.get("subject")
        else None
    )
    if mt in INDEX_TYPES:
        entries = doc.get("manifests")
        if not isinstance(entries, list):
            raise ManifestError(f"{what}: index has no manifests list")
        return Index(
            media_type=mt,
            manifests=tuple(Descriptor.from_dict(m, where=what) for m in entries),
            subject=subject,
        )
    layers = doc.get("layers")
    if not isinstance(layers, list) or "config" not in doc:
        raise ManifestError(f"{what}: manifest lacks config or layers")
    ann = doc.get("annotations") or {}
    return Manifest(
        media_type=mt,
        config=Descriptor.from_dict(doc["config"], where=f"{what} config"),
        layers=tuple(Descriptor.from_dict(layer, where=f"{what} layer") for layer in layers),
        subject=subject,
        artifact_type=str(doc.get("artifactType") or ""),
        annotations={str(k): str(v) for k, v in ann.items()} if isinstance(ann, dict) else {},
    )


@dataclass(frozen=True, slots=True)
class ImageConfig:
    """The parts of an image config that fusesnap uses."""

    platform: Platform
    diff_ids: tuple[Digest, ...]
    config: dict[str, Any]
    created: str = ""

    @classmethod
    def parse(cls, data: bytes, *, what: str = "image config") -> ImageConfig:
        doc = _load_json(data, what)
        rootfs = doc.get("rootfs")
        if not isinstance(rootfs, dict) or not isinstance(rootfs.get("diff_ids"), list):
            raise ManifestError(f"{what}: lacks rootfs.diff_ids")
        try:
            diff_ids = tuple(Digest(d) for d in rootfs["diff_ids"])
        except InvalidDigestError as exc:
            raise ManifestError(f"{what}: {exc}") from None
        cfg = doc.get("config") or {}
        return cls(
            platform=Platform(
                str(doc.get("os") or "linux"),
                str(doc.get("architecture") or "unknown"),
                str(doc.get("variant") or ""),
            ),
            diff_ids=diff_ids,
            config=cfg if isinstance(cfg, dict) else {},
            created=str(doc.get("created") or ""),
        )


def chain_ids(diff_ids: Sequence[Digest | str]) -> list[str]:
    """The OCI chain ID of each layer prefix: ``chain(L0) = diff_id0``,
    ``chain(Ln) = sha256(chain(Ln-1) + " " + diff_idn)``."""
    chains: list[str] = []
    for diff_id in diff_ids:
        if not chains:
            chains.append(str(diff_id))
        else:
            text = f"{chains[-1]} {diff_id}".encode()
            chains.append(f"sha256:{hashlib.sha256(text).hexdigest()}")
    return chains
