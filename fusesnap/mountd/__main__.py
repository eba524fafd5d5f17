"""``python -m fusesnap.mountd OPTIONS-JSON READY-FD``: a mount daemon in a fresh
interpreter, for a starter that holds a store open and so must not fork one."""

from __future__ import annotations

import sys

from fusesnap.mountd.options import DaemonOptions
from fusesnap.mountd.start import run_daemon


def main(argv: list[str]) -> int:
    if len(argv) != 2 or not argv[1].isdigit():
        print("usage: python -m fusesnap.mountd OPTIONS-JSON READY-FD", file=sys.stderr)
        return 2
    try:
        options = DaemonOptions.from_json(argv[0])
    except ValueError as exc:
        print(f"fusesnap: error: {exc}", file=sys.stderr)
        return 2
    return run_daemon(options, int(argv[1]))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
