"""``btrfs-replica``: copy a guest's BTRFS disks to another node (R2).

Read-only snapshots beside each disk subvolume on the source are sent with ``btrfs send
[-p parent]`` straight to the destination (the source node pipes to ``btrfs receive`` over
SSH), received into ``<storage>/<subfolder>/<source>-<vmid>/``; a writable snapshot of the
newest one at PVE's path (``images/<new vmid>/vm-<new vmid>-disk-N``) is the registered
guest's disk. The incremental parent is the newest snapshot both sides hold (checked on the
destination, never assumed); received snapshots the source has since deleted are no conflict
(each is a subvolume of its own: a receive from an older parent keeps them). Every snapshot
is received beside the ones already there, so a cut transfer (or a forced full resend) never
touches the disk PVE uses: the writable disks are swapped in only when every disk arrived, and
a disk written since it was made (someone used the replica) is only replaced with force. The
run's frame (lock, results) is shared with zfs-replica.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Awaitable, Callable

from prefect import flow

from dapx.flows import KEPT_RESULTS
from dapx.blocks.node import ProxmoxNode
from dapx.core import snapshots as snapplan
from dapx.core.btrfs_argv import interrupted_receives, snapshots_of
from dapx.core.guestconfig import list_disks
from dapx.core.jobspec import ReplicaJob
from dapx.core.registration import rename_volume
from dapx.core.retention import select_for_deletion
from dapx.core.snapnames import job_prefix, new_snapshot_name
from dapx.core.snapshots import FullSend, Plan
from dapx.core.volumes import btrfs_subvolume
from dapx.errors import ConflictError, DapxError, InputError
from dapx.flows.hooks import job_hooks
from dapx.flows.register import check_not_failed_over, check_vmid_available
from dapx.flows.replica import (
    DiskResult,
    ReplicaResult,
    TransferProgress,
    gather_all,
    job_tag,
    not_zfs_message,
    planned_snapshot,
    publish_plan,
    register_after_copy,
    run_guest_replica,
)
from dapx.flows.trust import KNOWN_HOSTS, REPLICATION_KEY, check_trust
from dapx.tasks import btrfs
from dapx.tasks.guests import STORAGE_CFG, SourceGuest, read_files, read_guest
from dapx.tasks.locks import DEFAULT_WAIT
from dapx.tasks.processes import refuse_running_receive
from dapx.tasks.syncoid import run_pipe
from dapx.ui_extensions.artifacts import Progress, artifact_key


@dataclass(frozen=True)
class BtrfsDisk:
    """One guest disk on BTRFS: paths on both sides (``*_rel`` relative to the fs top)."""

    key: str
    source: str
    source_rel: str
    receive_dir: str
    received_rel: str
    writable: str
    dest_mount: str

    @property
    def writable_rel(self) -> str:
        return self.writable[len(self.dest_mount) + 1:]


def btrfs_storage(storages: dict[str, dict[str, str]], wanted: str, node: str) -> str:
    """The destination BTRFS storage: ``wanted`` if it is one, else the only one there."""
    found = sorted(sid for sid, o in storages.items() if o.get("type") == "btrfs" and "path" in o)
    if wanted in found:
        return wanted
    if len(found) == 1:
        return found[0]
    raise InputError(f"dest_pool {wanted!r} is not a BTRFS storage of {node}; use one of "
                     f"{', '.join(found) or 'none (the node has no BTRFS storage)'}")


def btrfs_disks(guest: SourceGuest, job: ReplicaJob, dest_storages: dict[str, dict[str, str]],
                dest_sid: str) -> list[BtrfsDisk]:
    """Every disk's paths on both sides. Raises InputError for a disk not on BTRFS."""

    disks = list_disks(guest.config)
    if not disks:
        raise InputError(f"guest {job.guest} on {job.source} has no disks to replicate")
    dest_path = dest_storages[dest_sid]["path"].rstrip("/")
    receive_dir = f"{dest_path}/{job.subfolder or 'replica'}/{job.source}-{job.guest}"
    found = []
    for disk in disks:
        storage = guest.storages.get(disk.storage or "", {})
        if storage.get("type") != "btrfs" or "path" not in storage:
            raise InputError(not_zfs_message(disk.key, disk.volid, job.guest,
                                             storage.get("type", "unknown")).replace(
                "not ZFS: zfs-replica", "not BTRFS: btrfs-replica").replace(
                "Use btrfs-replica for BTRFS storage", "Use zfs-replica for ZFS storage"))
        path = storage["path"].rstrip("/")
        source = btrfs_subvolume(path, disk.volname)
        base = source.rsplit("/", 1)[1]
        writable = btrfs_subvolume(dest_path, rename_volume(disk.volname, job.guest,
                                                            job.target_vmid))
        found.append(BtrfsDisk(disk.key, source, source[len(path) + 1:], receive_dir,
                               f"{receive_dir[len(dest_path) + 1:]}/{base}", writable,
                               dest_path))
    return found


