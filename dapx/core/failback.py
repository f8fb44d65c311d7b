"""Which snapshots a failback leaves behind as scratch, once the job copies the guest again.

A failback copies the live copy home with a replica job of its own (destination the home
node, the staged VMID: tag ``<home>-<staged>``), so its snapshots are ``dapx_<home>-<N>_<stamp>``:
- ZFS: on the guest's datasets at home (they were received there) and on the live copy's
  datasets (they were taken there). No other job makes snapshots named for the home node on
  the guest's own datasets (a job never replicates to its own source), so there every
  ``dapx_<home>-`` snapshot is a failback's; on the live copy's side only those same names go.
- BTRFS: the failback received its snapshots into ``<sub-folder>/<live node>-<live VMID>``
  at home (the guest's disk became a writable snapshot of one; deleting them leaves it
  whole), and took them beside the live copy's disks (``<disk>@dapx_<home>-...``).
Once the job's run after the failback made a newer snapshot both sides share, none of them is
needed.
"""

from __future__ import annotations

from dapx.core.snapnames import SNAPSHOT_PREFIX


def failback_prefix(home: str) -> str:
    """``dapx_pve1-``: the start of every snapshot name a failback to ``home`` makes."""
    return f"{SNAPSHOT_PREFIX}{home}-"


def zfs_scratch(home_snapshots: list[str], home: str) -> list[str]:
    """The failback snapshots among a home dataset's snapshot names (short names)."""
    return [name for name in home_snapshots if name.startswith(failback_prefix(home))]


def btrfs_home_scratch(paths: list[str], receive_dir: str) -> list[str]:
    """The failback's subvolumes among a home node's subvolume ``paths`` (relative to the
    filesystem's top): everything it received under ``receive_dir``."""
    return [p for p in paths if p.startswith(receive_dir.rstrip("/") + "/")]


def btrfs_live_scratch(paths: list[str], home: str, live_disks: list[str]) -> list[str]:
    """The failback's snapshots among the live copy's node's subvolume ``paths``: the
    ``<disk>@dapx_<home>-...`` beside each of ``live_disks`` (relative paths)."""
    beside = tuple(f"{disk}@{failback_prefix(home)}" for disk in live_disks)
    return [p for p in paths if p.startswith(beside)]
