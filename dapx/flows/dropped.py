"""Disks a guest no longer has: their replica and this job's source snapshots, reported.

A disk removed from the source guest leaves behind, on the destination, the replica dataset
the job made for it (found by the job's owner mark beside the current targets) and, on the
source, this job's snapshots of the disk's dataset when it still exists. Nothing is removed
silently: each run reports them (result and plan), and only a job with
``remove_dropped_disks`` destroys them (the replica dataset, and this job's snapshots only;
never the source dataset).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from dapx.blocks.node import ProxmoxNode
from dapx.core.jobspec import ReplicaJob
from dapx.core.registration import source_volname
from dapx.core.snapnames import job_prefix
from dapx.errors import TransientError
from dapx.tasks import zfs

if TYPE_CHECKING:
    from dapx.flows.replica import ZfsDisk, ZfsRun


def leftover_replicas(owned: dict[str, str], owner: str, targets: set[str],
                      target_vmid: int) -> list[str]:
    """Datasets this job made for disks its guest no longer has: marked with the job's owner
    (the source guest), named for the job's destination VMID (``vm-9100-disk-2``) and not a
    current target. Another job's replica of the same guest (another VMID: a fleet job, a
    second destination VMID) is never one of them."""
    own_name = re.compile(rf"(?:vm|subvol|base)-{int(target_vmid)}-disk-[0-9]+")
    return sorted(n for n, mark in owned.items() if mark == owner and n not in targets
                  and own_name.fullmatch(n.rsplit("/", 1)[-1]))


def source_candidates(leftover: str, disks: list["ZfsDisk"], guest: int) -> list[str]:
    """Where the source dataset of a leftover replica would be: its volume name for the
    source guest, in each pool the guest's disks use."""
    volname = source_volname(leftover.rsplit("/", 1)[1], guest)
    pools = sorted({d.source.rsplit("/", 1)[0] for d in disks})
    return [f"{pool}/{volname}" for pool in pools] if volname else []


async def dropped_disks(job: ReplicaJob, run: "ZfsRun", source: ProxmoxNode, dest: ProxmoxNode,
                        disks: list["ZfsDisk"], parent: str, *, remove: bool) -> list[str]:
    """One line per replica of a disk the guest no longer has (with this job's snapshots of
    it on the source): removed when ``remove``, else kept and said so."""
    owned = await zfs.owned_children(dest, parent)
    targets = {d.target for d in disks}
    leftovers = leftover_replicas(owned, run.owner, targets, job.target_vmid)
    if not leftovers:
        return []
    candidates = {n: source_candidates(n, disks, job.guest) for n in leftovers}
    src = await zfs.dataset_states(source, sorted({c for cs in candidates.values() for c in cs}))
    prefix, lines = job_prefix(run.tag), []
    for leftover in leftovers:
        snaps = {c: [s.name for s in src[c].snapshots if s.name.startswith(prefix)]
                 for c in candidates[leftover] if src[c].exists}
        snaps = {c: names for c, names in snaps.items() if names}
        on_source = "; ".join(f"{len(n)} snapshot(s) of this job on {source.name}:{c}"
                              for c, n in snaps.items()) or "no snapshots of this job on the source"
        if remove:
            await zfs.destroy_existing(dest, [leftover])
            busy = []
            for dataset, names in snaps.items():
                try:
                    await zfs.destroy_snapshots(source, dataset, names)
                except TransientError:  # still busy after the retries: said, not hidden
                    busy.append(dataset)
            left = (f"; this job's snapshots of {', '.join(busy)} were busy and stay (remove "
                    "them with zfs destroy once idle)") if busy else ""
            lines.append(f"removed {dest.name}:{leftover} (a disk guest {job.guest} no longer "
                         f"has) and {on_source}{left}")
        else:
            lines.append(f"{dest.name}:{leftover} replicates a disk guest {job.guest} no "
                         f"longer has; kept, with {on_source} (set remove_dropped_disks to "
                         "remove them)")
    return lines
