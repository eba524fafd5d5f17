"""``python -m fusesnap.mountd OPTIONS-JSON READY-FD``: a background mount in a fresh
interpreter, for a starter that holds a store open and so must not fork one.

``python -m fusesnap.mountd OPTIONS-JSON CHANNEL-FD --takeover FUSE-FD INIT-HEX``: a
daemon a holder starts to take its mounted connection over (`fusesnap.mountd.holder`).
"""

from __future__ import annotations

import sys

from fusesnap.mountd.options import DaemonOptions
from fusesnap.mountd.start import run_daemon, run_takeover

_USAGE = "usage: python -m fusesnap.mountd OPTIONS-JSON READY-FD [--takeover FUSE-FD INIT-HEX]"


def main(argv: list[str]) -> int:
    takeover = argv[2:3] == ["--takeover"] and len(argv) == 5 and argv[3].isdigit()
    if not (len(argv) == 2 or takeover) or not argv[1].isdigit():
        print(_USAGE, file=sys.stderr)
        return 2
    try:
        options = DaemonOptions.from_json(argv[0])
        init = bytes.fromhex(argv[4]) if takeover else b""
    except ValueError as exc:
        print(f"fusesnap: error: {exc}", file=sys.stderr)
        return 2
    if takeover:
        return run_takeover(options, int(argv[1]), int(argv[3]), init)
    return run_daemon(options, int(argv[1]))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
