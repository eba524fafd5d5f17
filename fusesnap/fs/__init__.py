"""The merged image filesystem: layer indexes stacked into one tree, and reads from it.

Pure and synchronous (no pyfuse3, trio or httpx in these modules): the tree,
the chunk reads and the diff are a library that ``ls``/``cat``/``diff`` use
directly and that the FUSE Operations class wraps thinly. Merge rules and inode
numbering: `fusesnap.fs.tree`; reads: `fusesnap.fs.reader`; what an ELF program makes
the loader open next: `fusesnap.fs.elf`, and what a language runtime reads as it
starts: `fusesnap.fs.runtimes` (both re-exported as modules).

The kernel side (pyfuse3 operations, the chunk LRU on the trio loop) is
`fusesnap.fuse`, so that commands which never mount do not load pyfuse3 or trio.
"""

from fusesnap.fs import elf, runtimes
from fusesnap.fs.diff import Change, ChangeKind, diff_trees
from fusesnap.fs.reader import ChunkSource, chunk_slices, chunk_span, iter_file, read_file
from fusesnap.fs.tree import ROOT_INO, MergedTree, Node, TreeStats

__all__ = [
    "ROOT_INO",
    "Change",
    "ChangeKind",
    "ChunkSource",
    "MergedTree",
    "Node",
    "TreeStats",
    "chunk_slices",
    "chunk_span",
    "diff_trees",
    "elf",
    "iter_file",
    "read_file",
    "runtimes",
]
