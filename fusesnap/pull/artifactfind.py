"""Finding an image's fusesnap index artifact in a registry and loading its indexes.

The format, the discovery rules and the trust model are `fusesnap.pull.artifact`'s;
this is the reading side: list the candidates (the referrers API, else the
referrers tag), try them newest first, fetch the wanted index blobs side by side
and keep those that verify, decode and name their layer.
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
from collections.abc import Collection, Sequence

import trio

from fusesnap.blocking import run_blocking
from fusesnap.digest import Digest
from fusesnap.errors import (
    DigestMismatchError,
    InvalidDigestError,
    LayerError,
    ManifestError,
    RegistryNotFoundError,
)
from fusesnap.index import LayerIndex, decode
from fusesnap.lazy import AccessProfile, ProfileError
from fusesnap.lazy import profile as profiles
from fusesnap.oci import Descriptor, Manifest
from fusesnap.oci import parse_manifest as parse_document
from fusesnap.pull.artifact import (
    ARTIFACT_TYPE,
    CREATED_ANNOTATION,
    LAYER_DIGEST_ANNOTATION,
    LAYER_INDEX_MEDIA_TYPES,
    MAX_CANDIDATES,
    MAX_INDEX_BLOB,
    MAX_PROFILE_BLOB,
    ArtifactIndexes,
    is_ours,
    listed_referrers,
)
from fusesnap.reference import Reference
from fusesnap.registry import RegistryClient

__all__ = ["find_index_artifact"]

log = logging.getLogger(__name__)


async def find_index_artifact(
    client: RegistryClient,
    ref: Reference,
    manifest_digest: Digest,
    *,
    layers: Collection[Digest] | None = None,
) -> ArtifactIndexes | None:
    """The newest usable fusesnap index artifact of image manifest ``manifest_digest``,
    or None if there is none (module docstring: discovery, trust).

    ``layers``: fetch the index blobs of these layers only (default: all). An artifact
    that does not parse or names another subject is skipped with a warning and the next
    newest tried; so is one none of whose wanted blobs verifies and decodes.

    Raise `RegistryError` only when the registry fails (past retries) or refuses us.
    """
    candidates, discovery, nbytes = await _candidates(client, ref, manifest_digest)
    for desc in _newest_first(candidates)[:MAX_CANDIDATES]:
        try:
            found = await _load(client, ref, manifest_digest, desc, layers, discovery)
        except (ManifestError, DigestMismatchError, RegistryNotFoundError) as exc:
            log.warning("index artifact %s of %s: ignored: %s", desc.digest.short, ref, exc)
            continue
        nbytes += found.fetched_bytes
        if found.indexes or (layers is not None and not layers):
            return dataclasses.replace(found, fetched_bytes=nbytes)
    return None


async def _candidates(
    client: RegistryClient, ref: Reference, subject: Digest
) -> tuple[list[Descriptor], str, int]:
    listed, api, nbytes = await listed_referrers(client, ref, subject, ARTIFACT_TYPE, is_ours)
    return listed, "referrers" if api else "tag", nbytes


def _created(desc: Descriptor) -> datetime.datetime:
    text = desc.annotations.get(CREATED_ANNOTATION, "")
    try:
        when = datetime.datetime.fromisoformat(text)
    except ValueError:
        return datetime.datetime.min.replace(tzinfo=datetime.UTC)
    return when if when.tzinfo else when.replace(tzinfo=datetime.UTC)


def _newest_first(candidates: Sequence[Descriptor]) -> list[Descriptor]:
    """By creation time, newest first; the same time: the one listed later first."""
    order = sorted(enumerate(candidates), key=lambda p: (_created(p[1]), p[0]), reverse=True)
    return [d for _, d in order]


async def _load(
    client: RegistryClient,
    ref: Reference,
    subject: Digest,
    desc: Descriptor,
    layers: Collection[Digest] | None,
    discovery: str,
) -> ArtifactIndexes:
    _, body = await client.get_manifest(ref, desc.digest)  # verified against the digest
    what = f"index artifact {desc.digest.short}"
    parsed = parse_document(body, what=what)
    if not isinstance(parsed, Manifest) or parsed.artifact_type != ARTIFACT_TYPE:
        raise ManifestError(f"{what}: not a fusesnap index artifact")
    if parsed.subject is None or parsed.subject.digest != subject:
        raise ManifestError(f"{what}: its subject is not manifest {subject.short}")
    nbytes = len(body)
    indexes: dict[Digest, LayerIndex] = {}
    profile_blob: Descriptor | None = None
    candidates: dict[Digest, list[Descriptor]] = {}  # by layer, in artifact order
    for blob in parsed.layers:
        if blob.media_type == profiles.MEDIA_TYPE:
            profile_blob = profile_blob or blob
            continue
        if blob.media_type not in LAYER_INDEX_MEDIA_TYPES:
            continue  # a windows blob (fetched by range when needed), or an unknown format
        try:
            layer = Digest(blob.annotations.get(LAYER_DIGEST_ANNOTATION, ""))
        except InvalidDigestError:
            log.warning("%s: blob %s names no layer; ignored", what, blob.digest.short)
            continue
        if layers is not None and layer not in layers:
            continue
        if blob.size > MAX_INDEX_BLOB:
            log.warning(
                "%s: index of layer %s is %d bytes, over the limit; ignored",
                what,
                layer.short,
                blob.size,
            )
            continue
        candidates.setdefault(layer, []).append(blob)
    errors: list[Exception] = []
    encoded: dict[Digest, bytes] = {}

    async def load_layer(layer: Digest, blobs: list[Descriptor]) -> None:
        nonlocal nbytes
        for blob in blobs:  # the first that is sound
            try:
                data = await client.get_blob(ref, blob)
                nbytes += len(data)
                index = await run_blocking(decode, data)
            except (DigestMismatchError, LayerError, RegistryNotFoundError) as exc:
                log.warning("%s: index of layer %s ignored: %s", what, layer.short, exc)
                continue
            except Exception as exc:  # the registry failing: raised below, as itself
                errors.append(exc)
                return
            if index.layer_digest != layer:
                log.warning(
                    "%s: blob for layer %s holds the index of %s; ignored",
                    what,
                    layer.short,
                    index.layer_digest.short,
                )
                continue
            indexes[layer] = index
            encoded[layer] = data
            return

    profile: list[AccessProfile | None] = [None]

    async def load_profile(blob: Descriptor) -> None:
        nonlocal nbytes
        try:
            profile[0] = await _load_profile(client, ref, blob, subject, what)
        except Exception as exc:  # the registry failing: raised below, as itself
            errors.append(exc)
            return
        nbytes += blob.size if profile[0] is not None else 0

    # Side by side: at mount time each round trip counts.
    async with trio.open_nursery() as nursery:
        if profile_blob is not None:
            nursery.start_soon(load_profile, profile_blob)
        for layer, blobs in candidates.items():
            nursery.start_soon(load_layer, layer, blobs)
    if errors:
        raise errors[0]
    indexes = {layer: indexes[layer] for layer in candidates if layer in indexes}
    created = parsed.annotations.get(CREATED_ANNOTATION, "")
    return ArtifactIndexes(desc.digest, discovery, indexes, nbytes, created, profile[0], encoded)


async def _load_profile(
    client: RegistryClient, ref: Reference, blob: Descriptor, subject: Digest, what: str
) -> AccessProfile | None:
    """The artifact's access profile of ``subject``; None (logged) if it is not one."""
    if blob.size > MAX_PROFILE_BLOB:
        log.warning("%s: access profile of %d bytes, over the limit; ignored", what, blob.size)
        return None
    try:
        profile = profiles.decode(await client.get_blob(ref, blob))
    except (DigestMismatchError, ProfileError, RegistryNotFoundError) as exc:
        log.warning("%s: access profile ignored: %s", what, exc)
        return None
    if profile.image != str(subject):
        log.warning("%s: access profile of %s, not %s; ignored", what, profile.image, subject)
        return None
    return profile
