"""The copy half of ``vm-migration`` (M1, M4): a copy of the guest appears on the destination.

Transports (chosen by ``core.migration_plan.choose_copy_transport``):
- ``zfs`` / ``btrfs``: the replica steps (``zfs_replica`` / ``btrfs_replica`` run inside this
  flow): the source node sends straight to the destination, into the target storage's pool
  (BTRFS: its path), and the copy is registered there. A later run sends only what changed.
- ``vzdump``: ``vzdump --stdout | ssh dest qmrestore -`` on the source node
  (``dapx.tasks.vzstream``): the archive is never stored, the orchestrator never sees it.

Never destroy the destination first: when the target VMID holds a guest this copy replaces
(another guest, with ``force``; or this job's earlier copy, for a transport that cannot update
in place), the new copy is made BESIDE it under a free VMID, adapted, and only when it is
complete swapped into the target VMID (``swap_staged``: the old guest renumbered aside, the
new one into place, the old one destroyed). A copy that fails part way is removed; the guest
at the target VMID stays as it was.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from dapx.blocks.node import ProxmoxNode
from dapx.core.jobspec import ReplicaJob
from dapx.core.migration_job import MigrationJob
from dapx.core.migration_plan import MigrationPlan, SourceFacts
from dapx.errors import DapxError, PermanentError
from dapx.flows.btrfs_replica import btrfs_replica
from dapx.flows.replica import TransferProgress, zfs_replica
from dapx.flows.trust import KNOWN_HOSTS, REPLICATION_KEY
from dapx.tasks.migration_api import (apply_changes, discard_guest, guest_location, guest_lock,
                                      read_storage_config, start_guest, stop_guest)
from dapx.tasks.vzstream import pipe_argv, restore_argv, stream_copy, unlock_guest
from dapx.ui_extensions.artifacts import Progress, artifact_key

log = logging.getLogger("dapx.migration")


@dataclass
class CopyOutcome:
    """What a copy did."""

    bytes: int = 0
    replaced: str = ""
    """The guest the copy replaced (kind and VMID), empty when none was."""
    leftover: str = ""
    """The replaced guest, when destroying it failed (it is set aside, out of the way)."""


@dataclass(frozen=True)
class Slots:
    """Where the copy is made: the target VMID, or a staged VMID beside it (``aside`` is
    where the replaced guest goes during the swap)."""

    target: int
    staged: int | None = None
    aside: int | None = None

    @property
    def build(self) -> int:
        """The VMID the copy is made under."""
        return self.staged or self.target


def needs_staging(plan: MigrationPlan) -> bool:
    """Another guest is replaced; or this job's copy is renewed by a transport that makes a
    whole new guest (vzdump) rather than updating its disks in place (zfs, btrfs)."""
    return plan.replace == "replace" or (plan.replace == "refresh"
                                         and plan.transport == "vzdump")


# -----------------------------------------------------------------------------------------------
# zfs / btrfs: the replica steps


def storage_place(dest: ProxmoxNode, storage: str, transport: str) -> dict[str, str]:
    """Where a replica job puts disks so that they land in PVE storage ``storage`` of
    ``dest``: its pool (ZFS: ``rpool/data`` -> pool rpool, sub-folder data), or that BTRFS
    storage."""
    if transport == "zfs":
        section = read_storage_config(dest, storage)
        pool, _, sub = str(section.get("pool", "")).partition("/")
        return {"dest_pool": pool, "subfolder": sub}
    return {"dest_pool": storage, "subfolder": "replica"}


async def replica_job(job: MigrationJob, plan: MigrationPlan, dest: ProxmoxNode,
                      vmid: int) -> ReplicaJob:
    """The replica job that makes this copy as ``vmid``, into the target storage."""
    place = storage_place(dest, plan.disks[0].target_storage, plan.transport)
    return ReplicaJob(source=job.source, guest=job.guest, destination=job.destination,
                      dest_vmid=vmid, compression=job.compression, keep=1, register_vm=True,
                      bwlimit=job.bwlimit, notify="never", **place)


def replica_flow(plan: MigrationPlan):  # noqa: ANN201 - a prefect Flow
    return zfs_replica if plan.transport == "zfs" else btrfs_replica


async def check_replica_plan(job: MigrationJob, plan: MigrationPlan, dest: ProxmoxNode,
                             vmid: int) -> None:
    """The replica's own plan, before anything changes: raises ConflictError (a diverged
    copy without force...) as the replica flow would."""
    rjob = await replica_job(job, plan, dest, vmid)
    await replica_flow(plan).fn(job=rjob, dry_run=True, force=job.force)


async def copy_by_replica(job: MigrationJob, plan: MigrationPlan, dest: ProxmoxNode,
                          vmid: int, lock_wait: float) -> int:
    """Replicate and register the guest as ``vmid`` (the replica flow's steps, in this run:
    it holds the source guest's lock meanwhile). Bytes sent."""
    rjob = await replica_job(job, plan, dest, vmid)
    result = await replica_flow(plan).fn(job=rjob, force=job.force, lock_wait=lock_wait)
    return result.bytes_sent


# -----------------------------------------------------------------------------------------------
# vzdump: an archive streamed node to node


async def copy_by_vzdump(job: MigrationJob, plan: MigrationPlan, source: ProxmoxNode,
                         dest: ProxmoxNode, vmid: int) -> int:
    """Stream a vzdump archive of the guest into a restore as ``vmid`` on the destination.
    Bytes streamed. A half-made guest is removed and the error raised."""
    storage = plan.disks[0].target_storage if plan.disks else "local"
    remote = restore_argv(plan.kind, vmid, storage, unique=job.new_macs)
    same = job.source == job.destination
    argv = pipe_argv(job.guest, None if same else dest.host, remote, key=REPLICATION_KEY,
                     known_hosts=KNOWN_HOSTS, port=dest.ssh_port, rate=job.bwlimit)
    progress = Progress(artifact_key("migration-progress", job.source, job.guest,
                                     job.destination), f"guest {job.guest}: {job.source} -> "
                        f"{job.destination}/{vmid}")
    await progress.start()
    tracker = TransferProgress(progress, 1)
    tracker.start_disk(plan.bytes)
    follower = asyncio.create_task(tracker.follow())
    try:
        sync = await stream_copy(source, argv, f"vzdump of guest {job.guest} on {job.source} "
                                 f"-> restore as {vmid} on {job.destination}", tracker.on_bytes)
    except DapxError:
        await discard_half_made(dest, plan.kind, vmid)
        raise
    finally:
        follower.cancel()
    await progress.update(100.0, force=True)
    return sync.bytes_sent


async def discard_half_made(dest: ProxmoxNode, kind: str, vmid: int) -> None:
    """Remove guest ``vmid`` from the destination (this run made it, or started to: the plan
    found the VMID free), unlocking it first when a killed restore left it locked. Never
    raises: the error that led here is the one to report."""
    try:
        if guest_location(dest, vmid) is None:
            return
        if guest_lock(dest, dest.name, kind, vmid):  # type: ignore[arg-type]
            await unlock_guest(dest, kind, vmid)  # type: ignore[arg-type]
        await discard_guest(dest, dest.name, kind, vmid)  # type: ignore[arg-type]
    except DapxError as exc:
        log.warning("could not remove the half-made copy %s on %s: %s", vmid, dest.name, exc)


# -----------------------------------------------------------------------------------------------
# The whole copy


async def make_copy(job: MigrationJob, plan: MigrationPlan, source: ProxmoxNode,
                    dest: ProxmoxNode, vmid: int, lock_wait: float) -> int:
    """Copy the guest as ``vmid`` by the planned transport; bytes moved."""
    if plan.transport in ("zfs", "btrfs"):
        return await copy_by_replica(job, plan, dest, vmid, lock_wait)
    return await copy_by_vzdump(job, plan, source, dest, vmid)


async def copy_guest(job: MigrationJob, plan: MigrationPlan, src: SourceFacts,
                     source: ProxmoxNode, dest: ProxmoxNode, slots: Slots, mark: str,
                     lock_wait: float) -> tuple[CopyOutcome, dict[str, str]]:
    """Make the copy (beside the target when ``slots.staged``), adapt its config, and swap it
    in. Returns the outcome and the config changes applied."""
    outcome = CopyOutcome()
    running = bool(plan.occupant) and plan.occupant.get("status") == "running"  # type: ignore[union-attr]
    in_place = plan.replace == "refresh" and not slots.staged and running
    if in_place:
        await stop_guest(dest, dest.name, plan.kind, plan.target_vmid)  # ours, updated in place
    try:
        outcome.bytes = await make_copy(job, plan, source, dest, slots.build, lock_wait)
    except DapxError:
        if in_place:  # the copy is as it was (a cut receive changes nothing): run it again
            await restart_quietly(dest, plan.kind, plan.target_vmid)
        raise
    try:
        changes = apply_changes(dest, dest.name, plan.kind, slots.build, plan, src.config, mark,
                                job.new_macs)
        if slots.staged:
            outcome.replaced = f"{plan.occupant['kind']} {plan.target_vmid}"  # type: ignore[index]
            outcome.leftover = await swap_staged(dest, plan, slots, running)
    except DapxError:
        if slots.staged:
            await discard_half_made(dest, plan.kind, slots.staged)
        raise
    return outcome, changes


async def restart_quietly(dest: ProxmoxNode, kind: str, vmid: int) -> None:
    """Start our copy again after a failed refresh; never raises (the refresh's error is the
    one to report)."""
    try:
        await start_guest(dest, dest.name, kind, vmid)  # type: ignore[arg-type]
    except DapxError as exc:
        log.warning("could not start the copy %s on %s again: %s", vmid, dest.name, exc)


async def swap_staged(dest: ProxmoxNode, plan: MigrationPlan, slots: Slots,
                      running: bool) -> str:
    """Put the staged copy in the target's place (issue 10's beside-then-swap: the old guest
    renumbered aside, the new one into place, the old one destroyed). A running old copy
    (ours) is stopped first, and started again when the swap fails. Returns the leftover."""
    from dapx.flows.swap import swap_into_place

    old_kind = plan.occupant["kind"]  # type: ignore[index]
    if running:
        await stop_guest(dest, dest.name, old_kind, plan.target_vmid)
    try:
        swap = await swap_into_place(dest, new_kind=plan.kind, staged=slots.staged,
                                     old_kind=old_kind, target=slots.target, aside=slots.aside)
    except DapxError:
        if running:
            await restart_quietly(dest, old_kind, plan.target_vmid)
        raise
    if not swap.target == slots.target:
        raise PermanentError(f"the swap put the copy at {swap.target}, not {slots.target}")
    return swap.leftover
