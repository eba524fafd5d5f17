"""The ``fusesnap`` command line: click commands only (parse, call the library, print).

`app` holds the group, global options and error handling; each other module
registers one family of commands on it, loaded when one of them is used
(`app.COMMAND_MODULES`).
"""

from fusesnap.cli.app import cli, main, main_and_exit

__all__ = ["cli", "main", "main_and_exit"]
