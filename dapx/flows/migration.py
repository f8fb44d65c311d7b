"""``vm-migration``: copy or move a guest to another node or cluster, with hardware changes
(M1-M4).

Shape of a run (flows -> tasks -> core): load both node blocks; read the source guest and the
destination through their APIs; plan (``core.migration_rules``: every refusal happens here,
before anything changes: unknown guest, a taken VMID without force, a bridge or storage the
destination lacks, hardware outside PVE's limits, what PVE itself would refuse); for a zfs or
btrfs copy the replica's own plan too; node trust for a copy. A dry run publishes the plan and
stops. Otherwise, holding the guests' locks (the target VMID always; the source guest for a
move or a vzdump copy, while the replica steps take it themselves): snapshot the source first
and prune our older snapshots (M3); the copy (``migration_copy``) or the move
(``migration_move``); the hardware changes through the config API with its digest (M2); start
after; a result table. A scheduled copy job refreshes its copy each run (M4).
"""

from __future__ import annotations

import time
from contextlib import AsyncExitStack
from datetime import datetime, timezone
from typing import Any

from prefect import flow
from pydantic import BaseModel, Field

from dapx.blocks.manage import aload_nodes
from dapx.blocks.node import ProxmoxNode
from dapx.core.migration_job import MigrationJob
from dapx.core.migration_plan import DestFacts, MigrationPlan, SourceFacts, copy_mark
from dapx.core.migration_rules import (free_vmid, plan_migration, snapshot_name,
                                       snapshots_to_delete)
from dapx.core.units import key_values
from dapx.errors import InputError
from dapx.flows import KEPT_RESULTS
from dapx.flows.hooks import job_hooks
from dapx.flows.migration_copy import Slots, check_replica_plan, copy_guest, needs_staging
from dapx.flows.migration_move import move_guest
from dapx.flows.trust import check_trust
from dapx.tasks.locks import DEFAULT_WAIT, exclusive, guest_lock_name
from dapx.tasks.migration_api import (apply_changes, delete_snapshots, endpoint_of,
                                      read_destination, read_source, start_guest,
                                      take_snapshot)
from dapx.tasks.ssh import node_sessions
from dapx.ui_extensions.artifacts import (artifact_key, human_bytes, plan_markdown,
                                          publish_markdown, publish_table)


class MigrationResult(BaseModel):
    """What one migration run did (returned by the flow, shown as a table)."""

    mode: str = Field(description="copy or move.", examples=["copy"])
    transport: str = Field(description="zfs, btrfs, vzdump, migrate or remote_migrate.",
                           examples=["zfs"])
    kind: str = Field(default="", description="qemu or lxc.", examples=["qemu"])
    source: str = Field(examples=["pve1"])
    guest: int = Field(examples=[100])
    destination: str = Field(examples=["pve3"])
    dest_vmid: int = Field(examples=[9100])
    changes: dict[str, str] = Field(default_factory=dict, description="Config values set on "
                                    "the destination (hardware, bridges, the copy's mark).")
    bytes: int = Field(default=0, description="Bytes moved (copies: counted on the wire; "
                       "moves: the disks' sizes).")
    seconds: float = 0.0
    snapshot: str = Field(default="", description="Snapshot taken first (M3).")
    pruned: list[str] = Field(default_factory=list, description="Older snapshots of ours "
                              "deleted.")
    replaced: str = Field(default="", description="The guest the copy replaced.")
    leftover: str = Field(default="", description="The replaced guest, if destroying it "
                          "failed (set aside under that VMID).")
    started: bool = False
    dry_run: bool = False

    @property
    def hardware_changed(self) -> dict[str, str]:
        """The changes without the copy's mark."""
        return {k: v for k, v in self.changes.items() if k != "description"}

    @property
    def hardware_text(self) -> str:
        """``memory=1024, cores=2``; ``-`` when nothing changed."""
        return key_values(self.hardware_changed)


# -----------------------------------------------------------------------------------------------
# Read and plan


