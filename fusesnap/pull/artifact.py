"""The fusesnap index artifact: an image's layer indexes, as an OCI 1.1 referrer of its manifest.

    pushed = await push_index_artifact(client, ref, resolved.manifest, indexes)
    pushed.digest, pushed.discovery      "referrers" (the API lists it) or "tag"
    found = await find_index_artifact(client, ref, resolved.manifest.digest)   (artifactfind)
    found.indexes[layer.digest]          a LayerIndex, decoded from a verified blob

Format: an OCI image manifest used as an artifact (image-spec 1.1)::

    {"schemaVersion": 2,
     "mediaType": "application/vnd.oci.image.manifest.v1+json",
     "artifactType": "application/vnd.fusesnap.index.v1",
     "config": {"mediaType": "application/vnd.oci.empty.v1+json",
                "digest": "sha256:44136fa3…", "size": 2, "data": "e30="},      (the bytes {})
     "layers": [{"mediaType": "application/vnd.fusesnap.layer-index.v3+zstd",
                 "digest": <sha256 of layercodec.encode(index)>, "size": …,
                 "annotations": {"io.fusesnap.layer.digest": <image layer digest>}},
                {"mediaType": "application/vnd.fusesnap.gzip-windows.v1",
                 "digest": <sha256 of the windows blob>, "size": …,
                 "annotations": {"io.fusesnap.layer.digest": <image layer digest>}}, …],
     "subject": {<the image manifest's mediaType, digest, size>},
     "annotations": {"org.opencontainers.image.created": <RFC 3339, UTC>}}

An access profile (`fusesnap.lazy.profile`: which chunks the image's start read, in
order) may come along as one more blob of media type
``application/vnd.fusesnap.access-profile.v1+json``; a lazy pull keeps it for prefetch.

One index blob per image layer, in layer order; a layer listed twice in the image is
indexed once. The blob is an encoded `LayerIndex` (`fusesnap.index.codec`, format 3;
format 2 blobs, ``layer-index.v2+zstd``, are still read). A gzip layer's index names its
checkpoints' 32 KiB windows by digest and points into a windows blob pushed beside it
(each window's zstd frame, in checkpoint order), so a reader fetches the small index at
mount and then only the windows of the spans it reads, by range.

Discovery. A registry with the referrers API (``GET /v2/<repo>/referrers/<digest>``)
lists the artifact once its manifest is pushed with a ``subject``. One without it (404;
Distribution 2.8) gets the referrers tag schema: the tag ``sha256-<hex of the subject
digest>`` holds an OCI index of referrer descriptors; the pusher reads it (404: empty),
adds its descriptor (with ``artifactType`` and the manifest's annotations) and puts it
back. Two pushers racing on that tag can lose one update (the spec's known limit).
`find_index_artifact` asks the API first and reads the tag only where the API is missing,
as the distribution spec says; of several fusesnap artifacts, the newest is used.

Trust. The artifact manifest and every index blob are fetched by digest, and the client
verifies both; `decode` treats a blob as untrusted input. An index belongs to its layer
only if it says so (layer digest here; diff ID and size in `fusesnap.pull.indexsource`),
and every chunk read through it is verified against the index's digests. Whoever may push
to the repository may push an index for it, as they may push the image. A blob that does
not verify or decode is skipped with a warning, an artifact that does not parse too: that
layer falls back to the next index source, never to wrong data.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import trio

from fusesnap.blocking import run_blocking
from fusesnap.digest import Digest
from fusesnap.errors import (
    AuthenticationError,
    LayerError,
    ManifestError,
    RegistryError,
    RegistryNotFoundError,
    RegistryUnavailableError,
)
from fusesnap.index import LayerIndex, encode
from fusesnap.lazy import AccessProfile, LoadWindows, with_windows_blob
from fusesnap.lazy import profile as profiles
from fusesnap.oci import OCI_EMPTY, OCI_INDEX, OCI_MANIFEST, Descriptor, Index
from fusesnap.oci import parse_manifest as parse_document
from fusesnap.reference import Reference
from fusesnap.registry import RegistryClient

__all__ = [
    "ARTIFACT_TYPE",
    "CREATED_ANNOTATION",
    "EMPTY_CONFIG",
    "LAYER_DIGEST_ANNOTATION",
    "LAYER_INDEX_MEDIA_TYPE",
    "ArtifactIndexes",
    "PushedArtifact",
    "fallback_tag",
    "push_index_artifact",
]

log = logging.getLogger(__name__)


ARTIFACT_TYPE = "application/vnd.fusesnap.index.v1"
LAYER_INDEX_MEDIA_TYPE = "application/vnd.fusesnap.layer-index.v3+zstd"
LAYER_INDEX_MEDIA_TYPES = frozenset(
    {LAYER_INDEX_MEDIA_TYPE, "application/vnd.fusesnap.layer-index.v2+zstd"}
)
WINDOWS_MEDIA_TYPE = "application/vnd.fusesnap.gzip-windows.v1"
LAYER_DIGEST_ANNOTATION = "io.fusesnap.layer.digest"
CREATED_ANNOTATION = "org.opencontainers.image.created"
EMPTY_JSON = b"{}"
EMPTY_CONFIG = Descriptor(OCI_EMPTY, Digest.of(EMPTY_JSON), len(EMPTY_JSON))
# An encoded index is a small fraction of its layer; a bigger blob is hostile or broken.
MAX_INDEX_BLOB = 256 << 20
MAX_PROFILE_BLOB = 16 << 20
# Artifacts tried, newest first, before giving up on the source.
MAX_CANDIDATES = 8


@dataclass(frozen=True, slots=True)
class PushedArtifact:
    """What `push_index_artifact` did. ``discovery`` is ``referrers`` (the registry's API
    lists the artifact) or ``tag`` (the fallback tag ``tag`` lists it). ``layers`` counts
    layer indexes, ``windows_bytes`` the gzip windows blobs beside them."""

    digest: Digest
    size: int
    layers: int
    index_bytes: int
    discovery: str
    tag: str | None = None
    windows_bytes: int = 0
    profile: bool = False

    def describe(self) -> str:
        if self.discovery == "referrers":
            return "the referrers API"
        return f"the fallback tag {self.tag}"


@dataclass(frozen=True, slots=True)
class ArtifactIndexes:
    """The usable layer indexes of one index artifact, by image layer digest.

    ``fetched_bytes`` counts what finding it cost (listings, manifests, blobs);
    ``encoded`` holds each index's blob (the store keeps it as it is).
    """

    digest: Digest
    discovery: str
    indexes: Mapping[Digest, LayerIndex]
    fetched_bytes: int = 0
    created: str = ""
    profile: AccessProfile | None = None
    encoded: Mapping[Digest, bytes] = dataclasses.field(default_factory=dict, repr=False)


def fallback_tag(subject: Digest) -> str:
    """The referrers tag of ``subject``: ``<algorithm>-<hex>``, the algorithm cut to 32
    characters and the hex to 64 (distribution-spec 1.1, "Referrers Tag Schema")."""
    return f"{subject.algorithm[:32]}-{subject.hex[:64]}"


def _now() -> str:
    now = datetime.datetime.now(datetime.UTC)
    return now.isoformat(timespec="milliseconds").replace("+00:00", "Z")


# -- push ------------------------------------------------------------------------------------


async def push_index_artifact(
    client: RegistryClient,
    ref: Reference,
    manifest_desc: Descriptor,
    indexes: Sequence[LayerIndex],
    *,
    load_windows: LoadWindows | None = None,
    profile: AccessProfile | None = None,
    created: str | None = None,
) -> PushedArtifact:
    """Push ``indexes`` (of the image manifest ``manifest_desc``, in layer order) as an
    index artifact and make it discoverable (module docstring); return what was pushed.

    ``load_windows(digests)`` (blocking; the chunk store's ``get_many``) supplies the
    gzip windows an index names but does not carry; `LayerError` if one is missing.
    ``profile`` (of this image) goes along for the prefetch of whoever pulls it.

    Blobs the repository has already are not uploaded again. The client asks for
    ``push`` scope for the uploads. Raise `RegistryError` when the registry refuses,
    `ManifestError` if the fallback tag holds something other than an image index
    (it is not overwritten).
    """
    if not indexes:
        raise ValueError("an index artifact needs at least one layer index")
    unique = list({index.layer_digest: index for index in indexes}.values())
    layers = []
    blobs = []
    for index in unique:
        annotations = {LAYER_DIGEST_ANNOTATION: str(index.layer_digest)}
        cp = index.checkpoints
        if cp is not None and cp.windows_blob is not None:
            # Came from an index artifact: its windows blob is in the registry already.
            if not await client.blob_exists(ref, cp.windows_blob):
                raise LayerError(
                    f"layer {index.layer_digest.short}: the windows blob "
                    f"{cp.windows_blob.short} of its index is not in {ref}"
                )
            layers.append(
                Descriptor(
                    WINDOWS_MEDIA_TYPE,
                    cp.windows_blob,
                    sum(p.wclength for p in cp.points),
                    annotations=annotations,
                )
            )
        else:
            index, windows = await run_blocking(with_windows_blob, index, load_windows)
            if windows is not None:
                wdigest = Digest.of(windows)
                await _ensure_blob(client, ref, windows, wdigest)
                layers.append(
                    Descriptor(WINDOWS_MEDIA_TYPE, wdigest, len(windows), annotations=annotations)
                )
        data = await run_blocking(encode, index)
        blobs.append(data)
        digest = Digest.of(data)
        await _ensure_blob(client, ref, data, digest)
        layers.append(
            Descriptor(LAYER_INDEX_MEDIA_TYPE, digest, len(data), annotations=annotations)
        )
    if profile is not None:
        if profile.image != str(manifest_desc.digest):
            raise ValueError(f"the access profile is of {profile.image}, not this image")
        data = profiles.encode(profile)
        await _ensure_blob(client, ref, data, Digest.of(data))
        layers.append(Descriptor(profiles.MEDIA_TYPE, Digest.of(data), len(data)))
    await _ensure_blob(client, ref, EMPTY_JSON, EMPTY_CONFIG.digest)
    annotations = {CREATED_ANNOTATION: created or _now()}
    body = _manifest_bytes(manifest_desc, layers, annotations)
    digest = await client.put_manifest(ref, body, OCI_MANIFEST, tag=None)
    index_bytes = sum(len(b) for b in blobs)
    windows_bytes = sum(d.size for d in layers if d.media_type == WINDOWS_MEDIA_TYPE)
    listed = await referrers(client, ref, manifest_desc.digest)
    if listed is not None:
        if all(d.digest != digest for d in listed):
            # The API may list a new referrer a little later; the push itself is done.
            log.debug("%s: referrers of %s do not list %s yet", ref, manifest_desc.digest, digest)
        return PushedArtifact(
            digest,
            len(body),
            len(unique),
            index_bytes,
            "referrers",
            windows_bytes=windows_bytes,
            profile=profile is not None,
        )
    desc = Descriptor(
        OCI_MANIFEST, digest, len(body), annotations=annotations, artifact_type=ARTIFACT_TYPE
    )
    tag = await _add_to_fallback_tag(client, ref, manifest_desc.digest, desc)
    return PushedArtifact(
        digest,
        len(body),
        len(unique),
        index_bytes,
        "tag",
        tag,
        windows_bytes=windows_bytes,
        profile=profile is not None,
    )


async def _ensure_blob(client: RegistryClient, ref: Reference, data: bytes, digest: Digest) -> None:
    if not await client.blob_exists(ref, digest):
        await client.put_blob(ref, data, digest)


def _manifest_bytes(
    subject: Descriptor, layers: Sequence[Descriptor], annotations: Mapping[str, str]
) -> bytes:
    config = EMPTY_CONFIG.to_dict()
    config["data"] = base64.b64encode(EMPTY_JSON).decode()
    doc = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": ARTIFACT_TYPE,
        "config": config,
        "layers": [d.to_dict() for d in layers],
        "subject": Descriptor(subject.media_type, subject.digest, subject.size).to_dict(),
        "annotations": dict(annotations),
    }
    return json.dumps(doc, separators=(",", ":")).encode()


async def referrers(
    client: RegistryClient,
    ref: Reference,
    subject: Digest,
    artifact_type: str = ARTIFACT_TYPE,
    accept: Callable[[Descriptor], bool] | None = None,
) -> tuple[Descriptor, ...] | None:
    """The referrers of ``subject`` of ``artifact_type`` that ``accept`` takes (default:
    ours) as the referrers API lists them; None without the API."""
    try:
        found = await client.get_referrers(ref, subject, artifact_type)
    except (AuthenticationError, RegistryUnavailableError):
        raise
    except (RegistryError, ManifestError) as exc:
        # Some registries answer the unknown route with 400 or 405 rather than 404.
        log.debug("%s: no usable referrers API (%s)", ref, exc)
        return None
    if found is None:
        return None
    return tuple(d for d in found.manifests if (accept or is_ours)(d))


async def listed_referrers(
    client: RegistryClient,
    ref: Reference,
    subject: Digest,
    artifact_type: str,
    accept: Callable[[Descriptor], bool],
) -> tuple[list[Descriptor], bool, int]:
    """The referrers of ``subject`` that ``accept`` takes: from the referrers API, else
    from the referrers tag; whether the API answered, and the bytes the tag cost.

    Both are asked at once: where the API is missing (as in most registries today) that
    is one round trip instead of two. The tag's answer, or its error, counts only then.
    """
    api: list[tuple[Descriptor, ...] | None] = []
    tagged: list[bytes | None] = []
    failed: dict[str, BaseException] = {}

    async def ask_api() -> None:
        try:
            api.append(await referrers(client, ref, subject, artifact_type, accept))
        except Exception as exc:
            failed["api"] = exc

    async def ask_tag() -> None:
        try:
            tagged.append((await client.get_manifest(ref, fallback_tag(subject)))[1])
        except RegistryNotFoundError:
            tagged.append(None)
        except Exception as exc:
            failed["tag"] = exc

    async with trio.open_nursery() as nursery:
        nursery.start_soon(ask_api)
        nursery.start_soon(ask_tag)
    if "api" in failed:
        raise failed["api"]
    if api and api[0] is not None:
        return list(api[0]), True, 0
    if "tag" in failed:
        raise failed["tag"]
    body = tagged[0]
    if body is None:
        return [], False, 0
    tag = fallback_tag(subject)
    try:
        parsed = parse_document(body, what=f"referrers tag {ref.name}:{tag}")
    except ManifestError as exc:
        log.warning("%s: ignoring the referrers tag: %s", ref, exc)
        return [], False, len(body)
    if not isinstance(parsed, Index):
        log.warning("%s: referrers tag %s is not an image index; ignored", ref, tag)
        return [], False, len(body)
    return [d for d in parsed.manifests if accept(d)], False, len(body)


def is_ours(desc: Descriptor) -> bool:
    return desc.artifact_type == ARTIFACT_TYPE and desc.media_type == OCI_MANIFEST


async def _add_to_fallback_tag(
    client: RegistryClient, ref: Reference, subject: Digest, desc: Descriptor
) -> str:
    tag = fallback_tag(subject)
    doc: dict[str, Any] = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []}
    try:
        _, body = await client.get_manifest(ref, tag)
    except RegistryNotFoundError:
        pass
    else:
        parsed = parse_document(body, what=f"referrers tag {ref.name}:{tag}")
        if not isinstance(parsed, Index):
            raise ManifestError(
                f"referrers tag {ref.name}:{tag} holds an image manifest, not an index; "
                f"not overwriting it"
            )
        doc = json.loads(body)  # kept as it is, so that fields we do not know survive
        doc["mediaType"] = OCI_INDEX
    doc["manifests"] = [m for m in doc["manifests"] if m.get("digest") != desc.digest]
    doc["manifests"].append(desc.to_dict())
    await client.put_manifest(
        ref, json.dumps(doc, separators=(",", ":")).encode(), OCI_INDEX, tag=tag
    )
    return tag
