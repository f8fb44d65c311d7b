"""BTRFS on a node over SSH: subvolume lists, read-only snapshots, deletes, writable copies,
and the send pipeline (``btrfs send [-p parent] | pv | ssh dest btrfs receive DIR``) run on
the source node. Argv comes from ``dapx.core.btrfs_argv``; the pipeline is a constant script
with every value passed as a positional argument.
"""

from __future__ import annotations

import shlex
from typing import TYPE_CHECKING

from dapx.core import btrfs_argv
from dapx.core.btrfs_argv import BtrfsSubvolume
from dapx.core.validate import parse_bandwidth, validate_abs_path, validate_host
from dapx.tasks.base import dapx_task
from dapx.tasks.ssh import run

if TYPE_CHECKING:
    from dapx.blocks.node import ProxmoxNode

_PIPE = r'''exec 2>&1
parent=$1 snap=$2 key=$3 known=$4 port=$5 dest=$6 remote=$7 rate=$8
if [ -n "$parent" ]; then set -- -p "$parent" "$snap"; else set -- "$snap"; fi
meter() { if [ -n "$rate" ]; then pv -f -n -b -i 1 -L "$rate"; else pv -f -n -b -i 1; fi; }
btrfs send -q "$@" | meter | ssh -i "$key" -o UserKnownHostsFile="$known" \
  -o GlobalKnownHostsFile=/dev/null -o StrictHostKeyChecking=yes -o BatchMode=yes \
  -o IdentitiesOnly=yes -p "$port" "$dest" "$remote"'''


@dapx_task
async def list_subvolumes(node: "ProxmoxNode", mountpoint: str) -> list[BtrfsSubvolume]:
    """Every subvolume of the filesystem mounted at ``mountpoint`` (one command)."""
    result = await run(node, btrfs_argv.list_subvolumes(mountpoint), timeout=120)
    return btrfs_argv.parse_subvolume_list(result.stdout)


@dapx_task
async def snapshot_readonly(node: "ProxmoxNode", subvolumes: list[str], name: str) -> None:
    """A read-only ``<subvol>@<name>`` of each subvolume (BTRFS has no multi-subvolume
    atomic snapshot: they are taken back to back)."""
    for subvolume in subvolumes:
        await run(node, btrfs_argv.snapshot_ro(subvolume, name), timeout=120)


@dapx_task
async def delete_subvolumes(node: "ProxmoxNode", paths: list[str]) -> list[str]:
    """``btrfs subvolume delete`` each path; returns the paths."""
    for path in paths:
        await run(node, btrfs_argv.delete(path), timeout=300)
    return paths


@dapx_task
async def make_dirs(node: "ProxmoxNode", paths: list[str]) -> None:
    """``mkdir -p`` (receive directories, images/<vmid>)."""
    await run(node, ["mkdir", "-p", "--", *[validate_abs_path(p) for p in paths]])


@dapx_task
async def replace_writable(node: "ProxmoxNode", snapshot: str, subvolume: str,
                           exists: bool) -> None:
    """Make ``subvolume`` a writable snapshot of ``snapshot`` (the disk PVE uses)."""
    if exists:
        await run(node, btrfs_argv.delete(subvolume), timeout=300)
    await run(node, btrfs_argv.writable_snapshot(snapshot, subvolume), timeout=300)


def pipe_argv(parent: str | None, snapshot: str, target_host: str, receive_dir: str, *,
              key: str, known_hosts: str, port: int, rate: str | None) -> list[str]:
    """``btrfs send [-p parent] snap | pv | ssh dest btrfs receive DIR`` as one argv."""
    remote = shlex.join(btrfs_argv.receive(receive_dir))
    return ["sh", "-c", _PIPE, "sh",
            validate_abs_path(parent, "BTRFS parent") if parent else "",
            validate_abs_path(snapshot, "BTRFS snapshot"), validate_abs_path(key, "ssh key"),
            validate_abs_path(known_hosts, "known_hosts file"), str(int(port)),
            f"root@{validate_host(target_host)}", remote, parse_bandwidth(rate) if rate else ""]
