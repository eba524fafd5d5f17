"""The layer index: the project's core data model, its codec and every index format.

A `LayerIndex` lists a layer's entries (`Entry`: type, mode, owner, times, xattrs,
and for a file its `ChunkRef` list: where each chunk's bytes sit in the blob,
compressed and uncompressed, and their digest). Everything else reads it: the
merged tree (`fusesnap.fs`), the lazy fetcher (`fusesnap.lazy`), the store's
layer records (as opaque bytes).

Formats that produce one, each a module: `tar` (scan a tar or tar+gzip stream,
`stream` feeds it; `gzipindex` keeps gzip checkpoints), `toc` with `estargz` and
`zstdchunked` (read a layer's own table of contents), `ztoc` and `soci` (a SOCI
zTOC, parsed, and the span-verified index it becomes), `frames` (decompress a
gzip member or zstd frame), `codec` (the stored encoding). `ztocwrite` writes
the other way: a SOCI zTOC of a gzip layer (with `zinfo` for its checkpoints and
`ztoctar` for its table of contents).

Pure and blocking: no network, no store, no trio; callers on a trio loop run
these through `fusesnap.blocking.run_blocking`; the range reads around the TOC
parsers are `fusesnap.pull`'s (module `tocs`).
"""

# codec with the package: model binds it late (it imports model), and every mount and
# pull encodes or decodes an index (a long-lived process then forks with it loaded).
from fusesnap.index import codec, estargz, gzipindex, soci, zstdchunked, ztoc, ztocwrite
from fusesnap.index.estargz import TOC_DIGEST_ANNOTATION
from fusesnap.index.frames import decompress_frame
from fusesnap.index.model import (
    DEFAULT_CHUNK_SIZE,
    FRAME_FORMATS,
    Checkpoint,
    ChunkRef,
    Entry,
    EntryType,
    LayerIndex,
    decode,
    encode,
)
from fusesnap.index.stream import Limits
from fusesnap.index.tar import build_index
from fusesnap.index.toc import MAX_TOC_SIZE
from fusesnap.index.tocrows import EncodedToc
from fusesnap.index.zstdchunked import is_zstdchunked

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "FRAME_FORMATS",
    "MAX_TOC_SIZE",
    "TOC_DIGEST_ANNOTATION",
    "Checkpoint",
    "ChunkRef",
    "EncodedToc",
    "Entry",
    "EntryType",
    "LayerIndex",
    "Limits",
    "build_index",
    "codec",
    "decode",
    "decompress_frame",
    "encode",
    "estargz",
    "gzipindex",
    "is_zstdchunked",
    "soci",
    "zstdchunked",
    "ztoc",
    "ztocwrite",
]
