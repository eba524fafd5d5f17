"""The OCI distribution client: the only package that speaks HTTP (httpx).

`open_registry_client` gives a `RegistryClient`: resolve a reference to a
manifest (`Resolved`), read manifests and blobs (whole, streamed, or as byte
ranges), push blobs and manifests, list referrers. Inside: `auth` (bearer and
basic challenges), `credentials` (docker config and credential helpers),
`_session` (one connection pool, per-repository tokens), `retry` (which failures
are retried, with backoff), `transfer` (streamed blob reads and uploads,
verified against their digest), `hosts` (mirrors and the server of each
registry, from containerd's ``hosts.toml``), `failover` (which host an operation
goes to; hosts that fail are skipped for a while). `RegistryOptions` carries the
global ``--insecure-registry`` / ``--ca-file`` / ``--hosts-dir`` choices to
whatever opens a client later.
"""

from fusesnap.registry._clients import warm_up
from fusesnap.registry.client import RegistryClient, RegistryOptions, Resolved, open_registry_client
from fusesnap.registry.credentials import Credentials, load_credentials
from fusesnap.registry.failover import HostHealth
from fusesnap.registry.hosts import DEFAULT_HOSTS_DIRS, HostsConfig, RegistryHost, load_hosts
from fusesnap.registry.retry import RetryPolicy
from fusesnap.registry.transfer import BlobSink

__all__ = [
    "DEFAULT_HOSTS_DIRS",
    "BlobSink",
    "Credentials",
    "HostHealth",
    "HostsConfig",
    "RegistryClient",
    "RegistryHost",
    "RegistryOptions",
    "Resolved",
    "RetryPolicy",
    "load_credentials",
    "load_hosts",
    "open_registry_client",
    "warm_up",
]
