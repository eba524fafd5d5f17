"""fusesnap as a containerd remote snapshotter (a proxy plugin over gRPC).

`server` runs the daemon (``fusesnap snapshotter``): containerd's snapshots
service (`service`, stubs generated from `api/*.proto`) over `snapshots`,
containerd's snapshot model on fusesnap's store. A layer whose image has an
index anywhere is served lazily (`labels` say which image; `remote` resolves
it) through one shared fusesnap mount per chain (`lowers`); any other is
unpacked by containerd into an ordinary snapshot. `filters` parses
containerd's list filters; `metrics` exports Prometheus counters. Importing
the package loads `options` only: `serve` (and grpc, ~0.1 s of imports)
loads on first use, which no other command needs.
"""

from typing import TYPE_CHECKING, Any

from fusesnap.containerd.options import DEFAULT_ADDRESS, SnapshotterOptions

if TYPE_CHECKING:
    from fusesnap.containerd.server import serve

__all__ = ["DEFAULT_ADDRESS", "SnapshotterOptions", "serve"]


def __getattr__(name: str) -> Any:
    if name == "serve":  # loaded on first use: it brings grpc
        from fusesnap.containerd.server import serve

        return serve
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
