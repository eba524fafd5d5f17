"""Commands on snapshots and commits: snapshot ls|info|rm, commit."""

from __future__ import annotations

import json
import time

import click

from fusesnap.cli.app import Context, cli, pass_ctx
from fusesnap.containers import commit_container
from fusesnap.snapshots import Snapshotter
from fusesnap.store import SnapshotRecord
from fusesnap.termui import table


def _short(key: str | None) -> str:
    if key is None:
        return "-"
    return key[:19] if key.startswith("sha256:") else key


def _doc(snapshots: Snapshotter, record: SnapshotRecord) -> dict[str, object]:
    path = snapshots.path(record)
    if record.namespace and record.id:  # the containerd snapshotter's directory
        path = snapshots.base.parent / "containerd" / "snapshots" / record.id
    return {
        "key": record.key,
        "kind": record.kind,
        "parent": record.parent,
        "layer": None if record.layer is None else str(record.layer),
        "diff_id": None if record.diff_id is None else str(record.diff_id),
        "path": None if path is None else str(path),
        "created": record.created,
        "updated": record.updated or record.created,
        "labels": record.labels,
        **({"namespace": record.namespace} if record.namespace else {}),
        **({"source": record.source, "manifest": str(record.manifest)} if record.source else {}),
    }


@cli.group()
def snapshot() -> None:
    """Snapshots: committed (one per layer prefix of an image, by chain ID), active
    (a container's writable upper dir) and views (read-only)."""


_NAMESPACE = click.option(
    "-n",
    "--namespace",
    metavar="NS",
    help="containerd namespace NS (snapshots of fusesnap's containerd snapshotter); "
    "without it, fusesnap's own.",
)


@snapshot.command("ls")
@click.option(
    "-n",
    "--namespace",
    metavar="NS",
    help="Only containerd namespace NS (default: every snapshot, fusesnap's own as '-').",
)
@click.option("-q", "--quiet", is_flag=True, help="Keys only.")
@pass_ctx
def snapshot_ls(c: Context, namespace: str | None, quiet: bool) -> None:
    """List snapshots: namespace, key, kind, parent, layer, creation time."""
    store = c.store()
    if namespace is None:
        records = store.snapshots.list_all()
    else:
        records = store.snapshots.in_namespace(namespace).list()
    if quiet:
        for s in records:
            click.echo(s.key)
        return
    rows = [
        [
            s.namespace or "-",
            s.key,
            f"{s.kind} (remote)" if s.source else s.kind,
            _short(s.parent),
            _short(None if s.layer is None else str(s.layer)),
            time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(s.created)),
        ]
        for s in records
    ]
    click.echo(table(rows, ["NAMESPACE", "KEY", "KIND", "PARENT", "LAYER", "CREATED"]))


@snapshot.command("info")
@click.argument("key")
@_NAMESPACE
@pass_ctx
def snapshot_info(c: Context, key: str, namespace: str | None) -> None:
    """Print snapshot KEY as JSON."""
    snapshots = Snapshotter(c.store(), c.root)
    if namespace:
        record = c.store().snapshots.in_namespace(namespace).get(key)
    else:
        record = snapshots.stat(key)
    click.echo(json.dumps(_doc(snapshots, record), indent=2))


@snapshot.command("rm")
@click.argument("keys", nargs=-1, required=True)
@pass_ctx
def snapshot_rm(c: Context, keys: tuple[str, ...]) -> None:
    """Remove snapshots (not one that others stand on); gc frees their layers later."""
    snapshots = Snapshotter(c.store(), c.root)
    for key in keys:
        snapshots.remove(key)
        click.echo(key)


@cli.command()
@click.argument("container_name", metavar="CONTAINER")
@click.argument("new_ref", metavar="NEWREF")
@pass_ctx
def commit(c: Context, container_name: str, new_ref: str) -> None:
    """Make image NEWREF from CONTAINER's image plus its changes (its upper dir) as a new
    layer; ``fusesnap run NEWREF`` then sees them."""
    c.close()
    result = commit_container(c.root, container_name, new_ref)
    click.echo(f"{result.image} {result.manifest_digest}")
