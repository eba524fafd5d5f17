"""Which process is which: a pid plus its start time names one process even after pids
wrap around (lease owners in the store, mount daemons in ``mount.json``)."""

from __future__ import annotations

__all__ = ["process_start_time"]


def process_start_time(pid: int) -> int | None:
    """The start time of a running process, in clock ticks since boot;
    `None` if there is no such process or it is a zombie (it has exited and
    only waits to be reaped)."""
    try:
        with open(f"/proc/{int(pid)}/stat", "rb") as f:
            text = f.read().decode("ascii", "replace")
    except OSError:
        return None
    # comm (field 2) may hold spaces and parentheses: split after the last ")".
    fields = text.rpartition(")")[2].split()
    if len(fields) < 20 or fields[0] in ("Z", "X"):
        return None
    return int(fields[19])  # field 22, starttime