async def read_and_plan(job: MigrationJob, source: ProxmoxNode,
                        dest: ProxmoxNode) -> tuple[SourceFacts, DestFacts, MigrationPlan]:
    """Both sides read, the plan made and checked; raises the first refusal."""
    src = read_source(source, job.guest)
    facts = read_destination(dest, job.target_vmid, copy_mark(job.source, job.guest),
                             job.cpu is not None)
    plan = plan_migration(job, src, facts)
    if plan.transport == "remote_migrate":
        endpoint_of(dest)  # refuses a destination block without an API token
    if plan.mode == "copy" and job.source != job.destination:
        await check_trust(source, dest)
    if plan.transport in ("zfs", "btrfs") and not needs_staging(plan):
        await check_replica_plan(job, plan, dest, plan.target_vmid)
    plan.notes = plan_notes(job, plan)
    return src, facts, plan


def plan_notes(job: MigrationJob, plan: MigrationPlan) -> list[str]:
    notes = []
    if plan.replace == "replace":
        notes.append(f"VMID {plan.target_vmid} holds {plan.occupant}: the copy is made beside "
                     "it and swapped in only when complete (force)")
    elif plan.replace == "refresh":
        notes.append(f"VMID {plan.target_vmid} holds this job's earlier copy: it is refreshed")
    if plan.online:
        notes.append("the VM is running: PVE moves it live")
    if plan.restart:
        notes.append("the container is running: it is stopped, moved and started again")
    if job.snapshot_first:
        notes.append(f"a snapshot of the source first, keeping the newest "
                     f"{job.keep_snapshots} of dapx's")
    return notes


def slots_for(plan: MigrationPlan, used: set[int]) -> Slots:
    """The target VMID, and when the copy is made beside it, two free VMIDs above it."""
    if plan.mode != "copy" or not needs_staging(plan):
        return Slots(plan.target_vmid)
    staged = free_vmid(used, plan.target_vmid)
    return Slots(plan.target_vmid, staged, free_vmid(used | {staged}, staged))


# -----------------------------------------------------------------------------------------------
# Dry run and results


def plan_rows(plan: MigrationPlan) -> list[dict[str, Any]]:
    return [{"disk": d.key, "volume": d.volid, "from": f"{d.source_storage} ({d.source_type})",
             "to": f"{d.target_storage} ({d.target_type})", "size": human_bytes(d.size)}
            for d in plan.disks]


async def publish_plan(job: MigrationJob, plan: MigrationPlan) -> None:
    facts = {"mode": plan.mode, "transport": plan.transport, "guest":
             f"{plan.kind} {plan.guest} on {plan.source}", "to":
             f"{plan.destination} as VMID {plan.target_vmid}",
             "target VMID": plan.replace if plan.replace != "none" else "free",
             "bridges": {n.key: f"{n.source_bridge} → {n.target_bridge}" for n in plan.nics},
             "hardware": plan.hardware or "unchanged", "start after": job.start_after}
    await publish_markdown(artifact_key("migration-plan", plan.source, plan.guest,
                                        plan.destination),
                           plan_markdown(f"Migration plan: {plan.mode} of guest {plan.guest}",
                                         facts, plan_rows(plan),
                                         ["dry run: nothing was changed", *plan.notes]),
                           "dapx migration plan (dry run)")


def result_rows(result: MigrationResult) -> list[dict[str, Any]]:
    """The result table: one row."""
    return [{"mode": result.mode, "transport": result.transport,
             "source": f"{result.source}/{result.guest}",
             "destination": f"{result.destination}/{result.dest_vmid}",
             "hardware changed": result.hardware_text,
             "size": human_bytes(result.bytes), "seconds": result.seconds,
             "snapshot": result.snapshot or "-", "replaced": result.replaced or "-",
             "started": result.started}]


async def publish_result(result: MigrationResult) -> None:
    await publish_table(artifact_key("migration-result", result.source, result.guest,
                                     result.destination), result_rows(result),
                        f"{result.mode} of guest {result.guest}: {result.source} -> "
                        f"{result.destination}/{result.dest_vmid} in {result.seconds:g} s")


# -----------------------------------------------------------------------------------------------
# The steps


async def snapshot_first(job: MigrationJob, src: SourceFacts, source: ProxmoxNode,
                         result: MigrationResult) -> None:
    """M3: a Proxmox snapshot of the source, then our older ones beyond ``keep_snapshots``."""
    name = snapshot_name(datetime.now(timezone.utc))
    await take_snapshot(source, src.node, src.kind, src.vmid, name,
                        f"taken by dapx before a {job.mode} to {job.destination}")
    result.snapshot = name
    victims = snapshots_to_delete(src.snapshots + [(name, int(time.time()))],
                                  job.keep_snapshots, protect=name)
    result.pruned = await delete_snapshots(source, src.node, src.kind, src.vmid, victims)


