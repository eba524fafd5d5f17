"""Terminal output helpers: human sizes, tables, and a progress line for long operations.

Progress is drawn only when stderr is a terminal; elsewhere (CI logs, pipes)
a finished operation prints one summary line and nothing else.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from typing import TextIO


def human_size(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")


def table(rows: Sequence[Sequence[str]], headers: Sequence[str]) -> str:
    """Left-aligned columns separated by two spaces (the last column is not padded)."""
    widths = [len(h) for h in headers]
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))
    lines = []
    for row in (headers, *rows):
        cells = [cell.ljust(widths[i]) if i < len(row) - 1 else cell for i, cell in enumerate(row)]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


class ProgressLine:
    """One self-overwriting status line: ``pulling busybox  12.3 MB/45.6 MB  2/5 layers  3.1 MB/s``.

    Implements the `fusesnap.lazy.PullProgress` protocol. Thread-safety: call
    from one thread (the trio loop).
    """

    def __init__(
        self,
        label: str,
        *,
        unit: str = "items",
        stream: TextIO | None = None,
        interval: float = 0.1,
    ) -> None:
        self.label = label
        self.unit = unit
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty()
        self.interval = interval
        self.total = 0
        self.done = 0
        self.items = 0
        self.items_done = 0
        self._started = time.monotonic()
        self._last_draw = 0.0
        self._width = 0

    def start(self, *, total_bytes: int, items: int) -> None:
        self.total, self.items = total_bytes, items
        self._draw(force=True)

    def advance(self, nbytes: int) -> None:
        self.done += nbytes
        self._draw()

    def item_done(self) -> None:
        self.items_done += 1
        self._draw(force=True)

    def note(self, text: str) -> None:
        self.clear()
        if self.enabled:
            print(text, file=self.stream)

    def clear(self) -> None:
        if self.enabled and self._width:
            self.stream.write("\r" + " " * self._width + "\r")
            self.stream.flush()
            self._width = 0

    def _draw(self, *, force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if not force and now - self._last_draw < self.interval:
            return
        self._last_draw = now
        elapsed = max(now - self._started, 1e-6)
        text = (
            f"{self.label}  {human_size(self.done)}/{human_size(self.total)}"
            f"  {self.items_done}/{self.items} {self.unit}  {human_size(self.done / elapsed)}/s"
        )
        pad = max(self._width - len(text), 0)
        self.stream.write("\r" + text + " " * pad)
        self.stream.flush()
        self._width = len(text)
