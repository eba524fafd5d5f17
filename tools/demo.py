"""``make demo``: fusesnap's main job, end to end, on this machine.

1. start a real Distribution registry on a loopback port (left running);
2. build a real Debian 12 image (debootstrap, cached) and push it;
3. pull it with fusesnap (progress on a terminal), list it, look inside it;
4. show that a second pull fetches nothing and that gc frees what rmi released;
5. push the layer indexes, then mount the image lazily from a cold store, read a
   file, run python3 in it with chroot, and show how little was fetched;
6. run a container from it with runc on a cold store and show what was fetched;
7. start fusesnap's containerd snapshotter and a private containerd, pull the
   image lazily with ``ctr-remote image rpull`` and run it with ``ctr run``.

Each step prints the command it runs, so it doubles as a tutorial.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from tools._net import wait_until
from tools.containerd import PrivateContainerd, pull_args, unique_id
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

    containerd_step(host, image.ref, total)

    print(f"\nThe store is in {DEMO_DIR / 'store'}; the registry keeps running at {host}.")


def containerd_step(host: str, image_ref: str, total: int) -> None:
    step("Run it through containerd, with fusesnap as containerd's remote snapshotter")
    root = DEMO_DIR / "containerd-store"
    shutil.rmtree(root, ignore_errors=True)
    shutil.rmtree(DEMO_DIR / "containerd", ignore_errors=True)
    DEMO_DIR.mkdir(parents=True, exist_ok=True)
    sock = DEMO_DIR / "snapshotter.sock"
    log = DEMO_DIR / "snapshotter.log"
    args = ["snapshotter", "--address", str(sock)]
    print(f"$ fusesnap --root {root} {shlex.join(args)} &   (log: {log})", flush=True)
    with log.open("w") as out:
        daemon = subprocess.Popen(
            [sys.executable, "-m", "fusesnap", "--root", str(root), *args],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        if not wait_until(sock.exists, timeout=30, abort=lambda: daemon.poll() is not None):
            raise SystemExit(f"the snapshotter did not start:\n{log.read_text()}")
        print("containerd: a private one, with [proxy_plugins.fusesnap] at that socket")
        with (
            FaultProxy(host) as proxy,
            PrivateContainerd(
                DEMO_DIR / "containerd", proxy_snapshotters={"fusesnap": sock}, log_level="info"
            ) as ctrd,
        ):
            ref = image_ref.replace(host, proxy.host)
            pull = ["image", "rpull", *pull_args(ref, snapshotter="fusesnap")]
            print(f"$ ctr-remote {shlex.join(pull)}", flush=True)
            ctrd.ctr_remote(*pull)
            pulled = proxy.bytes_sent()
            print(f"(the pull fetched {pulled / 1e6:.1f} MB: manifest, config, indexes)")
            cmd = ["run", "--rm", "--snapshotter", "fusesnap", ref, unique_id("demo")]
            cmd += ["python3", "-c", "print(6*7)"]
            print(f"$ ctr {shlex.join(cmd)}", flush=True)
            print(ctrd.ctr(*cmd, timeout=300).stdout, end="")
            fetched = proxy.bytes_sent()
            print(
                f"(pull and start fetched {fetched / 1e6:.1f} MB of the image's "
                f"{total / 1e6:.1f} MB)"
            )
            fusesnap("snapshot", "ls", "-n", "default", root=root)
    finally:
        daemon.terminate()
        daemon.wait(timeout=30)
        lowers = root / "containerd" / "lowers"  # the lazy mounts outlive the snapshotter
        for mountpoint in sorted(lowers.glob("*")) if lowers.is_dir() else []:
            subprocess.run(["umount", "-l", str(mountpoint)], check=False, capture_output=True)


if __name__ == "__main__":
    main()
