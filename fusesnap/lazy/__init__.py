"""What makes reads lazy: chunks fetched on demand, verified and stored.

`ChunkFetcher` (module `fetcher`) turns "I need these chunks of this layer" into the
fewest byte-range reads its `limits` allow (`ranges`: where a chunk's bytes are in
the blob; `windows`: gzip windows for layers without checkpoints; `spandecode`:
cutting a fetched span into verified chunks; `writer`: storing them in the background,
in batches; `local`: what is here already), with one flight per chunk. It depends on two narrow
interfaces only: a range reader (`FetchRange`, wired to a registry by
`fusesnap.pull.open_registry_fetcher`) and a chunk store (`ChunkStorage`).
`LazyChunks` (module `chunks`) maps an image's chunk digests to their layers for
a mount; `prefetch` and `profile` decide what to fetch before it is read.
"""

from fusesnap.lazy import profile
from fusesnap.lazy.chunks import LazyChunks
from fusesnap.lazy.fetcher import ChunkFetcher, FetchRange, open_chunk_fetcher
from fusesnap.lazy.limits import FetchLimits, FetchStats, PrefetchResult
from fusesnap.lazy.local import ChunkStorage
from fusesnap.lazy.prefetch import PrefetchPlan, run_prefetch
from fusesnap.lazy.profile import AccessProfile, ProfileError
from fusesnap.lazy.ranges import check_random_access, layout_of
from fusesnap.lazy.windows import LoadWindows, with_windows_blob

__all__ = [
    "AccessProfile",
    "ChunkFetcher",
    "ChunkStorage",
    "FetchLimits",
    "FetchRange",
    "FetchStats",
    "LazyChunks",
    "LoadWindows",
    "PrefetchPlan",
    "PrefetchResult",
    "ProfileError",
    "check_random_access",
    "layout_of",
    "open_chunk_fetcher",
    "profile",
    "run_prefetch",
    "with_windows_blob",
]
