"""The system's zlib through ``ctypes``, for the two passes that need ``Z_BLOCK``.

Python's ``zlib`` module does not say where deflate blocks end (``Z_BLOCK`` and
``data_type``), which both a gzip checkpoint pass (`fusesnap.index.inflate`) and
soci's zTOC placement (`fusesnap.index.zinfo`) need. This module holds what they
share: the ``z_stream`` layout, the library with its signatures, zlib's constants.
ctypes releases the GIL during each call, so inflating overlaps with other threads.
"""

from __future__ import annotations

import ctypes
import ctypes.util

__all__ = [
    "END_OF_BLOCK",
    "LAST_BLOCK",
    "WINDOW_SIZE",
    "Z_BLOCK",
    "Z_BUF_ERROR",
    "Z_DATA_ERROR",
    "Z_MEM_ERROR",
    "Z_NEED_DICT",
    "Z_OK",
    "Z_STREAM_END",
    "ZStream",
    "libz",
]

WINDOW_SIZE = 32768  # deflate's window: the output a checkpoint must carry

Z_OK, Z_STREAM_END, Z_NEED_DICT = 0, 1, 2
Z_DATA_ERROR, Z_MEM_ERROR, Z_BUF_ERROR = -3, -4, -5
Z_BLOCK = 5
END_OF_BLOCK = 128  # data_type: inflate stopped at a block boundary (or after the header)
LAST_BLOCK = 64  # data_type: the block being decoded is the member's last


class ZStream(ctypes.Structure):
    """zlib's ``z_stream``."""

    _fields_ = (
        ("next_in", ctypes.c_void_p),
        ("avail_in", ctypes.c_uint),
        ("total_in", ctypes.c_ulong),
        ("next_out", ctypes.c_void_p),
        ("avail_out", ctypes.c_uint),
        ("total_out", ctypes.c_ulong),
        ("msg", ctypes.c_char_p),
        ("state", ctypes.c_void_p),
        ("zalloc", ctypes.c_void_p),
        ("zfree", ctypes.c_void_p),
        ("opaque", ctypes.c_void_p),
        ("data_type", ctypes.c_int),
        ("adler", ctypes.c_ulong),
        ("reserved", ctypes.c_ulong),
    )


def _load() -> ctypes.CDLL:
    try:
        lib = ctypes.CDLL("libz.so.1")
    except OSError:
        name = ctypes.util.find_library("z")
        if name is None:
            raise
        lib = ctypes.CDLL(name)
    ptr = ctypes.POINTER(ZStream)
    lib.zlibVersion.restype = ctypes.c_char_p
    lib.inflateInit2_.argtypes = (ptr, ctypes.c_int, ctypes.c_char_p, ctypes.c_int)
    lib.inflate.argtypes = (ptr, ctypes.c_int)
    lib.inflateReset.argtypes = (ptr,)
    lib.inflateEnd.argtypes = (ptr,)
    return lib


_lib: ctypes.CDLL | None = None


def libz() -> ctypes.CDLL:
    """The library, loaded on first use."""
    global _lib
    if _lib is None:
        _lib = _load()
    return _lib
