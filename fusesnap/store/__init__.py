"""The local store: LMDB content, images, leases, layers, chunks and
garbage collection.

Synchronous by design (no trio, httpx or pyfuse3 here): async callers run
these methods through `fusesnap.blocking.run_blocking`, one short
transaction per call. Layout and versioning: `fusesnap.store.schema`.
"""

from fusesnap.store.cache import KEEP, REMOTE, CacheUsage, StoreCache
from fusesnap.store.chunks import FRAME_SIZE as CHUNK_FRAME_SIZE
from fusesnap.store.chunks import ChunkPutStats, ChunkStats, ChunkStore
from fusesnap.store.collect import GCResult, collect_garbage
from fusesnap.store.content import ContentStore
from fusesnap.store.env import any_open
from fusesnap.store.images import ImageStore
from fusesnap.store.ingest import ContentWriter
from fusesnap.store.layers import ChunkPresence, LayerStore, pack_chunk_digests
from fusesnap.store.leases import LeaseManager
from fusesnap.store.records import (
    CONTENT,
    ContentInfo,
    ImageRecord,
    IngestInfo,
    LayerInfo,
    LayerRecord,
    LeaseRecord,
    Resource,
)
from fusesnap.store.snapshots import (
    ACTIVE,
    COMMITTED,
    VIEW,
    ContainerRef,
    ContainerStore,
    SnapshotInUseError,
    SnapshotRecord,
    SnapshotStateError,
    SnapshotStore,
)
from fusesnap.store.store import Store, default_root, open_store

__all__ = [
    "ACTIVE",
    "CHUNK_FRAME_SIZE",
    "COMMITTED",
    "CONTENT",
    "KEEP",
    "REMOTE",
    "VIEW",
    "CacheUsage",
    "ChunkPresence",
    "ChunkPutStats",
    "ChunkStats",
    "ChunkStore",
    "ContainerRef",
    "ContainerStore",
    "ContentInfo",
    "ContentStore",
    "ContentWriter",
    "GCResult",
    "ImageRecord",
    "ImageStore",
    "IngestInfo",
    "LayerInfo",
    "LayerRecord",
    "LayerStore",
    "LeaseManager",
    "LeaseRecord",
    "Resource",
    "SnapshotInUseError",
    "SnapshotRecord",
    "SnapshotStateError",
    "SnapshotStore",
    "Store",
    "StoreCache",
    "any_open",
    "collect_garbage",
    "default_root",
    "open_store",
    "pack_chunk_digests",
]
