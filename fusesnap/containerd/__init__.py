"""fusesnap as a containerd remote snapshotter (a proxy plugin over gRPC).

`server` runs the daemon (``fusesnap snapshotter``): containerd's snapshots
service (`service`, stubs generated from `api/*.proto`) over `snapshots`,
containerd's snapshot model on fusesnap's store. A layer whose image has an
index anywhere is served lazily (`labels` say which image; `remote` resolves
it) through one shared fusesnap mount per chain (`lowers`); any other is
unpacked by containerd into an ordinary snapshot. `filters` parses
containerd's list filters; `metrics` exports Prometheus counters.
"""

from fusesnap.containerd.server import DEFAULT_ADDRESS, SnapshotterOptions, serve

__all__ = ["DEFAULT_ADDRESS", "SnapshotterOptions", "serve"]