def locks_for(job: MigrationJob, plan: MigrationPlan) -> list[str]:
    """The guests this run works on, sorted (every run takes them in the same order): the
    target VMID; the source guest too unless the replica steps take it themselves."""
    names = {guest_lock_name(plan.destination, plan.target_vmid)}
    if plan.mode == "move" or plan.transport == "vzdump":
        names.add(guest_lock_name(plan.source, plan.guest))
    return sorted(names)


async def carry_out(job: MigrationJob, plan: MigrationPlan, src: SourceFacts,
                    source: ProxmoxNode, dest: ProxmoxNode, slots: Slots, lock_wait: float,
                    result: MigrationResult) -> None:
    """Snapshot first, copy or move, adapt, start; fills ``result``."""
    if job.snapshot_first:
        if plan.transport in ("zfs", "btrfs"):
            async with exclusive(guest_lock_name(plan.source, plan.guest),
                                 f"snapshotting guest {plan.guest} on {plan.source}", lock_wait):
                await snapshot_first(job, src, source, result)
        else:
            await snapshot_first(job, src, source, result)
    mark = copy_mark(job.source, job.guest) if plan.mode == "copy" else None
    was_running = bool(plan.occupant) and plan.occupant.get("status") == "running"  # type: ignore[union-attr]
    if plan.mode == "move":
        await move_guest(source, dest, plan)
        result.bytes = plan.bytes
        result.changes = apply_changes(dest, dest.name, plan.kind, plan.target_vmid, plan,
                                       src.config, None, False)
        was_running = src.status == "running"
    else:
        outcome, result.changes = await copy_guest(job, plan, src, source, dest, slots, mark,
                                                   lock_wait)
        result.bytes, result.replaced, result.leftover = (outcome.bytes, outcome.replaced,
                                                          outcome.leftover)
    if job.start_after or (was_running and plan.replace == "refresh"):
        await start_guest(dest, dest.name, plan.kind, plan.target_vmid)
        result.started = True


async def run_migration(job: MigrationJob, dry_run: bool, lock_wait: float) -> MigrationResult:
    """The whole migration inside a flow run (node sessions held by the caller)."""
    source, dest = await aload_nodes(job.source, job.destination)
    src, facts, plan = await read_and_plan(job, source, dest)
    result = MigrationResult(mode=plan.mode, transport=plan.transport, kind=plan.kind,
                             source=plan.source, guest=plan.guest, destination=plan.destination,
                             dest_vmid=plan.target_vmid, dry_run=dry_run)
    if dry_run:
        await publish_plan(job, plan)
        return result
    slots = slots_for(plan, set(facts.guests))
    async with AsyncExitStack() as stack:
        for name in locks_for(job, plan):
            await stack.enter_async_context(exclusive(
                name, f"migrating guest {plan.guest} from {plan.source} to "
                f"{plan.destination}", lock_wait))
        await carry_out(job, plan, src, source, dest, slots, lock_wait, result)
    return result


@flow(name="vm-migration", log_prints=False, **KEPT_RESULTS, **job_hooks())
async def vm_migration(job: MigrationJob, dry_run: bool = False, force: bool = False,
                       lock_wait: float = DEFAULT_WAIT) -> MigrationResult:
    """Copy or move guest ``job.guest`` from ``job.source`` to ``job.destination`` as
    ``job.target_vmid``, with the hardware changes the job names.

    ``dry_run`` publishes the plan and changes nothing; ``force`` (or ``job.force``) lets a
    copy replace the guest at the target VMID, which is kept until the new copy is complete;
    ``lock_wait`` is how long to wait for another run on the same guests. Raises InputError,
    ConflictError or GuestLocked before anything changes; TaskFailed with PVE's message or
    CommandError when the copy or move fails (the source as it was, the target's old guest
    kept); LockTimeout.
    """
    if force and not job.force:
        if job.mode == "move":
            raise InputError("force only applies to copies (a move never replaces a guest)")
        job = job.model_copy(update={"force": True})
    started = time.monotonic()
    async with node_sessions():
        result = await run_migration(job, dry_run, lock_wait)
    result.seconds = round(time.monotonic() - started, 3)
    if not dry_run:
        await publish_result(result)
    return result
