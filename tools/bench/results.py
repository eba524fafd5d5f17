"""Where the benchmarks leave their numbers for `tools.bench.summary`.

A benchmark calls `record` with its own name, a row name and the row's values; when
``FUSESNAP_BENCH_RESULTS`` names a file (``make bench`` sets it), the row is added to
that JSON file, ``{bench: {row: values}}``; otherwise nothing is written. The file is
rewritten whole under a temporary name, so a benchmark killed half way leaves the rows
it finished.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

ENV = "FUSESNAP_BENCH_RESULTS"


def link_label(args: argparse.Namespace) -> str:
    """``link`` or ``unshaped``: which of `tools.bench.netns`' links a run used."""
    return "unshaped" if args.unshaped else "link"


def results_path() -> Path | None:
    value = os.environ.get(ENV)
    return Path(value) if value else None


def load(path: Path) -> dict[str, dict[str, dict[str, Any]]]:
    """The rows recorded in ``path`` (empty when it does not exist)."""
    if not path.exists():
        return {}
    data = json.loads(path.read_text())
    if not isinstance(data, dict):
        raise ValueError(f"{path}: not a JSON object")
    return data


def record(bench: str, row: str, **values: Any) -> None:
    """Add ``row`` of ``bench`` (JSON-able ``values``) to the results file, if one is set."""
    path = results_path()
    if path is None:
        return
    data = load(path)
    data.setdefault(bench, {})[row] = values
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    tmp.replace(path)
