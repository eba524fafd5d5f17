"""Small multi-layer images with the edge cases of the OCI layer format, built with `tarfile`.

Every builder returns an `Image` (layers, bottom first, plus config) for
`tools.images.layout.write_layout`. What each image should unpack to is in its
docstring; ``umoci unpack`` (`tools.images.umoci.umoci_unpack`) is the judge.

    whiteouts   .wh.NAME deletes a file and a directory of a lower layer
    opaque      .wh..wh..opq hides a lower directory's contents
    hardlinks   hardlinks within a layer and to a file of the layer below
    replace     a file becomes a directory and a directory a file
    xattrs      SCHILY.xattr.user.* and a binary security.capability
    modes       setuid, setgid, sticky, odd modes and owners (incl. uid > 2**21)
    devices     character and block devices, a fifo
    longnames   PAX paths > 255 bytes, a 200-byte component, long link targets
    misc        empty files, unicode and awkward names
    big         one big file (default 300 MB), streamed through a temporary file

MALICIOUS images, for negative tests only (an unpacker must refuse or contain them):

    malicious-escape   entries named ../escape and a/../../escape
    malicious-links    a symlink to / followed by a file written "through" it,
                       and hardlinks to /etc/shadow and ../../etc/passwd
"""

from __future__ import annotations

import io
import random
from collections.abc import Callable
from pathlib import Path

from tools.images.layout import Image, Layer
from tools.images.tarutil import TarBuilder

__all__ = [
    "BIG_DEFAULT_SIZE",
    "CAP_NET_RAW_EP",
    "CRAFTED",
    "MALICIOUS",
    "BigFileSource",
    "big_image",
    "devices_image",
    "hardlinks_image",
    "longnames_image",
    "malicious_escape_image",
    "malicious_links_image",
    "misc_image",
    "modes_image",
    "opaque_image",
    "replace_image",
    "whiteouts_image",
    "xattrs_image",
]

MiB = 1 << 20
BIG_DEFAULT_SIZE = 300 * 1000 * 1000
# security.capability, VFS_CAP_REVISION_2, effective, permitted = CAP_NET_RAW (bit 13).
CAP_NET_RAW_EP = bytes.fromhex("0100000200200000000000000000000000000000")

LONG_DIRS = "/".join(["long", "d" * 100, "e" * 100, "f" * 60])  # 266 bytes
LONG_FILE = f"{LONG_DIRS}/file-{'g' * 40}.txt"
LONG_COMPONENT = "n" * 200
LONG_TARGET = "/".join(["..", "..", "..", *(["t" * 50] * 6)])  # 311 bytes


def _image(*layers: bytes, what: str) -> Image:
    return Image(
        [Layer(tar, created_by=f"crafted {what} layer {i}") for i, tar in enumerate(layers)],
        cmd=None,
        labels={"org.fusesnap.test": what},
    )


def whiteouts_image() -> Image:
    """After unpacking: ``a/keep`` and ``b.txt`` exist; ``a/gone.txt`` and ``dir1/`` (with its
    subtree) do not; ``new.txt`` was added by layer 1."""
    lower = (
        TarBuilder()
        .dir("a")
        .file("a/keep", "keep\n")
        .file("a/gone.txt", "gone\n")
        .dir("dir1")
        .dir("dir1/sub")
        .file("dir1/sub/x", "x\n")
        .file("dir1/y", "y\n")
        .file("b.txt", "b\n")
        .getvalue()
    )
    upper = (
        TarBuilder()
        .dir("a")
        .whiteout("a/gone.txt")
        .whiteout("dir1")
        .file("new.txt", "new\n")
        .getvalue()
    )
    return _image(lower, upper, what="whiteouts")


def opaque_image() -> Image:
    """After unpacking: ``opq/`` holds only ``new.txt``; ``opq/old.txt`` and ``opq/sub/`` are
    hidden; ``other/old.txt`` (no marker there) survives."""
    lower = (
        TarBuilder()
        .dir("opq")
        .file("opq/old.txt", "old\n")
        .dir("opq/sub")
        .file("opq/sub/x", "x\n")
        .dir("other")
        .file("other/old.txt", "old\n")
        .getvalue()
    )
    upper = (
        TarBuilder()
        .dir("opq")
        .opaque("opq")
        .file("opq/new.txt", "new\n")
        .dir("other")
        .file("other/new.txt", "new\n")
        .getvalue()
    )
    return _image(lower, upper, what="opaque")


