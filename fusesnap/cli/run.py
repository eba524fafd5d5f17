"""Commands that run containers on a lazy mount with runc: run, ps, rm, containers info."""

from __future__ import annotations

import json
import secrets
import sys
import time

import click

from fusesnap.cli.app import Context, cli, pass_ctx
from fusesnap.cli.images import layer_table, pull_with_progress
from fusesnap.containers import (
    ProcessOptions,
    SpecError,
    container,
    parse_env_option,
    start_detached,
)
from fusesnap.errors import AlreadyExistsError, NotFoundError
from fusesnap.image import ImageView
from fusesnap.mountd import check_image
from fusesnap.reference import Reference
from fusesnap.termui import table


def _ensure_image(c: Context, ref: str) -> ImageView:
    """The image, checked; one not (wholly indexed) in the store is pulled lazily first
    (like ``mount``; the pull's table goes to stderr: stdout is the container's)."""
    try:
        view = check_image(c.store(), ref)
    except NotFoundError:
        result = pull_with_progress(c, Reference.parse(ref), lazy=True)
        click.echo(layer_table(c.store(), result), err=True)
        view = check_image(c.store(), ref)
    view.tree()
    c.close()  # the mount daemon opens the store itself
    return view


@cli.command(context_settings={"allow_interspersed_args": False})
@click.argument("ref")
@click.argument("command", nargs=-1)
@click.option("--rm", "remove", is_flag=True, help="Remove the container when it exits.")
@click.option(
    "-d", "--detach", is_flag=True, help="Run in the background; print the container's name."
)
@click.option("--name", help="Container name (default: IMAGE-RANDOM).")
@click.option("-e", "--env", multiple=True, metavar="K=V", help="Set an environment variable.")
@click.option("-w", "--workdir", help="Working directory inside the container.")
@click.option("-u", "--user", help="USER[:GROUP], names or ids (names from the image).")
@click.option(
    "--net",
    type=click.Choice(["none", "host"]),
    default="none",
    show_default=True,
    help="none: a network namespace of its own (loopback only); host: the host's.",
)
@click.option("--read-only", "readonly", is_flag=True, help="A read-only root filesystem.")
@click.option(
    "-t/-T",
    "--tty/--no-tty",
    "tty",
    default=None,
    help="A terminal for the container (default: when stdin is one, and not with -d).",
)
@pass_ctx
def run(
    c: Context,
    ref: str,
    command: tuple[str, ...],
    remove: bool,
    detach: bool,
    name: str | None,
    env: tuple[str, ...],
    workdir: str | None,
    user: str | None,
    net: str,
    readonly: bool,
    tty: bool | None,
) -> None:
    """Run a container of image REF (pulled lazily if not in the store) with runc, on an
    overlay over the image's lazy mount; COMMAND (after --) replaces the image's Cmd.
    Exits with the container's exit code (127: command not found in the image); with -d,
    prints the container's name once it runs and exits 0 (its output: container.log)."""
    if command[:1] == ("--",):  # options stop at REF; "--" only marks where CMD starts
        command = command[1:]
    for item in env:
        parse_env_option(item)
    if name is None:
        base = Reference.parse(ref).repository.rsplit("/", 1)[-1]
        name = f"{base}-{secrets.token_hex(3)}"
    if tty and detach:
        raise SpecError("--tty with -d: a detached container has no terminal to use")
    if tty and not sys.stdin.isatty():
        raise SpecError("--tty: stdin is not a terminal (runc hands the container ours)")
    terminal = (sys.stdin.isatty() and not detach) if tty is None else tty
    if container.container_dir(c.root, name).exists():  # fails before any pull
        raise AlreadyExistsError(f"container {name}: the name is in use (fusesnap rm {name})")
    for reaped in container.reap(c.root):
        click.echo(f"fusesnap: cleaned up dead container {reaped}", err=True)
    view = _ensure_image(c, ref)
    process = ProcessOptions(
        command=command,
        env=env,
        workdir=workdir,
        user=user,
        terminal=terminal,
        net_host=net == "host",
        readonly=readonly,
    )
    container.create(
        c.root,
        name,
        ref,
        process,
        detached=detach,
        auto_remove=remove,
        registry=c.registry_options(),
        verbose=c.verbose,
        view=view,
    )
    if detach:
        result = start_detached(c.root, name)
        if result is None or result.error is None:  # running, or already done
            click.echo(name)
            return
    else:
        try:
            result = container.run(c.root, name, terminal=terminal)
        finally:
            if remove:
                container.remove(c.root, name, force=True)
    if result.error is not None:
        click.echo(f"fusesnap: error: container {name}: {result.error}", err=True)
    raise SystemExit(result.exit_code)


@cli.command()
@pass_ctx
def ps(c: Context) -> None:
    """List containers: name, image, status (runc's, or how it exited), creation time."""
    rows = [
        [
            info.name,
            info.image,
            info.status,
            time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info.created)),
        ]
        for info in container.list_containers(c.root)
    ]
    click.echo(table(rows, ["NAME", "IMAGE", "STATUS", "CREATED"]))


@cli.command()
@click.argument("names", nargs=-1, required=True)
@click.option("-f", "--force", is_flag=True, help="Kill a running container (no SIGTERM first).")
@click.option(
    "--timeout",
    type=float,
    default=container.STOP_TIMEOUT,
    show_default=True,
    help="Seconds from SIGTERM to SIGKILL when stopping a running container.",
)
@pass_ctx
def rm(c: Context, names: tuple[str, ...], force: bool, timeout: float) -> None:
    """Remove containers: stop a running one (SIGTERM, then SIGKILL), then runc's state,
    the overlay, the image mount, the snapshot, the state dir. Also cleans up after
    containers whose ``fusesnap run`` was killed."""
    for reaped in container.reap(c.root):
        if reaped not in names:
            click.echo(f"fusesnap: cleaned up dead container {reaped}", err=True)
    for name in names:
        container.remove(c.root, name, force=force, timeout=timeout)
        click.echo(name)


@cli.group()
def containers() -> None:
    """Inspect containers."""


@containers.command("info")
@click.argument("name")
@pass_ctx
def containers_info(c: Context, name: str) -> None:
    """Print container NAME's record, OCI runtime spec and snapshot as JSON."""
    click.echo(json.dumps(container.info(c.root, name), indent=2))
