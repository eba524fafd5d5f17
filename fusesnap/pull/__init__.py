"""Pull orchestration: registry -> layer index -> store, in one place.

`pull` (module `image`) resolves a reference, stores the manifest and config, and
for each layer finds an index (`indexsource`: in the store, the layer's own eStargz /
zstd:chunked TOC, an index artifact in the registry, a SOCI zTOC (`socifind`), else a
scan of the blob by `indexing`), then records the image. A lazy pull stops
there; a full pull fetches every chunk. `artifact` finds and pushes index artifacts;
`socipush` pushes SOCI indexes (v2) that soci-snapshotter and `socifind` read;
`open_registry_fetcher` (module `fetching`) wires a lazy fetcher to a registry.
"""

from fusesnap.pull.artifact import PushedArtifact, push_index_artifact
from fusesnap.pull.earlytoc import toc_source
from fusesnap.pull.fetching import open_registry_fetcher
from fusesnap.pull.image import PullProgress, PullResult, pull
from fusesnap.pull.indexing import ingest_layer_file
from fusesnap.pull.indexsource import describe_source, layer_complete
from fusesnap.pull.layers import LayerOutcome
from fusesnap.pull.socipush import PushedSoci, SociOptions, push_soci_index
from fusesnap.pull.tocs import Fetch, read_estargz_index, read_zstdchunked_index

__all__ = [
    "Fetch",
    "LayerOutcome",
    "PullProgress",
    "PullResult",
    "PushedArtifact",
    "PushedSoci",
    "SociOptions",
    "describe_source",
    "ingest_layer_file",
    "layer_complete",
    "open_registry_fetcher",
    "pull",
    "push_index_artifact",
    "push_soci_index",
    "read_estargz_index",
    "read_zstdchunked_index",
    "toc_source",
]