def hardlinks_image() -> Image:
    """After unpacking: ``h/orig``, ``h/link1`` and ``h/sub/link2`` are one inode (3 links in
    layer 0); layer 1 adds ``h2/lower-link`` as a fourth name of ``h/orig``."""
    lower = (
        TarBuilder()
        .dir("h")
        .file("h/orig", "shared content\n", mode=0o640)
        .hardlink("h/link1", "h/orig")
        .dir("h/sub")
        .hardlink("h/sub/link2", "h/orig")
        .file("h/alone", "not linked\n")
        .getvalue()
    )
    upper = TarBuilder().dir("h2").hardlink("h2/lower-link", "h/orig").getvalue()
    return _image(lower, upper, what="hardlinks")


def replace_image() -> Image:
    """After unpacking: ``f2d`` is a directory holding ``inside``; ``d2f`` is a regular file
    (``d2f/child`` is gone); ``link2dir`` is a directory (was a symlink)."""
    lower = (
        TarBuilder()
        .file("f2d", "was a file\n")
        .dir("d2f")
        .file("d2f/child", "child\n")
        .dir("target")
        .file("target/t", "t\n")
        .symlink("link2dir", "target")
        .getvalue()
    )
    upper = (
        TarBuilder()
        .dir("f2d")
        .file("f2d/inside", "now a dir\n")
        .file("d2f", "now a file\n")
        .dir("link2dir")
        .file("link2dir/own", "own\n")
        .getvalue()
    )
    return _image(lower, upper, what="replace")


def xattrs_image() -> Image:
    """After unpacking: ``x/file`` has ``user.foo=bar`` and ``user.bin=\\x00\\xff\\x01``;
    ``x/ping`` has ``security.capability`` = `CAP_NET_RAW_EP`; ``x/`` has ``user.dir=yes``."""
    layer = (
        TarBuilder()
        .dir("x", xattrs={"user.dir": "yes"})
        .file("x/file", "with xattrs\n", xattrs={"user.foo": "bar", "user.bin": b"\x00\xff\x01"})
        .file(
            "x/ping",
            b"\x7fELF-not-really\n",
            mode=0o755,
            xattrs={"security.capability": CAP_NET_RAW_EP},
        )
        .getvalue()
    )
    return _image(layer, what="xattrs")


def modes_image() -> Image:
    """After unpacking, modes and owners exactly as listed in the layer (see the code), except
    ``link-0644``: a symlink whose header says 0644 is 0777 on Linux, as on every unpacker."""
    layer = (
        TarBuilder()
        .dir("bin")
        .file("bin/suid", "#!/bin/sh\n", mode=0o4755)
        .file("bin/sgid", "#!/bin/sh\n", mode=0o2755, gid=42)
        .file("bin/both", "#!/bin/sh\n", mode=0o6711)
        .dir("tmp", mode=0o1777)
        .dir("var")
        .dir("var/mail", mode=0o2775, gid=8)
        .file("none", "no permissions\n", mode=0o000)
        .file("owned", "user 1000\n", mode=0o600, uid=1000, gid=1000)
        .dir("home")
        .dir("home/user", mode=0o700, uid=1000, gid=1000)
        .file("bigids", "ids beyond ustar's 7 octal digits\n", uid=3_000_000, gid=3_000_001)
        .file("exec", "#!/bin/sh\n", mode=0o755)
        .symlink("link-0644", "exec", mode=0o644)
        .getvalue()
    )
    return _image(layer, what="modes")


def devices_image() -> Image:
    """After unpacking (as root): ``dev/null`` char 1:3, ``dev/zero`` char 1:5, ``dev/loop0``
    block 7:0, ``dev/sda`` block 8:0, ``fifo`` a named pipe."""
    layer = (
        TarBuilder()
        .dir("dev")
        .chardev("dev/null", 1, 3)
        .chardev("dev/zero", 1, 5)
        .blockdev("dev/loop0", 7, 0)
        .blockdev("dev/sda", 8, 0)
        .fifo("fifo")
        .getvalue()
    )
    return _image(layer, what="devices")


def longnames_image() -> Image:
    """After unpacking: `LONG_FILE` (> 255 bytes of path), ``LONG_COMPONENT`` (one 200-byte
    name), ``links/long-symlink`` -> `LONG_TARGET`, ``links/long-hardlink`` = `LONG_FILE`."""
    tar = TarBuilder()
    parts = LONG_DIRS.split("/")
    for i in range(1, len(parts) + 1):
        tar.dir("/".join(parts[:i]))
    tar.file(LONG_FILE, "deep\n")
    tar.file(LONG_COMPONENT, "long name\n")
    tar.dir("links")
    tar.symlink("links/long-symlink", LONG_TARGET)
    tar.hardlink("links/long-hardlink", LONG_FILE)
    return _image(tar.getvalue(), what="longnames")


UNICODE_NAMES = (
    "caf\u00e9.txt",  # NFC é
    "cafe\u0301.txt",  # NFD e + combining acute: a different name on Linux
    "\u6587\u4ef6.txt",
    "\U0001f600 smile.txt",
    "with space.txt",
    "-dash",
    ".hidden",
    "semi;colon&amp",
)


