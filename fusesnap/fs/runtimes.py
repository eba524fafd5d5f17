"""What a known language runtime reads as it starts, beyond its ELF libraries.

A lazy mount fetches what an opened program's loader will open next
(`fusesnap.mountd.openfetch`); a language runtime then reads files of its own,
one after another, each a registry round trip when cold. For the runtimes
known here, `startup_candidates` names them from the program's path alone, so
that they can come beside the program's libraries instead.

CPython 3 (a program named ``pythonX.Y``; its prefix is the directory above
the program's): it sets a UTF-8 locale (PEP 538 coerces the C locale to
C.UTF-8), for which glibc loads the locale's character table and its gconv
module cache, and it imports the ``encodings`` package, the alias table and the
UTF-8 codec before anything else; Debian's Python then imports its
``sitecustomize``. Each module is named as the compiled file Python loads (its
source is only stat'ed).
"""

from __future__ import annotations

import posixpath
import re

from fusesnap.fs.elf import multiarch

__all__ = ["startup_candidates"]

_PYTHON = re.compile(r"^python(3)\.(\d{1,2})$")
_PYTHON_MODULES = ("encodings/__init__", "encodings/aliases", "encodings/utf_8", "sitecustomize")
_C_UTF8_CTYPE = "/usr/lib/locale/C.utf8/LC_CTYPE"
_GCONV_DIRS = ("/usr/lib64", "/usr/lib")  # glibc's libdir, after the multiarch one
_GCONV_CACHE = "gconv/gconv-modules.cache"


def startup_candidates(program: str, machine: int) -> list[list[str]]:
    """For each file the runtime at ``program`` (an absolute path in the image, an ELF
    program for ``machine``) reads as it starts, the paths it may be at, likeliest first
    (the first the image has is the one); [] if it is no runtime known here."""
    found = _PYTHON.match(posixpath.basename(program))
    if found is None:
        return []
    major, minor = found.groups()
    prefix = posixpath.dirname(posixpath.dirname(posixpath.normpath(program)))
    lib = posixpath.join(prefix, "lib", f"python{major}.{minor}")
    tag = f"cpython-{major}{minor}"
    out = [[_C_UTF8_CTYPE]]
    triplet = multiarch(machine)
    libdirs = ([f"/usr/lib/{triplet}"] if triplet else []) + list(_GCONV_DIRS)
    out.append([posixpath.join(d, _GCONV_CACHE) for d in libdirs])
    for name in _PYTHON_MODULES:
        package, _, module = name.rpartition("/")
        out.append([posixpath.join(lib, package, "__pycache__", f"{module}.{tag}.pyc")])
    return out
