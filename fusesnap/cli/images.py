"""Commands that move images: pull, images, rmi."""

from __future__ import annotations

import time
from typing import Any

import click

from fusesnap.cli.app import SIZE, Context, cli, pass_ctx, run_async
from fusesnap.errors import FusesnapError
from fusesnap.fs import MergedTree
from fusesnap.lazy import open_registry_client
from fusesnap.lazy.pull import pull as pull_image
from fusesnap.lazy.tarindex import Limits
from fusesnap.oci import Platform, parse_manifest
from fusesnap.reference import Reference
from fusesnap.store import Store
from fusesnap.termui import ProgressLine, human_size, table


@cli.command()
@click.argument("ref")
@click.option(
    "--platform", "platform_text", metavar="OS/ARCH[/VARIANT]", help="Default: this host's."
)
@click.option(
    "--max-layer-size",
    type=SIZE,
    default="64G",
    show_default=True,
    help="Refuse a layer that unpacks to more than this (a decompression bomb).",
)
@pass_ctx
def pull(c: Context, ref: str, platform_text: str | None, max_layer_size: int) -> None:
    """Pull REF's manifest, config and layers into the store (each layer indexed, its files
    kept as de-duplicated chunks)."""
    reference = Reference.parse(ref)
    plat = Platform.parse(platform_text) if platform_text else None
    store = c.store()
    progress = ProgressLine(f"pulling {reference}", unit="layers")
    started = time.monotonic()

    async def main() -> Any:
        async with open_registry_client(
            insecure_registries=c.insecure_registries, ca_file=c.ca_file
        ) as client:
            return await pull_image(
                store,
                client,
                reference,
                platform=plat,
                progress=progress,
                limits=Limits(max_uncompressed=max_layer_size),
                check=MergedTree.build,
            )

    try:
        result = run_async(main)
    finally:
        progress.clear()
    elapsed = time.monotonic() - started
    click.echo(
        f"{result.name}: {result.manifest.digest} ({result.platform}), "
        f"{len(result.layers)} layers, fetched {human_size(result.fetched_bytes)} "
        f"in {elapsed:.1f}s"
    )


def _image_size(store: Store, manifest_digest: Any) -> int:
    try:
        doc = parse_manifest(store.content.read(manifest_digest))
    except FusesnapError:
        return 0
    return sum(d.size for d in doc.children())


@cli.group(invoke_without_command=True)
@click.option("-q", "--quiet", is_flag=True, help="Names only.")
@click.pass_context
def images(ctx: click.Context, quiet: bool) -> None:
    """List images (same as ``images ls``)."""
    if ctx.invoked_subcommand is None:
        ctx.invoke(images_ls, quiet=quiet)


@images.command("ls")
@click.option("-q", "--quiet", is_flag=True, help="Names only.")
@pass_ctx
def images_ls(c: Context, quiet: bool = False) -> None:
    """List images in the store."""
    store = c.store()
    records = sorted(store.images.list(), key=lambda r: r.name)
    if quiet:
        for r in records:
            click.echo(r.name)
        return
    rows = [
        [
            r.name,
            r.manifest_digest.short,
            r.platform,
            human_size(_image_size(store, r.manifest_digest)),
            time.strftime("%Y-%m-%d %H:%M", time.localtime(r.updated)),
        ]
        for r in records
    ]
    click.echo(table(rows, ["REF", "MANIFEST", "PLATFORM", "SIZE", "PULLED"]))


@cli.command()
@click.argument("refs", nargs=-1, required=True)
@pass_ctx
def rmi(c: Context, refs: tuple[str, ...]) -> None:
    """Remove image names (content is freed by ``gc``)."""
    store = c.store()
    for ref in refs:
        name = str(Reference.parse(ref))
        store.images.delete(name)
        click.echo(f"removed {name}")