def btrfs_plans(disks: list[BtrfsDisk], src: list, dst: list, name: str, *, force: bool,
                destination: str, written: dict[str, int]) -> dict[str, Plan]:
    """Plans for every disk from both sides' subvolume lists and the bytes written into each
    writable disk (``written``: writable path -> bytes); one ConflictError for all."""

    plans, conflicts = {}, []
    for disk in disks:
        source = snapshots_of(src, disk.source_rel)
        target = snapshots_of(dst, disk.received_rel, received=True)
        try:
            plans[disk.key] = snapplan.plan_incremental(
                source + [planned_snapshot(name, source)], target or None, force=force,
                target_written=written.get(disk.writable, 0), target_can_branch=True,
                dataset=f"{destination}:{disk.receive_dir}")
        except ConflictError as exc:
            conflicts.append(f"{disk.key}: {exc}".replace(
                "since its newest snapshot", f"(the disk {disk.writable}) since it was made"))
    if conflicts:
        raise ConflictError("; ".join(conflicts))
    return plans


def writable_generations(disks: list[BtrfsDisk], dst: list) -> dict[str, int]:
    """writable path -> the generation it was created in, for the disks that exist."""
    cgen = {s.path: s.cgen for s in dst}
    return {d.writable: cgen[d.writable_rel] for d in disks if d.writable_rel in cgen}


def btrfs_prune(subvolumes: list, rel: str, job: ReplicaJob, protect: str,
                received: bool) -> list[str]:

    snaps = snapshots_of(subvolumes, rel, received=received)
    return [s.name for s in select_for_deletion(
        snaps, keep=job.keep, prefixes=(job_prefix(job_tag(job)),), protect={protect})]


async def btrfs_send_disk(job: ReplicaJob, source: ProxmoxNode, dest: ProxmoxNode,
                          disk: BtrfsDisk, plan: Plan, name: str, dst: list,
                          tracker: TransferProgress, result: DiskResult) -> None:
    """Clean up what a cut receive left, and receive the new snapshot beside the others."""

    stale = [f"{disk.dest_mount}/{p}" for p in interrupted_receives(dst, disk.received_rel)]
    await btrfs.delete_subvolumes(dest, stale)
    parent = f"{disk.source}@{plan.base.name}" if isinstance(plan, snapplan.Incremental) else None
    argv = btrfs.pipe_argv(parent, f"{disk.source}@{name}", dest.host, disk.receive_dir,
                           key=REPLICATION_KEY, known_hosts=KNOWN_HOSTS, port=dest.ssh_port,
                           rate=job.bwlimit)
    sync = await run_pipe(source, argv, f"btrfs send {disk.source} -> {dest.name}",
                          on_bytes=tracker.on_bytes)
    result.bytes_sent, result.seconds = sync.bytes_sent, round(sync.seconds, 3)


async def swap_writables(dest: ProxmoxNode, disks: list[BtrfsDisk], plans: dict[str, Plan],
                         dst: list, name: str, results: dict[str, DiskResult]) -> None:
    """Every disk arrived: swap each writable disk for a snapshot of the new one, then drop
    what a forced full resend replaced (the received snapshots of the old copy)."""
    for disk in disks:
        try:
            await btrfs.swap_writable(dest, f"{disk.dest_mount}/{disk.received_rel}@{name}",
                                      disk.writable, disk.receive_dir, disk.dest_mount)
        except DapxError as exc:
            results[disk.key].error = f"received, but the disk could not be swapped in: {exc}"
            return
        plan = plans[disk.key]
        if isinstance(plan, FullSend) and plan.replace_target:
            await btrfs.delete_subvolumes(dest, [
                f"{disk.dest_mount}/{disk.received_rel}@{s.name}"
                for s in snapshots_of(dst, disk.received_rel, received=True)])


async def btrfs_retention(job: ReplicaJob, source: ProxmoxNode, dest: ProxmoxNode,
                          disks: list[BtrfsDisk], results: dict[str, DiskResult], name: str,
                          src_mount: str) -> None:
    """Prune both sides of the disks that made it; never the snapshot now common."""

    ok = [d for d in disks if not results[d.key].error]
    if not ok:
        return
    src, dst = await asyncio.gather(btrfs.list_subvolumes(source, src_mount),
                                    btrfs.list_subvolumes(dest, ok[0].dest_mount))
    for disk in ok:
        result = results[disk.key]
        result.common = name
        result.pruned_source = await btrfs.delete_subvolumes(source, [
            f"{disk.source}@{n}" for n in btrfs_prune(src, disk.source_rel, job, name, False)])
        result.pruned_dest = await btrfs.delete_subvolumes(dest, [
            f"{disk.dest_mount}/{disk.received_rel}@{n}"
            for n in btrfs_prune(dst, disk.received_rel, job, name, True)])


