"""Commands that serve an image as a filesystem: mount, umount, remount, stats."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import click

from fusesnap.cli.app import SIZE, Context, cli, pass_ctx
from fusesnap.cli.images import layer_table, pull_with_progress
from fusesnap.errors import NotFoundError
from fusesnap.fuse import DEFAULT_MAX_BYTES
from fusesnap.image import ImageView
from fusesnap.mountd import (
    PREFETCH_MODES,
    DaemonOptions,
    check_image,
    hand_over,
    mount_stats,
    serve_image,
    start_mount,
    unmount,
)
from fusesnap.reference import Reference
from fusesnap.termui import human_size, table


@cli.command()
@click.argument("ref")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option("--foreground", is_flag=True, help="Serve from this process until unmounted.")
@click.option(
    "--allow-other",
    is_flag=True,
    help="Let other users see the mount (non-root: needs user_allow_other in /etc/fuse.conf).",
)
@click.option(
    "--cache-size",
    type=SIZE,
    default=str(DEFAULT_MAX_BYTES),
    help="Memory for decompressed chunks (the kernel caches file pages too).  [default: 16M]",
)
@click.option(
    "--prefetch",
    type=click.Choice(list(PREFETCH_MODES)),
    default="auto",
    show_default=True,
    help="What a lazy mount fetches in the background once ready. auto: eStargz landmark "
    "files and the image's recorded access profile, if any; profile: the same, warning if "
    "there is no profile; all: those, then every chunk (a full pull); none: nothing.",
)
@click.option(
    "--record",
    is_flag=True,
    help="Record which chunks are read, in order, and store them at unmount as the image's "
    "access profile (later mounts prefetch it; kept by a lease, see: fusesnap lease ls).",
)
@pass_ctx
def mount(
    c: Context,
    ref: str,
    directory: Path,
    foreground: bool,
    allow_other: bool,
    cache_size: int,
    prefetch: str,
    record: bool,
) -> None:
    """Mount image REF read-only at DIRECTORY; returns once it is ready, the daemon serving
    in the background (log: ROOT/mounts/ID/daemon.log). An image not in the store is pulled
    lazily first: only the bytes that are read are fetched."""
    options = DaemonOptions(
        root=c.root,
        ref=ref,
        mountpoint=directory,
        allow_other=allow_other,
        cache_bytes=cache_size,
        prefetch=prefetch,
        record=record,
        registry=c.registry_options(),
        verbose=c.verbose,
    )
    view = _pull_lazily_if_needed(c, ref)
    if not foreground:
        state = start_mount(options, view=view)
        click.echo(f"mounted {state.image} at {state.mountpoint} (pid {state.pid})")
        return

    def on_ready(message: str) -> None:
        if message == "ready":
            click.echo(f"mounted {ref} at {directory} (Ctrl-C unmounts)")

    serve_image(options, on_ready=on_ready, view=view)


def _pull_lazily_if_needed(c: Context, ref: str) -> ImageView:
    """The image, checked and its tree built; one not (wholly indexed) in the store is
    pulled lazily first: manifest, config and layer indexes only; file contents are
    fetched as they are read."""
    try:
        view = check_image(c.store(), ref)
    except NotFoundError:
        result = pull_with_progress(c, Reference.parse(ref), lazy=True)
        click.echo(layer_table(c.store(), result))
        view = check_image(c.store(), ref)
    view.tree()
    c.close()  # the daemon opens the store itself
    return view


@cli.command()
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option("-l", "--lazy", is_flag=True, help="Detach even while processes use it.")
@pass_ctx
def umount(c: Context, directory: Path, lazy: bool) -> None:
    """Unmount a fusesnap mount (the daemon exits, its lease goes); clears a stale one."""
    click.echo(f"{unmount(c.root, directory, lazy=lazy)}: {os.path.abspath(directory)}")


@cli.command()
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@pass_ctx
def remount(c: Context, directory: Path) -> None:
    """Hand a mount to a fresh daemon (after an upgrade); its readers see no error."""
    state = hand_over(c.root, directory)
    click.echo(f"served by daemon {state.pid}: {os.path.abspath(directory)}")


def _holder(s: dict[str, Any]) -> str:
    holder = s.get("holder_pid")
    return "" if holder is None else f" (holder {holder})"


def _stats_lines(s: dict[str, Any]) -> str:
    cache = s["cache"]
    lookups = cache["hits"] + cache["misses"] + cache["joined"]
    hit_rate = f"{100 * cache['hits'] / lookups:.1f}%" if lookups else "-"
    head = [
        f"mount:     {s['mountpoint']}",
        f"image:     {s['image']} ({s['manifest_digest'][:19]})",
        f"daemon:    pid {s['pid']}{_holder(s)}, up {s['uptime']:.0f}s, lease {s['lease_id']}",
        f"requests:  {s['requests_total']} ({s['negative_lookups']} negative lookups)",
        f"read:      {human_size(s['bytes_read'])}",
        f"cache:     {cache['hits']} hits, {cache['misses']} misses, {cache['joined']} joined "
        f"({hit_rate} hit rate); {cache['cached_pieces']} pieces, "
        f"{human_size(cache['cached_bytes'])} of {human_size(cache['max_bytes'])}, "
        f"{cache['evictions']} evictions",
        f"chunks:    {cache['loaded']} loaded ({human_size(cache['loaded_bytes'])}; "
        f"{cache['prefetched']} ahead of sequential readers), {cache['load_errors']} failed",
        f"inodes:    {s['inodes_known']} of {s['inodes']} known to the kernel",
    ]
    fetch = s.get("fetch")
    if fetch is not None:
        spans = fetch.get("spans_from_store", 0)
        head.append(
            f"fetched:   {human_size(fetch['bytes_fetched'])} in {fetch['requests']} range "
            f"requests: {fetch['chunks_fetched']} chunks asked for (+{fetch['chunks_extra']} "
            f"neighbours), {fetch['chunks_from_store']} already local"
            + (f" (+{spans} SOCI spans inflated from the store)" if spans else "")
            + f", {fetch['failures']} failed requests, {fetch['verify_failures']} bad chunks"
        )
        head.append(
            f"stored:    {fetch['chunks_stored']} fetched chunks in {fetch['store_batches']} "
            f"batches, {fetch['store_failures']} not stored (store errors), "
            f"{fetch['store_skipped']} not stored (no room under the cache limit)"
        )
        head.append(
            f"evicted:   {fetch['evicted_chunks']} chunks "
            f"({human_size(fetch['evicted_bytes'])}) to make room in the store"
        )
    else:
        head.append("fetched:   nothing (every chunk is local)")
    pre = s.get("prefetch")
    if pre is not None:
        head.append(
            f"prefetch:  {pre['mode']}, {pre['state']}: {pre['landmark_chunks']} landmark and "
            f"{pre['profile_chunks']} profile chunks "
            f"({'a profile' if pre['profile'] else 'no profile'}); {pre['fetched']} fetched, "
            f"{pre['already_stored']} already local, {pre['failed']} failed"
            + ("; recording" if s.get("recording") else "")
        )
    head.append("")
    rows = [[op, str(n)] for op, n in s["requests"].items()]
    rows += [[f"error {key}", str(n)] for key, n in s["errors"].items()]
    return "\n".join(head) + table(rows, ["REQUEST", "COUNT"])


@cli.command()
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="The daemon's counters as JSON.")
@pass_ctx
def stats(c: Context, directory: Path, as_json: bool) -> None:
    """Requests served, bytes read, chunk cache hits and misses of a running mount."""
    s = mount_stats(c.root, directory)
    click.echo(json.dumps(s, indent=1) if as_json else _stats_lines(s))
