"""Starting and stopping the processes the tools run."""

from __future__ import annotations

import subprocess
from typing import Any, Self

__all__ = ["Started", "stop_process"]


class Started:
    """A service that is a context manager: ``with X(...) as x`` is ``x = X(...).start()``
    and, after the block, ``x.stop()``."""

    def start(self) -> Self:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def stop_process(proc: subprocess.Popen[Any], *, timeout: float = 10.0) -> None:
    """SIGTERM ``proc``, SIGKILL it if it has not exited ``timeout`` seconds later, and
    reap it; nothing if it has exited already."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=timeout)
