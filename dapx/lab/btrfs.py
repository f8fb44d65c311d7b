"""BTRFS in a PVE node: a loop-file filesystem mounted where PVE's btrfs storage expects it."""

from __future__ import annotations

from pathlib import Path

from dapx.lab.common import NodeSpec, data_dir, lab_dir, sh
from dapx.lab.node import fs_dir, run

IMAGE_SIZE = "1G"
MOUNTPOINT = "/var/lib/pve/local-btrfs"


def image(node: NodeSpec) -> Path:
    return data_dir(node.name) / "disks" / "btrfs.img"


def create_and_mount(node: NodeSpec) -> None:
    """mkfs.btrfs on a fresh sparse 1G file, loop-mount it in the node, create images/."""
    img = image(node)
    img.parent.mkdir(parents=True, exist_ok=True)
    img.unlink(missing_ok=True)
    sh(["truncate", "-s", IMAGE_SIZE, str(img)])
    sh(["mkfs.btrfs", "-q", "-L", f"{node.name}-local-btrfs", str(img)])
    (fs_dir(node, "var-lib-pve") / "local-btrfs").mkdir(parents=True, exist_ok=True)
    # -o loop gives an autoclear loop device: it detaches when the namespace drops the mount.
    run(node, ["mount", "-o", "loop", str(img), MOUNTPOINT], check=True)
    run(node, ["mkdir", "-p", f"{MOUNTPOINT}/images"], check=True)


def loop_devices() -> list[str]:
    """Loop devices backed by any lab image (to detach leftovers)."""
    out = sh(["losetup", "-l", "-n", "-O", "NAME,BACK-FILE"], check=False).stdout.decode()
    root = str(lab_dir())
    return [line.split()[0] for line in out.splitlines()
            if len(line.split()) > 1 and line.split(None, 1)[1].startswith(root)]
