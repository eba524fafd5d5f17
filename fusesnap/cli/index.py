"""``fusesnap index``: make sure every layer of an image has an index, and push them."""

from __future__ import annotations

import time

import click

from fusesnap.blocking import run_blocking
from fusesnap.cli.app import SIZE, Context, cli, pass_ctx, run_async
from fusesnap.cli.images import MAX_LAYER_SIZE, layer_table
from fusesnap.fs import MergedTree
from fusesnap.index import LayerIndex, Limits, decode
from fusesnap.lazy import profile as profiles
from fusesnap.oci import Platform
from fusesnap.pull import (
    PullResult,
    PushedArtifact,
    PushedSoci,
    SociOptions,
    push_index_artifact,
    push_soci_index,
)
from fusesnap.pull import pull as pull_image
from fusesnap.reference import Reference
from fusesnap.registry import open_registry_client
from fusesnap.store import Store
from fusesnap.termui import ProgressLine, human_size


def _indexes(store: Store, result: PullResult) -> list[LayerIndex]:
    return [decode(store.layers.index(layer.digest)) for layer in result.layers]


@cli.command("index")
@click.argument("ref")
@click.option(
    "--platform", "platform_text", metavar="OS/ARCH[/VARIANT]", help="Default: this host's."
)
@click.option(
    "--push", is_flag=True, help="Push the indexes to the registry as an index artifact of REF."
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["fusesnap", "soci"]),
    default="fusesnap",
    show_default=True,
    help="What --push pushes: fusesnap's index artifact, or a SOCI index (v2) of zTOCs.",
)
@click.option(
    "--span-size",
    type=SIZE,
    default="4M",
    show_default=True,
    help="soci: uncompressed bytes between zTOC checkpoints.",
)
@click.option(
    "--min-layer-size",
    type=SIZE,
    default="10M",
    show_default=True,
    help="soci: smaller layers get no zTOC (they are fetched whole).",
)
@click.option(
    "--tag", "soci_tag", metavar="TAG", help="soci: push the SOCI-enabled image here (REF's tag)."
)
@MAX_LAYER_SIZE
@pass_ctx
def index_cmd(
    c: Context,
    ref: str,
    platform_text: str | None,
    push: bool,
    fmt: str,
    span_size: int,
    min_layer_size: int,
    soci_tag: str | None,
    max_layer_size: int,
) -> None:
    """Make sure every layer of REF has an index in the store (as ``pull --lazy``: from an
    index artifact or a TOC, else built by streaming the layer once); print where each came
    from and its size. With --push, push them as an OCI artifact whose subject is REF's
    manifest, so that other machines pull REF lazily at once.

    With --push --format soci, push what soci-snapshotter reads instead: a zTOC for each
    gzip layer of at least --min-layer-size, a SOCI index (v2) listing them, REF's manifest
    annotated with the index's digest and an image index holding both, under REF's tag (or
    --tag). The manifest's digest changes; layers and config stay shared."""
    reference = Reference.parse(ref)
    plat = Platform.parse(platform_text) if platform_text else None
    if span_size < 32 << 10:
        raise click.BadParameter("at least 32 KiB", param_hint="--span-size")
    if push and fmt == "soci" and not (soci_tag or reference.tag):
        raise click.UsageError(f"{ref} names no tag to push the SOCI-enabled image to; use --tag")
    store = c.store()
    progress = ProgressLine(f"indexing {reference}", unit="layers")
    started = time.monotonic()

    async def main() -> tuple[PullResult, PushedArtifact | PushedSoci | None]:
        async with open_registry_client(
            insecure_registries=c.insecure_registries,
            ca_file=c.ca_file,
            hosts_dirs=c.hosts_dirs,
        ) as client:
            result = await pull_image(
                store,
                client,
                reference,
                platform=plat,
                progress=progress,
                limits=Limits(max_uncompressed=max_layer_size),
                check=MergedTree.build,
                lazy=True,
            )
            if not push:
                return result, None
            if fmt == "soci":
                progress.clear()
                click.echo(layer_table(store, result))
                soci_progress = ProgressLine(f"building zTOCs of {reference}", unit="layers")

                def step(line: str) -> None:
                    soci_progress.clear()
                    click.echo(line)

                try:
                    pushed_soci = await push_soci_index(
                        client,
                        reference,
                        options=SociOptions(span=span_size, min_layer_size=min_layer_size),
                        tag=soci_tag,
                        platform=plat,
                        progress=soci_progress,
                        on_step=step,
                    )
                finally:
                    soci_progress.clear()
                return result, pushed_soci
            indexes = await run_blocking(_indexes, store, result)
            profile = await run_blocking(profiles.load, store, str(result.manifest.digest))
            pushed = await push_index_artifact(
                client,
                reference,
                result.manifest,
                indexes,
                load_windows=store.chunks.get_many,
                profile=profile,
            )
            return result, pushed

    try:
        result, pushed = run_async(main)
    finally:
        progress.clear()
    if not isinstance(pushed, PushedSoci):
        click.echo(layer_table(store, result))
    click.echo(
        f"{result.name}: {result.manifest.digest}, {len(result.layers)} layers indexed, "
        f"fetched {human_size(result.fetched_bytes)} in {time.monotonic() - started:.1f}s"
    )
    if isinstance(pushed, PushedSoci):
        click.echo(
            f"pushed SOCI index {pushed.index.digest} ({pushed.ztocs} zTOC(s), "
            f"{human_size(pushed.ztoc_bytes)}; {pushed.skipped} layer(s) without one); "
            f"{reference.name}:{pushed.tag} is the SOCI-enabled image "
            f"{pushed.image_index.digest}"
        )
    elif pushed is not None:
        click.echo(
            f"pushed index artifact {pushed.digest} ({pushed.layers} layer indexes, "
            f"{human_size(pushed.index_bytes)}, gzip windows {human_size(pushed.windows_bytes)}"
            f"{', an access profile' if pushed.profile else ''}); "
            f"discoverable through {pushed.describe()}"
        )
