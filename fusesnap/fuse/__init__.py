"""The kernel side of a mount: pyfuse3 operations over a merged tree.

`FuseOperations` (module `operations`) answers lookup/getattr/readdir/read from a
`fusesnap.fs.MergedTree`; `ImageSource` (`source`) is what it serves, reading
chunks through `ChunkCache` (`cache`: the byte-bounded LRU of 64 KiB chunk pieces on
the trio loop, one load per missing range); `attrs` and `lookups` build the kernel's stat and entry
replies. Kept apart from `fusesnap.fs` so that ``ls``/``cat``/``diff`` never load
pyfuse3 or trio. `handover` lets a new daemon take a mounted connection over.
"""

from fusesnap.fuse.cache import DEFAULT_MAX_BYTES, PIECE_SIZE, ChunkCache, ChunkRanges, LoadRange
from fusesnap.fuse.handover import FUSE_BUFFER, Handover, answer_eio, resend
from fusesnap.fuse.operations import FuseOperations, fuse_session, mount_options, serve, terminate
from fusesnap.fuse.source import ImageSource

__all__ = [
    "DEFAULT_MAX_BYTES",
    "FUSE_BUFFER",
    "PIECE_SIZE",
    "ChunkCache",
    "ChunkRanges",
    "FuseOperations",
    "Handover",
    "ImageSource",
    "LoadRange",
    "answer_eio",
    "fuse_session",
    "mount_options",
    "resend",
    "serve",
    "terminate",
]
