"""A client of Kubernetes' CRI (``runtime.v1``), for tests of containerd's CRI plugin."""

from tests.containerd.cri.client import CriClient, enum_value, message

__all__ = ["CriClient", "enum_value", "message"]
