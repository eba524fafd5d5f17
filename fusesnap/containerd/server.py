"""The snapshotter daemon: the gRPC server on a unix socket, until SIGTERM or SIGINT.

`serve` forks the zygote that will fork the mount daemons, opens the store,
adopts the lower mounts that running containers use (they outlive a restart
of this daemon: each has its own mount daemon), and
serves `SnapshotsService` from a pool of threads. Stopping lets calls in
flight finish (a few seconds) and leaves every mount up: containers keep
their root filesystems while the snapshotter restarts (a systemd unit for it
says ``KillMode=process`` so that the mount daemons are not killed with it).
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing, suppress
from pathlib import Path

import grpc

from fusesnap.containerd import api
from fusesnap.containerd.lowers import LowerMounts
from fusesnap.containerd.metrics import Metrics
from fusesnap.containerd.options import SnapshotterOptions
from fusesnap.containerd.remote import RemoteImages
from fusesnap.containerd.service import SnapshotsService
from fusesnap.containerd.snapshots import Snapshots
from fusesnap.errors import FusesnapError
from fusesnap.mountd import Zygote
from fusesnap.registry import warm_up
from fusesnap.store import open_store

__all__ = ["serve"]

log = logging.getLogger(__name__)

WORKERS = 16
STOP_GRACE = 5.0


class AddressInUseError(FusesnapError):
    """Another process serves on the socket already."""


def _claim_socket(path: Path) -> None:
    """Make way for a new socket at ``path``: a stale one (nobody listens) is removed;
    `AddressInUseError` if something answers there."""
    path.parent.mkdir(mode=0o711, parents=True, exist_ok=True)
    if not path.exists():
        return
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
    except OSError:
        path.unlink()
        return
    finally:
        probe.close()
    raise AddressInUseError(f"{path}: another snapshotter is serving there")


def serve(options: SnapshotterOptions) -> None:
    """Serve until SIGTERM or SIGINT (module docstring). Blocks."""
    address = Path(os.path.abspath(options.address))
    _claim_socket(address)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    warm_up()  # the first resolve, and every mount daemon the zygote forks, skip it
    zygote = Zygote()  # before the store is open and any thread runs: it forks daemons
    with closing(zygote), open_store(options.root) as store:
        metrics = Metrics()
        lowers = LowerMounts(options.root, options.registry, verbose=options.verbose, zygote=zygote)
        snapshots = Snapshots(
            store, options.root, lowers, RemoteImages(options.registry), on_layer=metrics.layer
        )
        metrics.watch_mounts(lowers.stats)
        released = snapshots.release_unused()
        if released:
            log.info("released %d lower mounts no snapshot uses", len(released))
        server = grpc.server(ThreadPoolExecutor(max_workers=WORKERS))
        api.add_to_server(SnapshotsService(snapshots, metrics), server)
        server.add_insecure_port(f"unix://{address}")
        server.start()
        try:
            os.chmod(address, 0o660)
            if options.metrics_address:
                metrics.serve(options.metrics_address)
            log.info("serving containerd's snapshots API on %s", address)
            stop.wait()
            log.info("stopping (mounts stay up)")
        finally:
            server.stop(STOP_GRACE).wait()
            with suppress(FileNotFoundError):
                address.unlink()
