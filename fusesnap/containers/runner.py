"""Detached containers: a background runner process per container (``run -d``).

`start_detached` starts, as a fresh process in its own session (no terminal, cwd /)::

    python -m fusesnap.containers.runner ROOT NAME

with stdin from /dev/null and stdout and stderr to ``ROOT/containers/NAME/container.log``.
That runner runs the container in the foreground (`container.run`: runc run, signals
forwarded, the end recorded, the mounts taken down) and removes it afterwards if it was
created with ``auto_remove`` (``run -d --rm``). A process rather than ``runc run
--detach``: someone must wait for the container to record its exit code and take its
mounts down, and runc's detached mode leaves no one.

`start_detached` returns once runc runs the container, or with its `RunResult` if it
ended (or failed to start) before that.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import time
from contextlib import suppress
from pathlib import Path

from fusesnap.containers import container
from fusesnap.containers.record import LOG
from fusesnap.containers.runc import RunResult, runc_status
from fusesnap.errors import FusesnapError, NotFoundError

__all__ = ["main", "start_detached"]

log = logging.getLogger(__name__)

START_TIMEOUT = 60.0
_ERROR = "fusesnap: error: "


def start_detached(root: Path, name: str, *, timeout: float = START_TIMEOUT) -> RunResult | None:
    """Start created container ``name`` in the background (module docstring); None once
    it runs, its result if it ended first. `ContainerError` if it neither runs nor ends
    within ``timeout`` seconds."""
    directory = container.container_dir(root, name)
    cmd = [sys.executable, "-m", "fusesnap.containers.runner", str(Path(root).absolute()), name]
    with open(directory / LOG, "ab") as out:
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd="/",
        )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if runc_status(root, name) == "running":
            return None
        if proc.poll() is not None:
            record = container.ContainerRecord.load(directory)
            if record is not None and record.exit_code is not None:
                return RunResult(record.exit_code, record.error)
            # Removed already (``--rm``), or the runner failed: its last words say which.
            last = _last_line(out.name)
            error = last.removeprefix(_ERROR) if last.startswith(_ERROR) else None
            return RunResult(proc.returncode, error)
        time.sleep(0.05)
    raise container.ContainerError(f"container {name}: not running after {timeout:.0f}s")


def _last_line(path: str) -> str:
    try:
        lines = Path(path).read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return lines[-1] if lines else ""


def main(argv: list[str] | None = None) -> int:
    """The runner: run container NAME of store ROOT to its end."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print("usage: python -m fusesnap.containers.runner ROOT NAME", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    root, name = Path(args[0]), args[1]
    try:
        result = container.run(root, name)
    except FusesnapError as exc:
        print(f"fusesnap: error: {exc}", file=sys.stderr)
        return 1
    if result.error is not None:
        print(f"fusesnap: error: container {name}: {result.error}", file=sys.stderr)
    record = container.ContainerRecord.load(container.container_dir(root, name))
    if record is not None and record.auto_remove:
        with suppress(NotFoundError):
            container.remove(root, name, force=True)
    return result.exit_code


if __name__ == "__main__":
    sys.exit(main())