async def send_sizes(source: ProxmoxNode, mount: str, disks: list[BtrfsDisk],
                     plans: dict[str, Plan], name: str) -> dict[str, int]:
    """Bytes each disk's send will carry, for the progress bar: the file data of the new
    snapshot written after its base (all of it for a full send), as ``find-new`` lists it.
    Only the bar depends on it: a measurement that fails leaves the bar without sizes."""
    since = {f"{d.source}@{name}": (plans[d.key].base.createtxg
                                    if isinstance(plans[d.key], snapplan.Incremental) else -1)
             for d in disks}
    try:
        return await btrfs.written_since(source, mount, since)
    except DapxError as exc:
        from prefect.logging import get_run_logger

        get_run_logger().warning("send sizes not measured (progress shows disks only): %s", exc)
        return {}


async def _btrfs_replicate(job: ReplicaJob, source: ProxmoxNode, dest: ProxmoxNode,
                           dry_run: bool, force: bool, result: ReplicaResult,
                           protect: Callable[[], Awaitable[None]]) -> None:

    result.snapshot = name = new_snapshot_name(job_tag(job), datetime.now(timezone.utc))
    guest, dest_files = await asyncio.gather(read_guest(source, job.guest),
                                             read_files(dest, [STORAGE_CFG]))
    dest_storages = dest_files.storages()
    dest_sid = btrfs_storage(dest_storages, job.dest_pool, job.destination)
    disks = btrfs_disks(guest, job, dest_storages, dest_sid)
    src_mount = disks[0].source[: -len(disks[0].source_rel) - 1]
    checks = [btrfs.list_subvolumes(source, src_mount),
              btrfs.list_subvolumes(dest, disks[0].dest_mount), check_trust(source, dest),
              refuse_running_receive(dest, sorted({d.receive_dir for d in disks}))]
    if job.register_vm:
        checks.append(check_vmid_available(job, source, dest, guest.kind, api_optional=True))
    else:
        checks.append(check_not_failed_over(job, dest))
    src, dst, *_ = await asyncio.gather(*checks)
    written = await btrfs.written_since(dest, disks[0].dest_mount,
                                        writable_generations(disks, dst))
    plans = btrfs_plans(disks, src, dst, name, force=force, destination=job.destination,
                        written=written)
    results = {d.key: DiskResult(disk=d.key, source_dataset=d.source, dest_dataset=d.writable,
                                 plan=snapplan.describe(plans[d.key])) for d in disks}
    result.disks = list(results.values())
    if dry_run:
        rows = [{"disk": d.key, "source": d.source, "receive into": d.receive_dir,
                 "disk on destination": d.writable, "plan": results[d.key].plan} for d in disks]
        await publish_plan(job, rows, name, guest)
        return
    await btrfs.snapshot_readonly(source, [d.source for d in disks], name)
    sizes, _ = await asyncio.gather(
        send_sizes(source, src_mount, disks, plans, name),
        btrfs.make_dirs(dest, sorted({d.receive_dir for d in disks} |
                                     {d.writable.rsplit("/", 1)[0] for d in disks})))
    progress = Progress(artifact_key("replica-progress", job.source, job.guest, job.destination),
                        f"guest {job.guest}: {job.source} -> {job.destination}")
    await progress.start()
    tracker = TransferProgress(progress, len(disks))
    follower = asyncio.create_task(tracker.follow())
    try:
        for disk in disks:
            tracker.start_disk(sizes.get(f"{disk.source}@{name}", 0))
            try:
                await btrfs_send_disk(job, source, dest, disk, plans[disk.key], name, dst,
                                      tracker, results[disk.key])
            except DapxError as exc:
                results[disk.key].error = str(exc)
            tracker.done += 1
    finally:
        follower.cancel()
    await progress.update(tracker.percent, force=True)
    if not result.failures:
        await swap_writables(dest, disks, plans, dst, name, results)
    await btrfs_retention(job, source, dest, disks, results, name, src_mount)
    await gather_all(register_after_copy(job, source, dest, result, "btrfs", dest_sid,
                                         guest=guest),
                     *([] if result.failures else [protect()]))


@flow(name="btrfs-replica", log_prints=False, **KEPT_RESULTS, **job_hooks())
async def btrfs_replica(job: ReplicaJob, dry_run: bool = False, force: bool = False,
                        lock_wait: float = DEFAULT_WAIT) -> ReplicaResult:
    """Replicate a guest whose disks are on BTRFS (``btrfs send -p`` from the newest
    snapshot both sides hold). Parameters and errors as ``zfs_replica``; ``job.dest_pool``
    names the destination's BTRFS storage (the only one is used when it names none)."""
    return await run_guest_replica(job, dry_run, force, lock_wait, _btrfs_replicate)
