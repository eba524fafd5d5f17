"""The registry side of fusesnap: the OCI Distribution client and its credentials.

Public interface; other packages import from here, not from the modules::

    async with open_registry_client() as registry:
        resolved = await registry.resolve(ref, platform=None)
"""

from fusesnap.lazy.blobs import BlobSink
from fusesnap.lazy.credentials import Credentials, load_credentials
from fusesnap.lazy.registry import RegistryClient, Resolved, open_registry_client
from fusesnap.lazy.retry import RetryPolicy

__all__ = [
    "BlobSink",
    "Credentials",
    "RegistryClient",
    "Resolved",
    "RetryPolicy",
    "load_credentials",
    "open_registry_client",
]
