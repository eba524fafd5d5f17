"""``make demo``: fusesnap's main job, end to end, on this machine.

1. start a real Distribution registry on a loopback port (left running);
2. build a real Debian 12 image (debootstrap, cached) and push it;
3. pull it with fusesnap (progress on a terminal), list it, look inside it;
4. show that a second pull fetches nothing and that gc frees what rmi released;
5. push the layer indexes, then mount the image lazily from a cold store, read a
   file, run python3 in it with chroot, and show how little was fetched;
6. run a container from it with runc on a cold store and show what was fetched.

Each step prints the command it runs, so it doubles as a tutorial.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from tools.faultproxy import FaultProxy
from tools.images.catalog import build_and_push
from tools.registry import start_detached

DEMO_DIR = Path(os.environ.get("FUSESNAP_DEMO_DIR", "/tmp/fusesnap-demo"))


def step(title: str) -> None:
    print(f"\n\033[1m== {title}\033[0m" if sys.stdout.isatty() else f"\n== {title}", flush=True)


def fusesnap(*args: str, root: Path = DEMO_DIR / "store") -> None:
    cmd = [sys.executable, "-m", "fusesnap", "--root", str(root), *args]
    print(f"$ fusesnap --root {root} {shlex.join(args)}", flush=True)
    subprocess.run(cmd, check=True)


def main() -> None:
    step("Start a local registry (docker-registry on a loopback port)")
    host = start_detached(DEMO_DIR / "registry")
    print(
        f"registry at http://{host}/ (stop: python -m tools.registry stop "
        f"--dir {DEMO_DIR / 'registry'})"
    )

    step("Build a Debian 12 image with debootstrap (cached after the first run) and push it")
    image = build_and_push("debian", host, repo="demo/debian", tag="12")
    sizes = ", ".join(f"{layer.size / 1e6:.1f} MB" for layer in image.layers)
    print(f"pushed {image.ref} ({len(image.layers)} layers: {sizes})")

    step("Pull it into fusesnap's store (LMDB), verifying every blob")
    shutil.rmtree(DEMO_DIR / "store", ignore_errors=True)  # each demo starts from nothing
    fusesnap("pull", image.ref)
    fusesnap("images")
    fusesnap("content", "ls")

    step("Look inside without mounting: layers, directories, files, differences")
    fusesnap("layers", image.ref)
    fusesnap("ls", "-l", image.ref, "/")
    fusesnap("cat", image.ref, "/etc/os-release")
    fusesnap("ls", "--layer", "1", image.ref, "/var/lib/apt/lists")

    step("A second pull finds everything in the store and fetches nothing")
    fusesnap("pull", image.ref)

    step("rmi drops the name; gc frees the content nothing references any more")
    fusesnap("rmi", image.ref)
    fusesnap("gc")
    fusesnap("pull", image.ref)

    step("Publish the layer indexes next to the image (an OCI referrer), for lazy mounts")
    fusesnap("index", "--push", image.ref)

    step("Mount it lazily from a cold store: only what is read crosses the network")
    cold = DEMO_DIR / "cold-store"
    mnt = DEMO_DIR / "mnt"
    shutil.rmtree(cold, ignore_errors=True)
    mnt.mkdir(parents=True, exist_ok=True)
    fusesnap("mount", image.ref, str(mnt), root=cold)
    try:
        print(f"$ head -3 {mnt}/etc/os-release")
        print("".join((mnt / "etc/os-release").read_text().splitlines(True)[:3]), end="")
        print(f"$ chroot {mnt} python3 -c 'print(6*7)'")
        subprocess.run(["chroot", str(mnt), "python3", "-c", "print(6*7)"], check=True)
        fusesnap("stats", str(mnt), root=cold)
    finally:
        fusesnap("umount", str(mnt), root=cold)
    total = sum(layer.size for layer in image.layers)
    print(f"(the image is {total / 1e6:.1f} MB compressed; see 'fetched' above)")

    step("Run a container on the lazily mounted image (runc on an overlay over the mount)")
    cold = DEMO_DIR / "run-store"
    shutil.rmtree(cold, ignore_errors=True)
    # Through a counting proxy, to show what crossed the network.
    with FaultProxy(host) as proxy:
        ref = image.ref.replace(host, proxy.host)
        fusesnap("run", "--rm", ref, "--", "python3", "-c", "print(6*7)", root=cold)
        fetched = proxy.bytes_sent("blob")
    fusesnap("layers", ref, root=cold)
    print(f"(the container's start fetched {fetched / 1e6:.1f} MB of layer data and indexes, "
          f"out of the image's {total / 1e6:.1f} MB)")  # fmt: skip

    print(f"\nThe store is in {DEMO_DIR / 'store'}; the registry keeps running at {host}.")


if __name__ == "__main__":
    main()
