"""The mount daemon: one process per mounted image, serving FUSE until unmounted.

`start_mount` (module `start`) checks the image, forks the daemon and waits until
the mount answers; `serve_image` (`daemon`) is the daemon's body: the lease, the
FUSE session, the lazy fetcher and the side tasks (control socket, prefetch).
`control` answers ``fusesnap stats``/``unmount`` on a unix socket; `state` is the
daemon's ``mount.json``; `mountpoint` reads /proc/self/mountinfo and unmounts;
`zygote` forks daemons for a long-running starter that holds a store open;
`holder` keeps a mount's FUSE connection and restarts its daemon when it dies, and
`takeover` is what a daemon does differently under a holder.
"""

from fusesnap.mountd.daemon import serve_image
from fusesnap.mountd.holder import hand_over, wait_serving
from fusesnap.mountd.imagecheck import check_image
from fusesnap.mountd.mountpoint import MountError, mount_info
from fusesnap.mountd.options import PREFETCH_MODES, DaemonOptions, ReadyPipe
from fusesnap.mountd.start import mount_stats, start_mount, unmount
from fusesnap.mountd.state import mount_failure
from fusesnap.mountd.zygote import Zygote

__all__ = [
    "PREFETCH_MODES",
    "DaemonOptions",
    "MountError",
    "ReadyPipe",
    "Zygote",
    "check_image",
    "hand_over",
    "mount_failure",
    "mount_info",
    "mount_stats",
    "serve_image",
    "start_mount",
    "unmount",
    "wait_serving",
]
