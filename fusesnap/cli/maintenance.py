"""Commands that look after the store: content, lease, gc, cache."""

from __future__ import annotations

import time
from collections.abc import Callable

import click

from fusesnap.cli.app import SIZE, Context, cli, pass_ctx
from fusesnap.digest import Digest
from fusesnap.store import collect_garbage
from fusesnap.termui import human_size, table


@cli.group()
def content() -> None:
    """Inspect the content store."""


@content.command("ls")
@click.option("-q", "--quiet", is_flag=True, help="Digests only.")
@pass_ctx
def content_ls(c: Context, quiet: bool) -> None:
    """List blobs in the content store."""
    infos = sorted(c.store().content.list(), key=lambda i: i.digest)
    if quiet:
        for i in infos:
            click.echo(i.digest)
        return
    rows = [[str(i.digest), human_size(i.size), i.media_type] for i in infos]
    click.echo(table(rows, ["DIGEST", "SIZE", "MEDIA TYPE"]))


@content.command("rm")
@click.argument("digests", nargs=-1, required=True)
@pass_ctx
def content_rm(c: Context, digests: tuple[str, ...]) -> None:
    """Delete blobs by digest (images that need them become unusable until pulled again)."""
    store = c.store()
    _remove_each(digests, lambda d: store.content.delete(Digest(d)), "")


@cli.group()
def lease() -> None:
    """Inspect leases (holds that keep content from gc while work is in flight)."""


@lease.command("ls")
@pass_ctx
def lease_ls(c: Context) -> None:
    """List leases."""
    store = c.store()
    now = time.time()
    rows = []
    for le in sorted(store.leases.list(), key=lambda x: x.created):
        state = "live" if store.leases.is_live(le, now) else "dead"
        expires = "never" if le.expires is None else f"{max(le.expires - now, 0):.0f}s"
        labels = ",".join(f"{k}={v}" for k, v in sorted(le.labels.items()))
        owner = str(le.owner_pid) if le.owner_pid else "-"
        rows.append([le.id, state, owner, expires, str(len(le.resources)), labels])
    click.echo(table(rows, ["ID", "STATE", "OWNER", "EXPIRES", "RESOURCES", "LABELS"]))


@lease.command("rm")
@click.argument("ids", nargs=-1, required=True)
@pass_ctx
def lease_rm(c: Context, ids: tuple[str, ...]) -> None:
    """Delete leases."""
    store = c.store()
    _remove_each(ids, store.leases.delete, "lease ")


def _remove_each(keys: tuple[str, ...], delete: Callable[[str], object], what: str) -> None:
    """Delete each of ``keys`` in turn, saying so as it goes (an unknown key stops it with
    its one-line error)."""
    for key in keys:
        delete(key)
        click.echo(f"removed {what}{key}")


@cli.command()
@click.option("-n", "--dry-run", is_flag=True, help="Show what would be removed.")
@pass_ctx
def gc(c: Context, dry_run: bool) -> None:
    """Remove content that no image or live lease references."""
    result = collect_garbage(c.store(), dry_run=dry_run)
    verb = "would remove" if dry_run else "removed"
    for item in result.removed_content:
        click.echo(f"{verb} {item.digest}  {human_size(item.size)}  {item.media_type}")
    for layer in result.removed_layers:
        click.echo(f"{verb} layer {layer.digest}  {layer.chunk_count} chunks")
    for le in result.removed_leases:
        click.echo(f"{verb} lease {le.id}")
    for ing in result.removed_ingests:
        click.echo(f"{verb} partial download {ing.digest}  {human_size(ing.offset)}")
    if result.chunks_skipped:
        click.echo(f"kept every chunk: {result.chunks_skipped}")
    click.echo(
        f"gc: {verb} {len(result.removed_content)} blobs, {len(result.removed_layers)} layers, "
        f"{result.removed_chunks.count} chunks ({human_size(result.bytes_freed)}), "
        f"{len(result.removed_leases)} leases, {len(result.removed_ingests)} partial downloads"
    )


@cli.group(invoke_without_command=True)
@click.pass_context
def cache(ctx: click.Context) -> None:
    """The chunk store's size, its limit, and what is pinned or evictable.

    Under a limit (`cache limit SIZE`), chunks that can be fetched again (of lazily
    pulled layers) are evicted least recently used first; chunks of layers with no other
    source (commits, images pulled with --all) are never evicted, and count."""
    if ctx.invoked_subcommand is not None:
        return
    c = ctx.find_object(Context)
    assert c is not None
    usage = c.store().cache.usage(recount=True)
    limit = "none" if usage.limit is None else human_size(usage.limit)
    click.echo(f"size:      {human_size(usage.size)} in {usage.chunks} chunks (stored, compressed)")
    click.echo(f"limit:     {limit}")
    click.echo(f"pinned:    {human_size(usage.pinned)} (no other source: never evicted)")
    click.echo(f"evictable: {human_size(usage.evictable)} (can be fetched again)")
    if usage.unlisted:
        click.echo(f"unlisted:  {human_size(usage.unlisted)} (no layer lists them yet: gc's)")


@cache.command("limit")
@click.argument("size", required=False)
@pass_ctx
def cache_limit(c: Context, size: str | None) -> None:
    """Print the store's cache limit, or set it to SIZE (64M, 2G, ...; none removes it).
    Every process on the store honours it from its next store of chunks."""
    store = c.store()
    if size is None:
        limit = store.cache.limit()
        click.echo("none" if limit is None else f"{limit} ({human_size(limit)})")
        return
    value = None if size.strip().lower() == "none" else SIZE.convert(size, None, None)
    store.cache.set_limit(value)
    click.echo("cache limit: " + ("none" if value is None else f"{value} ({human_size(value)})"))
