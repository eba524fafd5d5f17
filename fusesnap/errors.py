"""The exception types users see.

Every error that fusesnap raises on purpose derives from `FusesnapError`, and
its message names the object it is about (``content sha256:ab12…: not found``).
Third-party exceptions are mapped at one boundary each (httpx in the registry
client, lmdb in the store) and never leak past it::

    FusesnapError
     ├── InvalidReferenceError      a malformed image reference
     ├── InvalidDigestError         a malformed digest string
     ├── NotFoundError              no such object (content, image, lease, ...)
     ├── AlreadyExistsError         the name or key is taken
     ├── DigestMismatchError        bytes do not hash to the digest they claim
     ├── ManifestError              a manifest/index/config that cannot be used
     │    └── PlatformNotFoundError no manifest in an index matches the platform
     ├── LayerError                 a layer blob or its index is corrupt, hostile or unsupported
     ├── StoreError                 the store cannot be opened or is inconsistent
     ├── MountError                 mounting or unmounting failed (busy, stale, no FUSE)
     └── RegistryError              talking to a registry failed
          ├── AuthenticationError   credentials missing or refused (401/403)
          ├── RegistryNotFoundError the registry says: unknown name/manifest/blob
          └── RegistryUnavailableError  connection errors, 5xx, 429 after retries
"""

from __future__ import annotations


class FusesnapError(Exception):
    """Base class of every error fusesnap raises on purpose."""


class InvalidReferenceError(FusesnapError, ValueError):
    """An image reference does not parse."""


class InvalidDigestError(FusesnapError, ValueError):
    """A digest string is not ``algorithm:hex`` with a supported algorithm."""


class NotFoundError(FusesnapError, LookupError):
    """The object asked for does not exist."""


class AlreadyExistsError(FusesnapError):
    """The name or key is already in use."""


class DigestMismatchError(FusesnapError):
    """Content does not match the digest (or size) it was promised under."""


class ManifestError(FusesnapError):
    """A manifest, index or image config is malformed or unsupported."""


class PlatformNotFoundError(ManifestError, NotFoundError):
    """No manifest in an image index matches the requested platform."""


class LayerError(FusesnapError):
    """A layer blob or its index cannot be used: corrupt, hostile or unsupported."""


class StoreError(FusesnapError):
    """The local store cannot be opened, or holds something inconsistent."""


class StoreFullError(StoreError):
    """The store could not write: its disk (or LMDB's map) is full."""


class MountError(FusesnapError):
    """Mounting or unmounting failed (busy, not mounted, not a directory, no FUSE)."""


class RegistryError(FusesnapError):
    """A registry request failed."""


class AuthenticationError(RegistryError):
    """The registry refused our credentials, or wants some and we have none."""


class RegistryNotFoundError(RegistryError, NotFoundError):
    """The registry answered 404 (unknown repository, manifest or blob)."""


class RegistryUnavailableError(RegistryError):
    """The registry kept failing (connection errors, 5xx, 429) past the retry budget."""
