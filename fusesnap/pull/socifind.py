"""Find soci-snapshotter's SOCI index of an image, and read a layer's zTOC in it.

    found = await find_soci_index(client, ref, resolved, layers=wanted)
    found.ztocs[layer.digest]       the zTOC blob's descriptor
    index = await read_soci_index(client, ref, found.ztocs[layer.digest], layer, diff_id)

What a SOCI index is: `fusesnap.pull.socispec` (`fusesnap.pull.socipush` pushes
them). Builders skip small layers (under 10 MiB by default): those keep their other
index sources. Two versions, tried in this order:

- **v2**: config media type (or ``artifactType``)
  ``application/vnd.amazon.soci.index.v2+json``, no subject. The image points at
  it: the image manifest, or its entry in the image index, carries
  ``com.amazon.soci.index-digest``; an image index may also list it as an entry of
  that artifact type annotated ``com.amazon.soci.image-manifest-digest`` = the image
  manifest.
- **v1**: config media type ``application/vnd.amazon.soci.index.v1+json`` and
  ``subject`` = the image manifest, found through the referrers API or, where the
  registry has none, the referrers fallback tag (as fusesnap's own index artifact).

Trust, as for fusesnap's index artifact: the index manifest and each zTOC are fetched
by digest and verified; a zTOC is untrusted input to its parser
(`fusesnap.index.soci`); every span of the layer read through it is verified against
the zTOC's span digest. A v2 index is named by the image manifest itself. An index that
does not parse or is not for this image is passed over with a warning; so is a zTOC
that does not verify, parse or fit its layer (`fusesnap.pull.indexsource` then tries
the next source).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass

from fusesnap.blocking import run_blocking
from fusesnap.digest import Digest
from fusesnap.errors import (
    InvalidDigestError,
    LayerError,
    ManifestError,
    RegistryNotFoundError,
)
from fusesnap.index import LayerIndex, soci
from fusesnap.oci import OCI_MANIFEST, Descriptor, Manifest, layer_compression
from fusesnap.oci import parse_manifest as parse_document
from fusesnap.pull.artifact import MAX_CANDIDATES, listed_referrers
from fusesnap.pull.socispec import (
    INDEX_DIGEST_ANNOTATION,
    LAYER_DIGEST_ANNOTATION,
    LAYER_MEDIA_TYPE_ANNOTATION,
    MANIFEST_DIGEST_ANNOTATION,
    SOCI_INDEX_V1,
    SOCI_INDEX_V2,
    ZTOC_MEDIA_TYPE,
)
from fusesnap.reference import Reference
from fusesnap.registry import RegistryClient, Resolved

__all__ = [
    "SociIndex",
    "find_soci_index",
    "read_soci_index",
]

log = logging.getLogger(__name__)

# A zTOC holds a 32 KiB window per span (4 MiB by default) and the TOC: 128 MiB is a
# layer of ~16 GiB, or millions of files.
MAX_ZTOC_SIZE = 128 << 20


@dataclass(frozen=True, slots=True)
class SociIndex:
    """A SOCI index of one image manifest: its zTOC blobs by image layer digest.

    ``version`` is ``v2`` or ``v1``; ``discovery`` how it was found (the image
    manifest's ``annotation``, the ``image index``, the ``referrers API``, the
    ``fallback tag``); ``fetched_bytes`` what finding it cost.
    """

    digest: Digest
    version: str
    discovery: str
    ztocs: Mapping[Digest, Descriptor]
    fetched_bytes: int = 0

    def describe(self) -> str:
        return f"SOCI index {self.version} {self.digest.short} (found through the {self.discovery})"


async def find_soci_index(
    client: RegistryClient, ref: Reference, resolved: Resolved
) -> SociIndex | None:
    """The SOCI index of ``resolved``'s image manifest, v2 first, else v1 (module
    docstring); None if there is none with a zTOC. Raise `RegistryError` only when the
    registry fails past its retries or refuses us."""
    subject = resolved.manifest.digest
    nbytes = 0
    for digest, how in _v2_candidates(resolved):
        try:
            found = await _load(client, ref, digest, SOCI_INDEX_V2, None, "v2", how)
        except (ManifestError, RegistryNotFoundError) as exc:
            log.warning("SOCI index %s of %s: ignored: %s", digest.short, ref, exc)
            continue
        if found.ztocs:
            return found
        nbytes += found.fetched_bytes
    listed, how, cost = await _v1_candidates(client, ref, subject)
    nbytes += cost
    for desc in listed[:MAX_CANDIDATES]:
        try:
            found = await _load(client, ref, desc.digest, SOCI_INDEX_V1, subject, "v1", how)
        except (ManifestError, RegistryNotFoundError) as exc:
            log.warning("SOCI index %s of %s: ignored: %s", desc.digest.short, ref, exc)
            continue
        if found.ztocs:
            return SociIndex(found.digest, "v1", how, found.ztocs, found.fetched_bytes + nbytes)
        nbytes += found.fetched_bytes
    return None


async def read_soci_index(
    client: RegistryClient,
    ref: Reference,
    ztoc: Descriptor,
    layer: Descriptor,
    diff_id: Digest,
) -> tuple[LayerIndex, int]:
    """The span-verified index of ``layer`` from zTOC ``ztoc``, and the bytes fetched.

    Raise `LayerError` if the zTOC is too large, does not parse or does not fit the
    layer; `DigestMismatchError` if the blob does not match its descriptor.
    """
    what = f"layer {layer.digest.short}: zTOC {ztoc.digest.short}"
    if ztoc.size > MAX_ZTOC_SIZE:
        raise LayerError(f"{what}: {ztoc.size} bytes, over the limit of {MAX_ZTOC_SIZE}")
    data = await client.get_blob(ref, ztoc)
    return await run_blocking(soci.index_from_ztoc, data, layer, diff_id), len(data)


def _v2_candidates(resolved: Resolved) -> list[tuple[Digest, str]]:
    """Digests the image names as its v2 SOCI index, with how it names them."""
    out: list[tuple[Digest, str]] = []
    for notes in (resolved.parsed.annotations, resolved.manifest.annotations):
        _add(out, notes.get(INDEX_DIGEST_ANNOTATION, ""), "image manifest's annotation")
    if resolved.index is not None:
        for desc in resolved.index.manifests:
            named = desc.annotations.get(MANIFEST_DIGEST_ANNOTATION)
            if desc.artifact_type == SOCI_INDEX_V2 and named == str(resolved.manifest.digest):
                _add(out, str(desc.digest), "image index")
    return out


def _add(out: list[tuple[Digest, str]], text: str, how: str) -> None:
    if not text:
        return
    try:
        digest = Digest(text)
    except InvalidDigestError:
        log.warning("%s %r is not a digest; ignored", INDEX_DIGEST_ANNOTATION, text[:100])
        return
    if all(digest != d for d, _ in out):
        out.append((digest, how))


async def _v1_candidates(
    client: RegistryClient, ref: Reference, subject: Digest
) -> tuple[list[Descriptor], str, int]:
    listed, api, nbytes = await listed_referrers(client, ref, subject, SOCI_INDEX_V1, _may_be_v1)
    return listed, "referrers API" if api else "fallback tag", nbytes


def _may_be_v1(desc: Descriptor) -> bool:
    return desc.media_type == OCI_MANIFEST and desc.artifact_type in (SOCI_INDEX_V1, "")


async def _load(
    client: RegistryClient,
    ref: Reference,
    digest: Digest,
    kind: str,
    subject: Digest | None,
    version: str,
    discovery: str,
) -> SociIndex:
    _, body = await client.get_manifest(ref, digest)  # verified against the digest
    what = f"SOCI index {digest.short}"
    parsed = parse_document(body, what=what)
    if not isinstance(parsed, Manifest) or kind not in (
        parsed.artifact_type,
        parsed.config.media_type,
    ):
        raise ManifestError(f"{what}: not a SOCI index {version}")
    if subject is not None and (parsed.subject is None or parsed.subject.digest != subject):
        raise ManifestError(f"{what}: its subject is not manifest {subject.short}")
    return SociIndex(digest, version, discovery, _ztocs(parsed, what), len(body))


def _ztocs(parsed: Manifest, what: str) -> dict[Digest, Descriptor]:
    """The index's zTOC descriptors by the image layer they name (the first of each)."""
    out: dict[Digest, Descriptor] = {}
    for blob in parsed.layers:
        if blob.media_type != ZTOC_MEDIA_TYPE:
            continue
        try:
            layer = Digest(blob.annotations.get(LAYER_DIGEST_ANNOTATION, ""))
        except InvalidDigestError:
            log.warning("%s: zTOC %s names no layer; ignored", what, blob.digest.short)
            continue
        media_type = blob.annotations.get(LAYER_MEDIA_TYPE_ANNOTATION, "")
        if media_type and _compression(media_type) != "gzip":
            log.warning("%s: zTOC %s: not for a gzip layer; ignored", what, blob.digest.short)
            continue
        out.setdefault(layer, blob)
    return out


def _compression(media_type: str) -> str:
    try:
        return layer_compression(media_type)
    except ManifestError:
        return ""
