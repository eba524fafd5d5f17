"""Prometheus metrics of the snapshotter daemon (``--metrics-address``).

Counted by the daemon itself: gRPC requests by method and code, and their
latency; layers served remotely (lazily) or left to containerd to unpack.
Read at scrape time from each lower mount's daemon (`fusesnap.mountd`, over
its control socket): live mounts, bytes fetched from registries, fetch
requests and errors, chunk cache hits and misses, summed over the mounts now
up (a mount taken down takes its counts with it, as a restarted process would).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

__all__ = ["Metrics"]

_PREFIX = "fusesnap_snapshotter"

# (metric name, help, section of the daemon's stats, key)
_MOUNT_COUNTERS = (
    (
        "fetched_bytes",
        "Bytes fetched from registries by the lower mounts.",
        "fetch",
        "bytes_fetched",
    ),
    ("fetch_requests", "Range requests sent by the lower mounts.", "fetch", "requests"),
    ("fetch_errors", "Failed range requests of the lower mounts.", "fetch", "failures"),
    ("verify_errors", "Fetched chunks that failed verification.", "fetch", "verify_failures"),
    (
        "store_errors",
        "Fetched chunks the lower mounts could not store (fetched again when read).",
        "fetch",
        "store_failures",
    ),
    ("chunk_cache_hits", "Chunk reads answered from memory.", "cache", "hits"),
    ("chunk_cache_misses", "Chunk loads from the store or network.", "cache", "misses"),
)


class _Mounts(Collector):
    def __init__(self, stats: Callable[[], Iterable[Mapping[str, Any]]]) -> None:
        self._stats = stats

    def collect(self) -> Iterator[Any]:
        snapshots = list(self._stats())
        yield GaugeMetricFamily(
            f"{_PREFIX}_mounts", "Live lower mounts (one per remote chain).", value=len(snapshots)
        )
        for name, text, section, key in _MOUNT_COUNTERS:
            total = sum(int((s.get(section) or {}).get(key, 0)) for s in snapshots)
            yield CounterMetricFamily(f"{_PREFIX}_{name}", text, value=total)


class Metrics:
    """The daemon's metrics in a registry of their own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            f"{_PREFIX}_requests",
            "gRPC requests by method and status code.",
            ["method", "code"],
            registry=self.registry,
        )
        self.latency = Histogram(
            f"{_PREFIX}_request_seconds",
            "gRPC request latency by method.",
            ["method"],
            registry=self.registry,
        )
        self.layers = Counter(
            f"{_PREFIX}_layers",
            "Layers prepared, by how: remote (served lazily) or local (unpacked by containerd).",
            ["how"],
            registry=self.registry,
        )

    def request(self, method: str, code: str, seconds: float) -> None:
        self.requests.labels(method, code).inc()
        self.latency.labels(method).observe(seconds)

    def layer(self, how: str) -> None:
        self.layers.labels(how).inc()

    def watch_mounts(self, stats: Callable[[], Iterable[Mapping[str, Any]]]) -> None:
        """Report the lower mounts' counters, read through ``stats`` at each scrape."""
        self.registry.register(_Mounts(stats))

    def serve(self, address: str) -> None:
        """Serve ``/metrics`` on ``HOST:PORT`` (a thread of its own)."""
        host, _, port = address.rpartition(":")
        start_http_server(int(port), addr=host or "127.0.0.1", registry=self.registry)
