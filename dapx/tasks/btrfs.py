"""BTRFS on a node over SSH: subvolume lists, read-only snapshots, deletes, writable copies
swapped in, what was written into them, and the send pipeline (``btrfs send [-p parent] | pv | ssh dest btrfs receive DIR``) run on
the source node. Argv comes from ``dapx.core.btrfs_argv``; the pipeline is a constant script
with every value passed as a positional argument.
"""

from __future__ import annotations

import shlex
from typing import TYPE_CHECKING

from dapx.core import btrfs_argv
from dapx.core.btrfs_argv import BtrfsSubvolume
from dapx.core.syncoid_argv import STREAM_SSH
from dapx.core.validate import parse_bandwidth, validate_abs_path, validate_host
from dapx.tasks.base import dapx_task
from dapx.tasks.ssh import command_failure, run

if TYPE_CHECKING:
    from dapx.blocks.node import ProxmoxNode

_PIPE = r'''exec 2>&1
parent=$1 snap=$2 key=$3 known=$4 port=$5 dest=$6 remote=$7 rate=$8
if [ -n "$parent" ]; then set -- -p "$parent" "$snap"; else set -- "$snap"; fi
meter() { if [ -n "$rate" ]; then pv -f -n -b -i 1 -L "$rate"; else pv -f -n -b -i 1; fi; }
btrfs send -q "$@" | meter | ''' + STREAM_SSH


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
        argv = btrfs_argv.snapshot_ro(subvolume, name)
        result = await run(node, argv, check=False, timeout=120)
        if result.exit_status != 0 and not await _exists(node, argv[-1]):
            raise command_failure(node, "btrfs snapshot", argv, result)
        # (it exists: a retry after the connection dropped once the command had run)


@dapx_task
async def delete_subvolumes(node: "ProxmoxNode", paths: list[str]) -> list[str]:
    """``btrfs subvolume delete`` each path; returns the paths. A path already gone counts as
    deleted (a retry is safe)."""
    for path in paths:
        argv = btrfs_argv.delete(path)
        result = await run(node, argv, check=False, timeout=300)
        if result.exit_status != 0 and await _exists(node, path):
            raise command_failure(node, "btrfs subvolume delete", argv, result)
    return paths


async def _exists(node: "ProxmoxNode", path: str) -> bool:
    return (await run(node, ["test", "-e", path], check=False)).exit_status == 0



@dapx_task
async def make_dirs(node: "ProxmoxNode", paths: list[str]) -> None:
    """``mkdir -p`` (receive directories, images/<vmid>)."""
    await run(node, ["mkdir", "-p", "--", *[validate_abs_path(p) for p in paths]])


# The writable disk PVE uses is swapped, never deleted first: a new writable snapshot of the
# newest received one is made beside it (in the receive directory), the old disk renamed
# aside, the new one renamed into place, the old one deleted; then a commit, so any later
# write into the disk carries a newer generation than the disk's own (see written_since).
_SWAP_WRITABLE = r'''snap=$1 writable=$2 new=$3 old=$4 mount=$5
if [ -e "$new" ]; then btrfs subvolume delete "$new" >/dev/null || exit 1; fi
btrfs subvolume snapshot "$snap" "$new" >/dev/null || exit 1
if [ -e "$writable" ]; then
  if [ -e "$old" ]; then btrfs subvolume delete "$old" >/dev/null || exit 1; fi
  mv -T -- "$writable" "$old" || exit 1
fi
if ! mv -T -- "$new" "$writable"; then
  if [ -e "$old" ]; then mv -T -- "$old" "$writable"; fi
  exit 1
fi
if [ -e "$old" ]; then btrfs subvolume delete "$old" >/dev/null || exit 1; fi
btrfs filesystem sync "$mount" >/dev/null'''


@dapx_task
async def swap_writable(node: "ProxmoxNode", snapshot: str, subvolume: str, scratch_dir: str,
                        mount: str) -> None:
    """Make ``subvolume`` (the disk PVE uses) a writable snapshot of ``snapshot``, swapped in
    beside the old one (``scratch_dir`` holds the two for a moment). Safe to repeat."""
    base = validate_abs_path(subvolume, "BTRFS subvolume").rsplit("/", 1)[1]
    scratch = validate_abs_path(scratch_dir, "BTRFS directory")
    await run(node, ["sh", "-c", _SWAP_WRITABLE, "sh", validate_abs_path(snapshot, "BTRFS snapshot"),
                     subvolume, f"{scratch}/dapx-new.{base}", f"{scratch}/dapx-old.{base}",
                     validate_abs_path(mount, "BTRFS mount point")], timeout=600)


@dapx_task
async def written_since(node: "ProxmoxNode", mount: str,
                        subvolumes: dict[str, int]) -> dict[str, int]:
    """Bytes of file data written into each subvolume after the generation given for it
    (``path -> generation``: a writable disk's own creation generation). A commit first, so
    recent writes are counted. Reading (atime) counts nothing; a deletion alone is not seen."""
    if not subvolumes:
        return {}
    await run(node, btrfs_argv.filesystem_sync(mount), timeout=300)
    found = {}
    for path, generation in subvolumes.items():
        # find-new lists extents of the given generation and later: the disk's own
        # generation holds what it was made with (the swap commits right after making it)
        result = await run(node, btrfs_argv.find_new(path, generation + 1), timeout=600)
        found[path] = btrfs_argv.parse_find_new(result.stdout)
    return found


def pipe_argv(parent: str | None, snapshot: str, target_host: str, receive_dir: str, *,
              key: str, known_hosts: str, port: int, rate: str | None) -> list[str]:
    """``btrfs send [-p parent] snap | pv | ssh dest btrfs receive DIR`` as one argv."""
    remote = shlex.join(btrfs_argv.receive(receive_dir))
    return ["sh", "-c", _PIPE, "sh",
            validate_abs_path(parent, "BTRFS parent") if parent else "",
            validate_abs_path(snapshot, "BTRFS snapshot"), validate_abs_path(key, "ssh key"),
            validate_abs_path(known_hosts, "known_hosts file"), str(int(port)),
            f"root@{validate_host(target_host)}", remote, parse_bandwidth(rate) if rate else ""]
