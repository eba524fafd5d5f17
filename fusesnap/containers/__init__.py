"""Containers: an OCI runtime spec, runc, and a container's lifetime over a mount.

`container` creates a container's bundle (a lazy mount as the overlay's lower
dir, the snapshot's upper dir) and records it; `spec` builds config.json; `runc`
drives the runtime; `runner` starts a detached container and supervises it;
`commit` turns a container's changes into a new image.
"""

from fusesnap.containers import container
from fusesnap.containers.commit import commit_container
from fusesnap.containers.runner import start_detached
from fusesnap.containers.spec import ProcessOptions, SpecError, parse_env_option

__all__ = [
    "ProcessOptions",
    "SpecError",
    "commit_container",
    "container",
    "parse_env_option",
    "start_detached",
]
