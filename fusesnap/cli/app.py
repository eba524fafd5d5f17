"""The ``fusesnap`` command line: parse, call the library, print.

Errors are one line on stderr and a non-zero exit; ``-v`` adds the traceback
and debug logs.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, NoReturn, TypeVar

import click
import trio

from fusesnap import __version__
from fusesnap.errors import FusesnapError
from fusesnap.groups import first_error
from fusesnap.registry import DEFAULT_HOSTS_DIRS, RegistryOptions
from fusesnap.store import Store, default_root, open_store

T = TypeVar("T")

EXIT_ERROR = 1
EXIT_INTERNAL = 2
EXIT_INTERRUPTED = 130


@dataclass
class Context:
    root: Path
    verbose: bool
    insecure_registries: tuple[str, ...] = ()
    ca_file: str | None = None
    hosts_dirs: tuple[str, ...] = DEFAULT_HOSTS_DIRS
    _store: Store | None = field(default=None, repr=False)

    def store(self) -> Store:
        if self._store is None:
            self._store = open_store(self.root)
        return self._store

    def registry_options(self) -> RegistryOptions:
        """The global registry options, for whatever opens a registry client later."""
        return RegistryOptions(self.insecure_registries, self.ca_file, self.hosts_dirs)

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None


pass_ctx = click.make_pass_decorator(Context)


class SizeParam(click.ParamType):
    """A byte count: ``1048576``, ``512K``, ``64M``, ``2G`` (powers of 1024)."""

    name = "size"
    _UNITS: ClassVar[dict[str, int]] = {
        "": 1,
        "K": 1 << 10,
        "M": 1 << 20,
        "G": 1 << 30,
        "T": 1 << 40,
    }

    def convert(
        self, value: object, param: click.Parameter | None, ctx: click.Context | None
    ) -> int:
        if isinstance(value, int):
            return value
        text = str(value).strip().upper().removesuffix("B").removesuffix("I")
        number, unit = (text[:-1], text[-1]) if text and text[-1] in self._UNITS else (text, "")
        try:
            size = int(float(number) * self._UNITS[unit])
        except ValueError:
            self.fail(f"{value!r} is not a size (e.g. 512K, 64M, 2G)", param, ctx)
        if size <= 0:
            self.fail(f"{value!r}: size must be positive", param, ctx)
        return size


SIZE = SizeParam()


def run_async(fn: Callable[[], Awaitable[T]]) -> T:
    return trio.run(fn)


# Which module of fusesnap.cli registers each command: a command's module (and what it
# imports) loads when the command is used, so ``mount`` does not import what ``commit``
# needs (~0.15 s of a cold start). tests/test_cli_commands.py keeps this list honest.
COMMAND_MODULES = {
    "pull": "images",
    "images": "images",
    "rmi": "images",
    "index": "index",
    "layers": "inspect",
    "ls": "inspect",
    "cat": "inspect",
    "tree": "inspect",
    "diff": "inspect",
    "content": "maintenance",
    "lease": "maintenance",
    "gc": "maintenance",
    "cache": "maintenance",
    "mount": "mount",
    "umount": "mount",
    "remount": "mount",
    "stats": "mount",
    "run": "run",
    "ps": "run",
    "rm": "run",
    "containers": "run",
    "snapshot": "snapshots",
    "commit": "snapshots",
    "snapshotter": "snapshotter",
}


class _LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*COMMAND_MODULES, *self.commands})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in COMMAND_MODULES:
            importlib.import_module(f"fusesnap.cli.{COMMAND_MODULES[cmd_name]}")
        return self.commands.get(cmd_name)


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--root",
    type=click.Path(file_okay=False, path_type=Path),
    envvar="FUSESNAP_ROOT",
    default=None,
    help="Store directory (default: /var/lib/fusesnap as root, else $XDG_DATA_HOME/fusesnap).",
)
@click.option("-v", "--verbose", is_flag=True, help="Debug logs and tracebacks.")
@click.option(
    "--insecure-registry",
    "insecure",
    multiple=True,
    metavar="HOST",
    help="Talk to HOST without TLS verification (loopback hosts always use plain HTTP).",
)
@click.option("--ca-file", type=click.Path(dir_okay=False, exists=True), help="Extra CA bundle.")
@click.option(
    "--hosts-dir",
    "hosts_dir",
    envvar="FUSESNAP_HOSTS_DIR",
    metavar="DIR[:DIR...]",
    default=None,
    help="Where HOST/hosts.toml files name registry mirrors, containerd's format"
    f" (default: {':'.join(DEFAULT_HOSTS_DIRS)}; empty: none).",
)
@click.version_option(__version__, prog_name="fusesnap")
@click.pass_context
def cli(
    ctx: click.Context,
    root: Path | None,
    verbose: bool,
    insecure: tuple[str, ...],
    ca_file: str | None,
    hosts_dir: str | None,
) -> None:
    """Mount OCI/Docker images straight from a registry, lazily."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    if not verbose:
        # httpx logs every request at INFO; keep terminals quiet unless asked.
        logging.getLogger("httpx").setLevel(logging.WARNING)
    # httpcore's per-event traces (a dozen lines a request) drown everything else.
    logging.getLogger("httpcore").setLevel(logging.INFO)
    logging.getLogger("indexed_gzip").setLevel(logging.INFO)  # a line per seek
    hosts_dirs = (
        DEFAULT_HOSTS_DIRS
        if hosts_dir is None
        else tuple(d for d in hosts_dir.split(os.pathsep) if d)
    )
    obj = Context(
        root=root or default_root(),
        verbose=verbose,
        insecure_registries=insecure,
        ca_file=ca_file,
        hosts_dirs=hosts_dirs,
    )
    ctx.obj = obj
    ctx.call_on_close(obj.close)


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the CLI, turn errors into one line and an exit code."""
    args = sys.argv[1:] if argv is None else argv
    verbose = "-v" in args or "--verbose" in args
    try:
        try:
            cli.main(args=args, prog_name="fusesnap", standalone_mode=False)
        except BaseExceptionGroup as group:
            raise first_error(group) from group
    except click.exceptions.Abort:
        click.echo("fusesnap: interrupted", err=True)
        sys.exit(EXIT_INTERRUPTED)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        click.echo("fusesnap: interrupted", err=True)
        sys.exit(EXIT_INTERRUPTED)
    except FusesnapError as exc:
        if verbose:
            traceback.print_exc()
        click.echo(f"fusesnap: error: {exc}", err=True)
        sys.exit(EXIT_ERROR)
    except Exception as exc:
        if verbose:
            traceback.print_exc()
        click.echo(
            f"fusesnap: internal error: {type(exc).__name__}: {exc} (rerun with -v)", err=True
        )
        sys.exit(EXIT_INTERNAL)


def main_and_exit() -> NoReturn:
    """The program's entry point: `main`, then exit without the interpreter's teardown
    (freeing a decoded layer index object by object takes ~0.1 s the OS does at once)."""
    code = 0
    try:
        main()
    except SystemExit as exc:
        if isinstance(exc.code, int):
            code = exc.code
        elif exc.code is not None:
            print(exc.code, file=sys.stderr)
            code = 1
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    main_and_exit()
