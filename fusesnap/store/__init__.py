"""The local store: LMDB content, images, leases and garbage collection.

Synchronous by design (no trio, httpx or pyfuse3 here): async callers run
these methods through `fusesnap.blocking.run_blocking`, one short
transaction per call. Layout and versioning: `fusesnap.store.schema`.
"""

from fusesnap.store.collect import GCResult, collect_garbage
from fusesnap.store.content import ContentStore
from fusesnap.store.images import ImageStore
from fusesnap.store.ingest import ContentWriter
from fusesnap.store.leases import LeaseManager
from fusesnap.store.records import ContentInfo, ImageRecord, IngestInfo, LeaseRecord, Resource
from fusesnap.store.store import Store, default_root, open_store

__all__ = [
    "ContentInfo",
    "ContentStore",
    "ContentWriter",
    "GCResult",
    "ImageRecord",
    "ImageStore",
    "IngestInfo",
    "LeaseManager",
    "LeaseRecord",
    "Resource",
    "Store",
    "collect_garbage",
    "default_root",
    "open_store",
]
