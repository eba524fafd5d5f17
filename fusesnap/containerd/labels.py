"""The snapshot labels containerd sends, and what they say about a layer's source.

containerd's unpacker prepares each layer's snapshot with the label
``containerd.io/snapshot.ref`` = the chain ID it will commit, plus the layer
descriptor's annotations. Two sets of annotations name the image the layer
comes from; fusesnap reads either:

- CRI's (containerd's Kubernetes plugin, ``disable_snapshot_annotations = false``):
  ``containerd.io/snapshot/cri.image-ref``, ``cri.layer-digest``, ``cri.image-layers``;
- stargz-snapshotter's, which ``ctr-remote image rpull`` sends:
  ``containerd.io/snapshot/remote/stargz.reference``, ``.digest``, ``.layers``.

The ``layers`` label lists the image's layer digests from this one up (it may
be cut short to keep under containerd's label size limit); fusesnap does not
need it: it reads the manifest.

containerd refuses a label whose key and value together exceed 4096 bytes;
`check_labels` applies the same rule to what the snapshotter is sent.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from fusesnap.digest import Digest
from fusesnap.errors import FusesnapError, InvalidDigestError
from fusesnap.reference import Reference

__all__ = [
    "MAX_LABEL_SIZE",
    "REMOTE_LABEL",
    "TARGET_REF",
    "InvalidLabelError",
    "RemoteSource",
    "check_labels",
    "remote_source",
]

TARGET_REF = "containerd.io/snapshot.ref"
REMOTE_LABEL = "containerd.io/snapshot/remote"  # set on snapshots fusesnap serves lazily
MAX_LABEL_SIZE = 4096

_SOURCES = (
    (
        "containerd.io/snapshot/cri.image-ref",
        "containerd.io/snapshot/cri.layer-digest",
    ),
    (
        "containerd.io/snapshot/remote/stargz.reference",
        "containerd.io/snapshot/remote/stargz.digest",
    ),
)


class InvalidLabelError(FusesnapError):
    """A label containerd would refuse, or one whose value does not parse."""


@dataclass(frozen=True, slots=True)
class RemoteSource:
    """Where a layer can be read from: image ``ref``'s layer ``digest``; ``chain``: the
    chain ID containerd will look for once it is there."""

    ref: Reference
    digest: Digest
    chain: str


def check_labels(labels: Mapping[str, str]) -> None:
    """`InvalidLabelError` for a label over containerd's size limit, or an empty key."""
    for key, value in labels.items():
        if not key:
            raise InvalidLabelError("label with an empty key")
        size = len(key.encode()) + len(value.encode())
        if size > MAX_LABEL_SIZE:
            raise InvalidLabelError(
                f"label {key[:64]!r}: {size} bytes, over the limit of {MAX_LABEL_SIZE}"
            )


def remote_source(labels: Mapping[str, str]) -> RemoteSource | None:
    """The layer source the labels name, if they name one (module docstring); None if
    they do not. `InvalidLabelError` if they do but the reference or a digest does not
    parse."""
    chain = labels.get(TARGET_REF)
    if not chain:
        return None
    for ref_key, digest_key in _SOURCES:
        ref, digest = labels.get(ref_key), labels.get(digest_key)
        if not ref or not digest:
            continue
        try:
            return RemoteSource(Reference.parse(ref), Digest(digest), chain)
        except InvalidDigestError as exc:
            raise InvalidLabelError(f"label {digest_key}: {exc}") from None
        except ValueError as exc:
            raise InvalidLabelError(f"label {ref_key}: {exc}") from None
    return None
