"""Commands that run containers on a lazy mount with runc: run, ps, rm."""

from __future__ import annotations

import secrets
import sys
import time

import click

from fusesnap.cli.app import Context, cli, pass_ctx
from fusesnap.cli.images import layer_table, pull_with_progress
from fusesnap.errors import NotFoundError
from fusesnap.image import ImageView
from fusesnap.reference import Reference
from fusesnap.runtime import container
from fusesnap.runtime.daemon import check_image
from fusesnap.runtime.spec import parse_env_option
from fusesnap.termui import table


def _image_config(c: Context, ref: str) -> dict[str, object]:
    """The image's config dict; an image not (wholly indexed) in the store is pulled lazily
    first (like ``mount``; the pull's table goes to stderr: stdout is the container's)."""
    try:
        check_image(c.store(), ref)
    except NotFoundError:
        result = pull_with_progress(c, Reference.parse(ref), lazy=True)
        click.echo(layer_table(c.store(), result), err=True)
    config = dict(ImageView.open(c.store(), ref).config.config)
    c.close()  # the mount daemon opens the store itself
    return config


@cli.command(context_settings={"allow_interspersed_args": False})
@click.argument("ref")
@click.argument("command", nargs=-1)
@click.option("--rm", "remove", is_flag=True, help="Remove the container when it exits.")
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
@pass_ctx
def run(
    c: Context,
    ref: str,
    command: tuple[str, ...],
    remove: bool,
    name: str | None,
    env: tuple[str, ...],
    workdir: str | None,
    user: str | None,
    net: str,
) -> None:
    """Run a container of image REF (pulled lazily if not in the store) with runc, on an
    overlay over the image's lazy mount; COMMAND (after --) replaces the image's Cmd.
    Exits with the container's exit code (127: command not found in the image)."""
    if command[:1] == ("--",):  # options stop at REF; "--" only marks where CMD starts
        command = command[1:]
    for item in env:
        parse_env_option(item)
    if name is None:
        base = Reference.parse(ref).repository.rsplit("/", 1)[-1]
        name = f"{base}-{secrets.token_hex(3)}"
    container.container_dir(c.root, name)  # a bad name fails before any pull
    config = _image_config(c, ref)
    terminal = sys.stdin.isatty()
    container.create(
        c.root,
        name,
        ref,
        config,
        command=command,
        env=env,
        workdir=workdir,
        user=user,
        terminal=terminal,
        net_host=net == "host",
        global_options=[
            *(f"--insecure-registry={h}" for h in c.insecure_registries),
            *([f"--ca-file={c.ca_file}"] if c.ca_file else []),
        ],
        verbose=c.verbose,
    )
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
@click.option("-f", "--force", is_flag=True, help="Kill a running container first.")
@pass_ctx
def rm(c: Context, names: tuple[str, ...], force: bool) -> None:
    """Remove containers: runc's state, the overlay, the image mount, the state dir."""
    for name in names:
        container.remove(c.root, name, force=force)
        click.echo(name)
