"""Commands that look inside images without mounting them: layers, ls, cat, tree, diff.

They read the store (indexes and chunks); for a lazily pulled image ``cat``
fetches just the chunks of the files it prints. Every byte printed is verified
against its chunk digest.
"""

from __future__ import annotations

import errno
import os
import stat
import sys
import time

import click

from fusesnap.cli.app import Context, cli, pass_ctx, run_async
from fusesnap.fs import MergedTree, Node, diff_trees
from fusesnap.image import ImageView, PathError
from fusesnap.index import ChunkRef, Entry, EntryType, LayerIndex
from fusesnap.pull import describe_source, open_registry_fetcher
from fusesnap.reference import Reference
from fusesnap.termui import human_size, table

_TYPE_BITS = {
    EntryType.FILE: stat.S_IFREG,
    EntryType.HARDLINK: stat.S_IFREG,
    EntryType.DIR: stat.S_IFDIR,
    EntryType.SYMLINK: stat.S_IFLNK,
    EntryType.CHAR: stat.S_IFCHR,
    EntryType.BLOCK: stat.S_IFBLK,
    EntryType.FIFO: stat.S_IFIFO,
}
_LAYER_OPTION = click.option(
    "--layer", type=int, metavar="N", help="Only layer N (0 = bottom, -1 = top), as it is alone."
)


def _short_media_type(media_type: str) -> str:
    return media_type.rsplit(".", 1)[-1] if "layer" in media_type else media_type


@cli.command()
@click.argument("ref")
@pass_ctx
def layers(c: Context, ref: str) -> None:
    """List REF's layers: digest, type, sizes, entries and how much is in the store."""
    view = ImageView.open(c.store(), ref)
    rows = []
    for state in view.layer_states():
        desc = state.descriptor
        if state.info is None or state.presence is None:
            unpacked, entries, here, source = "-", "-", "not indexed", "-"
        else:
            source = describe_source(state.info.source)
            unpacked = human_size(state.info.uncompressed_size)
            entries = str(state.info.entry_count)
            p = state.presence
            pct = 100 * p.present // p.total if p.total else 100
            here = f"{pct}% ({human_size(p.raw_bytes)} in {p.present}/{p.total} chunks)"
        rows.append(
            [
                str(state.position),
                desc.digest.short,
                _short_media_type(desc.media_type),
                human_size(desc.size),
                unpacked,
                entries,
                here,
                source,
            ]
        )
    header = ["#", "DIGEST", "TYPE", "SIZE", "UNPACKED", "ENTRIES", "IN STORE", "INDEX"]
    click.echo(table(rows, header))
    stats = c.store().chunks.stats()
    click.echo(f"chunk store: {stats.count} chunks, {human_size(stats.stored_bytes)} stored")


def _mode_string(entry: Entry) -> str:
    return stat.filemode(_TYPE_BITS[entry.type] | entry.perm)


def _long_line(name: str, node: Node) -> str:
    e = node.entry
    if e.type in (EntryType.CHAR, EntryType.BLOCK):
        size = f"{e.devmajor}, {e.devminor}"
    elif e.type is EntryType.SYMLINK:
        size = str(len(os.fsencode(e.linkname)))
    else:
        size = str(e.size if e.type is EntryType.FILE else 0)
    when = time.strftime("%Y-%m-%d %H:%M", time.gmtime(e.mtime))
    target = f" -> {e.linkname}" if e.type is EntryType.SYMLINK else ""
    return (
        f"{_mode_string(e)} {node.nlink:>3} {e.uid:>5} {e.gid:>5} {size:>10} {when} {name}{target}"
    )


def _whiteouts(view: ImageView, layer: int, directory: str) -> list[str]:
    """Whiteout markers of one layer in ``directory`` (the merged tree hides them)."""
    out = []
    for entry in view.layer_index(layer).entries:
        parent, _, name = entry.path.rpartition("/")
        if parent == directory and name.startswith(".wh."):
            what = "opaque: hides lower contents" if name == ".wh..wh..opq" else "whiteout"
            out.append(f"{name}  ({what})")
    return out


@cli.command("ls")
@click.argument("ref")
@click.argument("path", default="/")
@click.option("-l", "long", is_flag=True, help="Long listing (mode, links, owner, size, mtime).")
@click.option("-d", "directory", is_flag=True, help="List a directory itself, not its contents.")
@_LAYER_OPTION
@pass_ctx
def ls_cmd(c: Context, ref: str, path: str, long: bool, directory: bool, layer: int | None) -> None:
    """List PATH in REF's merged root filesystem (or in one layer)."""
    view = ImageView.open(c.store(), ref)
    node = view.resolve(path, layer=layer, follow=not long)
    rel = view.tree(layer).path_of(node.ino)
    if node.is_dir and not directory:
        children = view.tree(layer).listdir(node.ino)
    else:
        children = [(rel.rpartition("/")[2] or "/", node)]
    for name, child in children:
        click.echo(_long_line(name, child) if long else name)
    if layer is not None and node.is_dir and not directory:
        for line in _whiteouts(view, view.layer_position(layer), rel):
            click.echo(line)


