"""A tiny runnable image: the host's static busybox plus a minimal /etc.

One layer, about 1 MB compressed. ``/bin/sh`` and the common applets are
symlinks to ``/bin/busybox``, so ``runc`` can run ``sh -c ...`` in it. The
busybox binary is the host's (Debian's ``busybox-static``), so the image is
linux/amd64 whatever platform it is labelled with; `busybox_multi_images`
gives each platform its own marker file ``/etc/fusesnap-platform``;
`busybox_pause_image` is the same layer with a command that never exits, for a
Kubernetes pod's sandbox ("pause") container.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from tools.images.layout import Image, Layer, Platform
from tools.images.tarutil import TarBuilder

__all__ = [
    "APPLETS",
    "BUSYBOX_BINARY",
    "busybox_image",
    "busybox_layer",
    "busybox_multi_images",
    "busybox_pause_image",
]

BUSYBOX_BINARY = Path("/bin/busybox")
APPLETS = (
    "sh",
    "ash",
    "ls",
    "cat",
    "echo",
    "true",
    "false",
    "env",
    "id",
    "pwd",
    "sleep",
    "mkdir",
    "rm",
    "cp",
    "mv",
    "ln",
    "touch",
    "stat",
    "head",
    "tail",
    "wc",
    "grep",
    "sed",
    "find",
    "sha256sum",
    "md5sum",
    "dd",
    "test",
    "[",
    "uname",
    "hostname",
    "ps",
    "mount",
    "df",
    "du",
    "chmod",
    "chown",
    "readlink",
    "printf",
    "xargs",
    "sort",
    "tr",
    "cut",
    "date",
    "which",
)
PASSWD = "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
GROUP = "root:x:0:\nnogroup:x:65534:\n"


def busybox_layer(*, platform: Platform | None = None, binary: Path = BUSYBOX_BINARY) -> bytes:
    """The uncompressed layer tarball."""
    if not binary.exists():
        raise FileNotFoundError(f"{binary}: install Debian's busybox-static")
    tar = TarBuilder()
    for directory, mode in (
        ("bin", 0o755),
        ("dev", 0o755),
        ("etc", 0o755),
        ("home", 0o755),
        ("proc", 0o555),
        ("root", 0o700),
        ("sys", 0o555),
        ("tmp", 0o1777),
        ("usr", 0o755),
        ("usr/bin", 0o755),
        ("var", 0o755),
    ):
        tar.dir(directory, mode=mode)
    tar.file("bin/busybox", binary.read_bytes(), mode=0o755)
    for applet in APPLETS:
        tar.symlink(f"bin/{applet}", "busybox")
    tar.symlink("usr/bin/env", "../../bin/busybox")
    tar.file("etc/passwd", PASSWD)
    tar.file("etc/group", GROUP)
    tar.file("etc/hostname", "fusesnap\n")
    tar.file("etc/os-release", 'NAME="fusesnap-busybox"\nID=fusesnap-busybox\n')
    tar.file("hello.txt", "hello from fusesnap\n")
    tar.file("etc/motd", "".join(f"line {i}\n" for i in range(1000)))
    if platform is not None:
        tar.file("etc/fusesnap-platform", f"{platform}\n")
    return tar.getvalue()


def busybox_image(*, platform: Platform | None = None) -> Image:
    layer = Layer(busybox_layer(platform=platform), created_by="busybox rootfs")
    return Image([layer], cmd=("/bin/sh",), platform=platform or Platform())


def busybox_pause_image() -> Image:
    """busybox sleeping for ever by default: what the CRI's sandbox container runs (it holds
    the pod's namespaces; the CRI stops it with SIGKILL)."""
    return dataclasses.replace(busybox_image(), cmd=("sleep", "inf"))


def busybox_multi_images() -> list[Image]:
    """The same image labelled linux/amd64 and linux/arm64/v8, told apart by a marker file."""
    return [busybox_image(platform=Platform.parse(p)) for p in ("linux/amd64", "linux/arm64/v8")]
