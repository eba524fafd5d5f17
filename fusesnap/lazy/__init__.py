"""The registry side of fusesnap: the OCI Distribution client, pulls and layer indexes.

Public interface; other packages import from here, not from the modules::

    async with open_registry_client() as registry:
        resolved = await registry.resolve(ref, platform=None)

The names are loaded on first use (PEP 562), so that a user of the layer-index
records (`fusesnap.lazy.layerindex`, e.g. the merged tree in `fusesnap.fs`)
does not import httpx and trio with them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fusesnap.lazy.artifact import (
        ArtifactIndexes,
        PushedArtifact,
        find_index_artifact,
        push_index_artifact,
    )
    from fusesnap.lazy.blobs import BlobSink
    from fusesnap.lazy.credentials import Credentials, load_credentials
    from fusesnap.lazy.indexsource import IndexSource, ResolvedIndex, resolve_layer_index
    from fusesnap.lazy.pull import LayerOutcome, PullProgress, PullResult
    from fusesnap.lazy.registry import RegistryClient, Resolved, open_registry_client
    from fusesnap.lazy.retry import RetryPolicy

_EXPORTS = {
    "ArtifactIndexes": "fusesnap.lazy.artifact",
    "PushedArtifact": "fusesnap.lazy.artifact",
    "find_index_artifact": "fusesnap.lazy.artifact",
    "push_index_artifact": "fusesnap.lazy.artifact",
    "BlobSink": "fusesnap.lazy.blobs",
    "Credentials": "fusesnap.lazy.credentials",
    "load_credentials": "fusesnap.lazy.credentials",
    "IndexSource": "fusesnap.lazy.indexsource",
    "ResolvedIndex": "fusesnap.lazy.indexsource",
    "resolve_layer_index": "fusesnap.lazy.indexsource",
    "LayerOutcome": "fusesnap.lazy.pull",
    "PullProgress": "fusesnap.lazy.pull",
    "PullResult": "fusesnap.lazy.pull",
    "RegistryClient": "fusesnap.lazy.registry",
    "Resolved": "fusesnap.lazy.registry",
    "open_registry_client": "fusesnap.lazy.registry",
    "RetryPolicy": "fusesnap.lazy.retry",
}

__all__ = [
    "ArtifactIndexes",
    "BlobSink",
    "Credentials",
    "IndexSource",
    "LayerOutcome",
    "PullProgress",
    "PullResult",
    "PushedArtifact",
    "RegistryClient",
    "Resolved",
    "ResolvedIndex",
    "RetryPolicy",
    "find_index_artifact",
    "load_credentials",
    "open_registry_client",
    "push_index_artifact",
    "resolve_layer_index",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'fusesnap.lazy' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
