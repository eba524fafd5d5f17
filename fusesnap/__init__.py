"""fusesnap: mount OCI/Docker images lazily from a registry as a read-only tree."""

__version__ = "0.1.0"
