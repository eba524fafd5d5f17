"""Run the real ``fusesnap`` CLI in a subprocess against a store directory."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path


def fusesnap_cmd(root: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "fusesnap", "--root", str(root), *args]


def run(
    root: Path,
    *args: str,
    env: Mapping[str, str] | None = None,
    check: bool = True,
    timeout: float = 300,
) -> subprocess.CompletedProcess[str]:
    full_env = dict(os.environ)
    full_env.pop("FUSESNAP_ROOT", None)
    full_env.update(env or {})
    proc = subprocess.run(
        fusesnap_cmd(root, *args),
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"fusesnap {' '.join(args)} exited {proc.returncode}\n"
            f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
        )
    return proc


@contextmanager
def mounted(root: Path, ref: str, mnt: Path, *args: str) -> Iterator[Path]:
    """``fusesnap mount`` for the block, ``umount`` after it."""
    mnt.mkdir(parents=True, exist_ok=True)
    run(root, "mount", *args, ref, str(mnt), timeout=600)
    try:
        yield mnt
    finally:
        run(root, "umount", str(mnt))
