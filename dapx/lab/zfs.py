"""ZFS in a node: its own zfs-fuse daemon, pool rpool on a sparse image, rpool/data.

zfs-fuse talks to zpool/zfs through /run/zfs/zfs_socket and keeps its cache in
/var/lib/zfs, both node-private, so every node has its own pool named rpool.
"""

from __future__ import annotations

import time
from pathlib import Path

from dapx.lab.common import LabError, NodeSpec, data_dir, sh
from dapx.lab.node import run, spawn

POOL_SIZE = "2G"


def pool_image(node: NodeSpec) -> Path:
    return data_dir(node.name) / "disks" / "rpool.img"


def start_daemon(node: NodeSpec) -> None:
    """Start zfs-fuse in the node and wait until `zpool list` answers (LabError after 20 s)."""
    spawn(node, ["zfs-fuse", "--no-daemon", "--no-kstat-mount", "--max-arc-size", "64",
                 "--pidfile", "/run/zfs-fuse.pid"], "zfs-fuse")
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if run(node, ["zpool", "list", "-H"], timeout=10).returncode == 0:
            return
        time.sleep(0.1)
    raise LabError(f"{node.name}: zfs-fuse did not answer within 20 s "
                   f"(see logs/{node.name}-zfs-fuse.log)")


def create_pool(node: NodeSpec) -> None:
    """Fresh sparse image, pool rpool mounted at /rpool, dataset rpool/data at /rpool/data."""
    img = pool_image(node)
    img.parent.mkdir(parents=True, exist_ok=True)
    img.unlink(missing_ok=True)
    sh(["truncate", "-s", POOL_SIZE, str(img)])
    run(node, ["zpool", "create", "-f", "-m", "/rpool", "rpool", str(img)], check=True)
    run(node, ["zfs", "create", "rpool/data"], check=True)
    check_mounted(node, ["rpool", "rpool/data"])


def check_mounted(node: NodeSpec, datasets: list[str]) -> None:
    """LabError unless every dataset is mounted (writes would land in the mountpoint dir)."""
    argv = ["zfs", "get", "-H", "-o", "name,value", "mounted", *datasets]
    out = run(node, argv, check=True).stdout
    unmounted = [line.split()[0] for line in out.splitlines() if line.split()[1:] != ["yes"]]
    if unmounted:
        raise LabError(f"{node.name}: zfs-fuse did not mount {', '.join(unmounted)}")


def pool_guid(node: NodeSpec) -> str:
    """The GUID of the node's rpool (differs per node)."""
    out = run(node, ["zpool", "get", "-H", "-o", "value", "guid", "rpool"], check=True).stdout
    return out.strip()
