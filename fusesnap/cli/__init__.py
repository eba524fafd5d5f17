"""The ``fusesnap`` command line: click commands only (parse, call the library, print).

`app` holds the group, global options and error handling; each other module
registers one family of commands on it.
"""

from fusesnap.cli import images, index, inspect, maintenance, mount, run  # noqa: F401  (registers the commands)
from fusesnap.cli.app import cli, main

__all__ = ["cli", "main"]