def misc_image() -> Image:
    """After unpacking: ``empty/`` holds empty files ``e0``..``e2`` and an empty dir ``d``;
    ``names/`` holds `UNICODE_NAMES`, each containing its own name."""
    tar = TarBuilder().dir("empty")
    for i in range(3):
        tar.file(f"empty/e{i}", b"")
    tar.dir("empty/d")
    tar.dir("names")
    for name in UNICODE_NAMES:
        tar.file(f"names/{name}", name + "\n")
    return _image(tar.getvalue(), what="misc")


class BigFileSource(io.RawIOBase):
    """``size`` deterministic bytes, read in pieces: 1 MiB blocks, each pseudorandom
    except every 4th, which repeats the same block (chunk-level dedup shows)."""

    def __init__(self, size: int, *, seed: int = 0) -> None:
        self.size = size
        self.seed = seed
        self._pos = 0
        self._block_index = -1
        self._block = b""
        self._repeat = random.Random(f"{seed}:repeat").randbytes(MiB)

    def block(self, index: int) -> bytes:
        if index % 4 == 3:
            return self._repeat
        return random.Random(f"{self.seed}:{index}").randbytes(MiB)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        n = min(len(buffer), self.size - self._pos)
        if n <= 0:
            return 0
        index, offset = divmod(self._pos, MiB)
        if index != self._block_index:
            self._block_index, self._block = index, self.block(index)
        n = min(n, MiB - offset)
        buffer[:n] = self._block[offset : offset + n]
        self._pos += n
        return n


HEAD_COPY_SIZE = 4 * MiB


def big_image(size: int = BIG_DEFAULT_SIZE, *, workdir: Path, seed: int = 0) -> Image:
    """One layer with ``big/random.bin`` (``size`` bytes of `BigFileSource`) and
    ``big/head-copy.bin`` (its first 4 MiB again: whole-file dedup). The layer tarball is
    written to ``workdir/big-SIZE.tar`` (reused if present) and streamed from there."""
    path = workdir / f"big-{size}-{seed}.tar"
    if not path.exists():
        workdir.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        with open(tmp, "wb") as out:
            tar = TarBuilder(out)
            tar.dir("big")
            tar.stream_file(
                "big/random.bin", size, io.BufferedReader(BigFileSource(size, seed=seed), MiB)
            )
            head = min(size, HEAD_COPY_SIZE)
            tar.stream_file(
                "big/head-copy.bin", head, io.BufferedReader(BigFileSource(head, seed=seed), MiB)
            )
            tar.close()
        tmp.replace(path)
    return Image(
        [Layer(path, created_by=f"crafted big file of {size} bytes")],
        cmd=None,
        labels={"org.fusesnap.test": "big"},
    )


# -- MALICIOUS layers: for negative tests only -----------------------------------------------


def malicious_escape_image() -> Image:
    """MALICIOUS: entries that climb out of the rootfs (``../escape``, ``a/../../escape2``).
    A correct unpacker refuses them or keeps them inside; nothing may appear outside."""
    layer = (
        TarBuilder(raw_names=True)
        .file("ok.txt", "harmless\n")
        .file("../escape", "ESCAPED\n")
        .dir("a")
        .file("a/../../escape2", "ESCAPED\n")
        .getvalue()
    )
    return _image(layer, what="malicious-escape")


def malicious_links_image() -> Image:
    """MALICIOUS: ``evil`` -> ``/`` then ``evil/tmp/pwned`` written through the symlink; an
    absolute symlink ``abs`` -> ``/etc/shadow``; hardlinks ``hl-abs`` -> ``/etc/shadow`` and
    ``hl-rel`` -> ``../../etc/passwd`` (targets outside the rootfs)."""
    layer = (
        TarBuilder(raw_names=True)
        .symlink("evil", "/")
        .file("evil/tmp/pwned", "PWNED\n")
        .symlink("abs", "/etc/shadow")
        .hardlink("hl-abs", "/etc/shadow")
        .hardlink("hl-rel", "../../etc/passwd")
        .getvalue()
    )
    return _image(layer, what="malicious-links")


CRAFTED: dict[str, Callable[[], Image]] = {
    "crafted-whiteouts": whiteouts_image,
    "crafted-opaque": opaque_image,
    "crafted-hardlinks": hardlinks_image,
    "crafted-replace": replace_image,
    "crafted-xattrs": xattrs_image,
    "crafted-modes": modes_image,
    "crafted-devices": devices_image,
    "crafted-longnames": longnames_image,
    "crafted-misc": misc_image,
}
MALICIOUS: dict[str, Callable[[], Image]] = {
    "malicious-escape": malicious_escape_image,
    "malicious-links": malicious_links_image,
}
