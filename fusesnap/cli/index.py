"""``fusesnap index``: make sure every layer of an image has an index, and push them."""

from __future__ import annotations

import time

import click

from fusesnap.blocking import run_blocking
from fusesnap.cli.app import Context, cli, pass_ctx, run_async
from fusesnap.cli.images import MAX_LAYER_SIZE, layer_table
from fusesnap.fs import MergedTree
from fusesnap.index import LayerIndex, Limits, decode
from fusesnap.lazy import profile as profiles
from fusesnap.oci import Platform
from fusesnap.pull import PullResult, PushedArtifact, push_index_artifact
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
@MAX_LAYER_SIZE
@pass_ctx
def index_cmd(
    c: Context, ref: str, platform_text: str | None, push: bool, max_layer_size: int
) -> None:
    """Make sure every layer of REF has an index in the store (as ``pull --lazy``: from an
    index artifact or a TOC, else built by streaming the layer once); print where each came
    from and its size. With --push, push them as an OCI artifact whose subject is REF's
    manifest, so that other machines pull REF lazily at once."""
    reference = Reference.parse(ref)
    plat = Platform.parse(platform_text) if platform_text else None
    store = c.store()
    progress = ProgressLine(f"indexing {reference}", unit="layers")
    started = time.monotonic()

    async def main() -> tuple[PullResult, PushedArtifact | None]:
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
    click.echo(layer_table(store, result))
    click.echo(
        f"{result.name}: {result.manifest.digest}, {len(result.layers)} layers indexed, "
        f"fetched {human_size(result.fetched_bytes)} in {time.monotonic() - started:.1f}s"
    )
    if pushed is not None:
        click.echo(
            f"pushed index artifact {pushed.digest} ({pushed.layers} layer indexes, "
            f"{human_size(pushed.index_bytes)}, gzip windows {human_size(pushed.windows_bytes)}"
            f"{', an access profile' if pushed.profile else ''}); "
            f"discoverable through {pushed.describe()}"
        )