@cli.command()
@click.argument("ref")
@click.argument("paths", nargs=-1, required=True)
@_LAYER_OPTION
@pass_ctx
def cat(c: Context, ref: str, paths: tuple[str, ...], layer: int | None) -> None:
    """Write files from REF to stdout (symlinks are followed inside the image)."""
    store = c.store()
    view = ImageView.open(store, ref)
    out = sys.stdout.buffer
    for path in paths:
        node = view.resolve(path, layer=layer)
        if node.is_dir:
            raise PathError(errno.EISDIR, f"path {path}: is a directory")
        if node.entry.type is not EntryType.FILE:
            raise PathError(errno.EINVAL, f"path {path}: not a regular file ({node.entry.type})")
        missing = store.chunks.missing(r.digest for r in node.entry.chunks)
        if missing:
            # A lazily pulled image: fetch just this file's chunks (verified, then stored).
            index = view.layer_index(node.layer if layer is None else layer)
            refs = [r for r in node.entry.chunks if r.digest in missing]
            _fetch(c, view.record.name, index, refs)
        for piece in view.read(node):
            out.write(piece)
    out.flush()


def _fetch(c: Context, name: str, index: LayerIndex, refs: list[ChunkRef]) -> None:
    async def main() -> None:
        async with open_registry_fetcher(
            Reference.parse(name),
            c.store().chunks,
            registry=c.registry_options(),
        ) as fetcher:
            await fetcher.get_many(index, refs)

    run_async(main)


def _walk(tree: MergedTree, top: Node, top_path: str) -> list[tuple[str, Node]]:
    prefix = tree.path_of(top.ino)
    if not top.is_dir:
        return [(top_path, top)]
    base = top_path.rstrip("/") or ""
    out = []
    for rel, node in tree.walk(prefix):
        sub = rel[len(prefix) :].lstrip("/")
        out.append((f"{base}/{sub}" if sub else (top_path if top_path != "" else "/"), node))
    return out


@cli.command()
@click.argument("ref")
@click.argument("path", default="/")
@click.option("-l", "long", is_flag=True, help="Long listing.")
@click.option(
    "--type",
    "kind",
    type=click.Choice(["f", "d", "l", "c", "b", "p"]),
    help="Only entries of this type (as find -type).",
)
@_LAYER_OPTION
@pass_ctx
def tree(c: Context, ref: str, path: str, long: bool, kind: str | None, layer: int | None) -> None:
    """Every path under PATH, parents first (like ``find``)."""
    view = ImageView.open(c.store(), ref)
    merged = view.tree(layer)
    node = view.resolve(path, layer=layer, follow=False)
    want = {
        "f": {EntryType.FILE},
        "d": {EntryType.DIR},
        "l": {EntryType.SYMLINK},
        "c": {EntryType.CHAR},
        "b": {EntryType.BLOCK},
        "p": {EntryType.FIFO},
    }.get(kind or "")
    start = "/" + merged.path_of(node.ino) if merged.path_of(node.ino) else "/"
    for shown, child in _walk(merged, node, start):
        if want is not None and child.entry.type not in want:
            continue
        click.echo(_long_line(shown, child) if long else shown)


@cli.command()
@click.argument("ref1")
@click.argument("ref2")
@pass_ctx
def diff(c: Context, ref1: str, ref2: str) -> None:
    """Paths added (A), removed (D) and changed (M, with what changed) from REF1 to REF2."""
    store = c.store()
    a, b = ImageView.open(store, ref1).tree(), ImageView.open(store, ref2).tree()
    changes = diff_trees(a, b)
    for ch in changes:
        mark = {"added": "A", "removed": "D", "changed": "M"}[ch.kind]
        extra = f" ({', '.join(ch.what)})" if ch.what else ""
        below = f" [+{ch.descendants} below]" if ch.descendants else ""
        click.echo(f"{mark} /{ch.path}{extra}{below}")
    counts = {k: sum(1 for ch in changes if ch.kind == k) for k in ("added", "removed", "changed")}
    click.echo(
        f"{counts['added']} added, {counts['removed']} removed, {counts['changed']} changed",
        err=True,
    )
