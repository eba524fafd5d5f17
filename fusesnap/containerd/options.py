"""What ``fusesnap snapshotter`` is started with (light: no grpc, which `server` loads)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from fusesnap.registry import RegistryOptions

__all__ = ["DEFAULT_ADDRESS", "SnapshotterOptions"]

DEFAULT_ADDRESS = Path("/run/fusesnap/snapshotter.sock")


@dataclass(frozen=True, slots=True)
class SnapshotterOptions:
    root: Path
    address: Path = DEFAULT_ADDRESS
    metrics_address: str | None = None
    registry: RegistryOptions = field(default_factory=RegistryOptions)
    verbose: bool = False
