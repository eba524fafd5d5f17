"""Which system parts the tests need are here, and the CI rule for those that are not.

Outside CI a test whose tools are missing is skipped with the reason; with
``CI=true`` it fails instead, so a broken CI machine cannot pass by skipping.
"""

from __future__ import annotations

import os
import shutil
import stat
from collections.abc import Callable

__all__ = ["E2E_TOOLS", "KNOWN_TOOLS", "in_ci", "missing", "require"]


def _on_path(name: str) -> Callable[[], bool]:
    return lambda: shutil.which(name) is not None


def _fuse_device() -> bool:
    try:
        if not stat.S_ISCHR(os.stat("/dev/fuse").st_mode):
            return False
        fd = os.open("/dev/fuse", os.O_RDWR)
    except OSError:
        return False
    os.close(fd)
    return True


KNOWN_TOOLS: dict[str, Callable[[], bool]] = {
    "docker-registry": _on_path("docker-registry"),
    "skopeo": _on_path("skopeo"),
    "umoci": _on_path("umoci"),
    "runc": _on_path("runc"),
    "fusermount3": _on_path("fusermount3"),
    "/dev/fuse": _fuse_device,
    "debootstrap": _on_path("debootstrap"),
    "unshare": _on_path("unshare"),
    "curl": _on_path("curl"),
    "/bin/busybox": lambda: os.access("/bin/busybox", os.X_OK),
}
# What an e2e test (real registry, real FUSE mount, real runc) needs.
E2E_TOOLS = ("docker-registry", "skopeo", "umoci", "runc", "/dev/fuse", "fusermount3")


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def missing(*tools: str) -> list[str]:
    """The ``tools`` not usable here: names from `KNOWN_TOOLS`, other commands on
    ``$PATH``, or absolute paths."""
    out = []
    for tool in tools:
        check = KNOWN_TOOLS.get(tool)
        if check is not None:
            present = check()
        elif tool.startswith("/"):
            present = os.path.exists(tool)
        else:
            present = shutil.which(tool) is not None
        if not present:
            out.append(tool)
    return out


def require(*tools: str) -> None:
    """Skip the calling test when a tool is missing, or fail it under ``CI=true``."""
    import pytest

    absent = missing(*tools)
    if not absent:
        return
    reason = f"missing: {', '.join(absent)} (install with tools/install-system-deps)"
    if in_ci():
        pytest.fail(f"CI=true and {reason}", pytrace=False)
    pytest.skip(reason)
