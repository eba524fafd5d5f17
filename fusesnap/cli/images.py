"""Commands that move images: pull, images, rmi."""

from __future__ import annotations

import time
from typing import Any

import click

from fusesnap.cli.app import SIZE, Context, cli, pass_ctx, run_async
from fusesnap.errors import FusesnapError
from fusesnap.fs import MergedTree
from fusesnap.image import ImageView
from fusesnap.index import Limits
from fusesnap.oci import Platform, parse_manifest
from fusesnap.pull import PullResult
from fusesnap.pull import pull as pull_image
from fusesnap.reference import Reference
from fusesnap.registry import open_registry_client
from fusesnap.snapshots import Snapshotter
from fusesnap.store import Store
from fusesnap.termui import ProgressLine, human_size, table

MAX_LAYER_SIZE = click.option(
    "--max-layer-size",
    type=SIZE,
    default="64G",
    show_default=True,
    help="Refuse a layer that unpacks to more than this (a decompression bomb).",
)


@cli.command()
@click.argument("ref")
@click.option(
    "--platform", "platform_text", metavar="OS/ARCH[/VARIANT]", help="Default: this host's."
)
@MAX_LAYER_SIZE
@click.option(
    "--lazy/--all",
    default=False,
    help="--lazy: store each layer's index only (from its eStargz or zstd:chunked TOC, an "
    "index artifact, a SOCI zTOC, else built by streaming the layer once); file contents are "
    "fetched when read. --all (default): every layer complete; after --lazy, only what is missing.",
)
@pass_ctx
def pull(c: Context, ref: str, platform_text: str | None, max_layer_size: int, lazy: bool) -> None:
    """Pull REF's manifest, config and layers into the store (each layer indexed, its files
    kept as de-duplicated chunks)."""
    reference = Reference.parse(ref)
    plat = Platform.parse(platform_text) if platform_text else None
    started = time.monotonic()
    result = pull_with_progress(
        c, reference, platform=plat, lazy=lazy, limits=Limits(max_uncompressed=max_layer_size)
    )
    elapsed = time.monotonic() - started
    if lazy:
        click.echo(layer_table(c.store(), result))
    elif result.cached:
        click.echo(f"committed snapshot {result.cached} present: every layer is local")
    click.echo(
        f"{result.name}: {result.manifest.digest} ({result.platform}), "
        f"{len(result.layers)} layers, fetched {human_size(result.fetched_bytes)} "
        f"in {elapsed:.1f}s"
    )


def pull_with_progress(
    c: Context,
    reference: Reference,
    *,
    platform: Platform | None = None,
    lazy: bool,
    limits: Limits | None = None,
) -> PullResult:
    """Pull with a progress line on a terminal and the merged-tree check (``mount`` uses it
    to pull an image lazily first)."""
    store = c.store()
    progress = ProgressLine(f"pulling {reference}" + (" (lazy)" if lazy else ""), unit="layers")

    async def main() -> PullResult:
        async with open_registry_client(
            insecure_registries=c.insecure_registries,
            ca_file=c.ca_file,
            hosts_dirs=c.hosts_dirs,
        ) as client:
            return await pull_image(
                store,
                client,
                reference,
                platform=platform,
                progress=progress,
                limits=limits,
                check=MergedTree.build,
                lazy=lazy,
            )

    try:
        return run_async(main)
    finally:
        progress.clear()


def layer_table(store: Store, result: PullResult) -> str:
    """Per layer: where its index came from, the index's size, how much of it is local."""
    rows = []
    for n, outcome in enumerate(result.outcomes):
        digest = outcome.layer.digest
        info = store.layers.info(digest)
        p = store.layers.present_chunks(digest)
        pct = 100 * p.present // p.total if p.total else 100
        rows.append(
            [
                str(n),
                digest.short,
                outcome.action,
                human_size(info.index_size),
                f"{pct}% ({human_size(p.raw_bytes)} in {p.present}/{p.total} chunks)",
                outcome.text,
            ]
        )
    return table(rows, ["#", "DIGEST", "SOURCE", "INDEX", "LOCAL", "HOW"])


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
    """Remove image names and the committed snapshots only they used (content is freed by
    ``gc``)."""
    store = c.store()
    snapshots = Snapshotter(store, c.root)
    for ref in refs:
        name = str(Reference.parse(ref))
        try:
            view: ImageView | None = ImageView.open(store, name)
        except FusesnapError:
            view = None  # not there (delete says so), or its config is gone: no chain
        store.images.delete(name)
        released = snapshots.release_image(view) if view is not None else []
        more = f" and {len(released)} committed snapshots" if released else ""
        click.echo(f"removed {name}{more}")
