"""``fusesnap snapshotter``: the containerd remote snapshotter daemon."""

from __future__ import annotations

import logging
from pathlib import Path

import click

from fusesnap.cli.app import Context, cli, pass_ctx
from fusesnap.containerd import DEFAULT_ADDRESS, SnapshotterOptions


@cli.command()
@click.option(
    "--address",
    type=click.Path(dir_okay=False, path_type=Path),
    default=DEFAULT_ADDRESS,
    show_default=True,
    help="Unix socket to serve containerd's snapshots API on.",
)
@click.option(
    "--root",
    "store_root",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Store directory (default: fusesnap's --root).",
)
@click.option(
    "--metrics-address",
    metavar="HOST:PORT",
    help="Serve Prometheus metrics on http://HOST:PORT/metrics.",
)
@pass_ctx
def snapshotter(
    c: Context, address: Path, store_root: Path | None, metrics_address: str | None
) -> None:
    """Serve as containerd's remote snapshotter until SIGTERM (containerd's config:
    [proxy_plugins.fusesnap] type = "snapshot", address = ADDRESS). Layers with an
    index anywhere are served lazily; others are unpacked by containerd as usual."""
    from fusesnap.containerd import serve  # loads grpc: this command only

    if not c.verbose:
        logging.getLogger("fusesnap").setLevel(logging.INFO)
    options = SnapshotterOptions(
        root=store_root or c.root,
        address=address,
        metrics_address=metrics_address,
        registry=c.registry_options(),
        verbose=c.verbose,
    )
    serve(options)  # it logs where it serves
