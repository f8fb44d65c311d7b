"""``pbs-backup-list`` and ``pbs-restore``: browse a PBS storage's backups, restore one (B2).

Listing asks a node for the PBS storage's content (``GET /nodes/{n}/storage/{s}/content``):
per guest, newest first, with time, size, verification state, protection and notes.

Shape of a restore (flows -> tasks -> core): load the destination's block; through its API
read its storages (the PBS storage must be there; the target storage must hold images for a VM,
rootdir for a container), the backup (the one named, or the guest's newest), the config inside
it (``vzdump/extractconfig``: the bridges it uses, mapped, must exist on the destination), the
cluster's guests (is the target VMID taken, and where). A taken VMID is refused unless
``force``; with ``force`` the guest there must be on the destination, stopped, unlocked, and
its volumes renameable (checked over SSH) - all before anything changes. A dry run publishes
the plan and stops. Then, under the target guest's global concurrency limit: a free VMID is
restored as-is; a taken one is restored BESIDE the existing guest under a free temporary VMID,
its config adapted, and only when it is complete swapped into place (``flows.swap``: the old
guest renumbered aside, the new one into place, the old one destroyed). A failed restore
removes the temporary guest and leaves the old one as it was. Bridges are mapped through the
config API (with its digest); the guest is started last when asked. A result table names the
backup, where it went and the bytes it held.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Optional

from prefect import flow
from pydantic import BaseModel, Field

from dapx.flows import KEPT_RESULTS
from dapx.blocks.manage import aload_nodes
from dapx.blocks.node import ProxmoxNode
from dapx.core.backups import BackupEntry, BackupRef, newest_first, parse_backup
from dapx.core.guestconfig import parse_guest_config
from dapx.core.jobspec import RestoreRequest
from dapx.core.registration import bridges_used, mapped_networks
from dapx.core.resources import ClusterGuest, free_vmids, require_target_storage
from dapx.core.types import NodeName, StorageId, Vmid
from dapx.errors import ConflictError, DapxError, GuestLocked, InputError, PermanentError
from dapx.flows.swap import swap_into_place
from dapx.tasks.locks import DEFAULT_WAIT, exclusive, guest_lock_name
from dapx.tasks.pve_guests import (adapt_guest_config, destroy_guest, read_cluster_guests,
                                   read_guest_config, start_guest, stop_guest)
from dapx.tasks.renumber import check_renumber
from dapx.tasks.ssh import node_sessions
from dapx.tasks.vzdump import (RestoreSide, follow_task, list_backups, read_restore_side,
                               start_restore)
from dapx.ui_extensions.artifacts import (artifact_key, human_bytes, plan_markdown,
                                          publish_markdown, publish_table)

# -----------------------------------------------------------------------------------------------
# Listing


class BackupList(BaseModel):
    """The backups of a PBS storage, as one node sees them."""

    node: str = Field(description="The node asked.", examples=["pve1"])
    storage: str = Field(description="PVE storage (type pbs).", examples=["pbs"])
    backups: list[BackupEntry] = Field(default_factory=list,
                                       description="Per guest, newest first.")


def list_rows(backups: list[BackupEntry]) -> list[dict[str, Any]]:
    """The listing's table rows."""
    return [{"guest": b.guest, "kind": b.kind, "time": b.when, "size": human_bytes(b.size),
             "verified": b.verified, "protected": "yes" if b.protected else "no",
             "notes": b.notes or "-", "volume id": b.volid} for b in backups]


async def read_backup_list(node: str, storage: str, guest: int | None) -> BackupList:
    """The listing, for the flow and the CLI. Raises InputError for an unknown node, or a
    storage the node does not have or that is not a PBS storage."""
    (api_node,) = await aload_nodes(node)
    entries = list_backups(api_node, node, storage, guest)
    return BackupList(node=node, storage=storage, backups=newest_first(entries))


@flow(name="pbs-backup-list", log_prints=False, **KEPT_RESULTS)
async def pbs_backup_list(node: NodeName, storage: StorageId,
                          guest: Optional[Vmid] = None) -> BackupList:
    """List the backups on PBS storage ``storage`` as node ``node`` sees them (of guest
    ``guest`` only, when given): per guest, newest first. Publishes them as a table."""
    found = await read_backup_list(node, storage, guest)
    await publish_table(artifact_key("backups", node, storage, guest or "all"),
                        list_rows(found.backups) or [{"backups": "none"}],
                        f"backups on {storage} seen from {node}")
    return found


# -----------------------------------------------------------------------------------------------
# Restore: result and plan


class RestoreResult(BaseModel):
    """What one restore did: what the protection state needs."""

    backup: str = Field(description="The backup's volume id.",
                        examples=["pbs:backup/vm/300/2025-11-26T02:00:00Z"])
    backup_time: int = Field(description="The recovery point: backup time, epoch seconds.")
    guest: int = Field(description="VMID of the backed-up guest.", examples=[300])
    kind: str = Field(description="qemu or lxc.", examples=["qemu"])
    destination: str = Field(description="Node the guest was restored on.", examples=["pve1"])
    vmid: int = Field(description="VMID of the restored guest.", examples=[9300])
    storage: str = Field(description="Storage of its disks.", examples=["local"])
    bytes: int = Field(default=0, description="Bytes the backup held (moved from PBS).")
    seconds: float = Field(default=0.0, description="Restore time (the whole run's in "
                           "``seconds`` of the flow result).")
    replaced: str = Field(default="", description="The guest it replaced (kind and name), "
                          "empty when the VMID was free.")
    bridges: dict[str, str] = Field(default_factory=dict, description="Network devices "
                                    "whose bridge was mapped, with their new value.")
    dropped: list[str] = Field(default_factory=list, description="Config keys removed from a "
                               "replica because they run code as root or pass host devices "
                               "through (a recovery job's copy; plain restores keep them).")
    started: bool = Field(default=False, description="Started after the restore.")
    leftover: str = Field(default="", description="The replaced guest, if it could not be "
                          "destroyed (it is set aside under another VMID).")
    dry_run: bool = False


@dataclass
class RestorePlan:
    """Everything read and checked before anything changes."""

    dest: ProxmoxNode
    kind: str
    target: int
    config: dict[str, str]
    """The guest's config (main section): the one in the backup, or the guest's own."""
    entry: BackupEntry | None = None
    """The backup (a recovery job sets it once its backup is made)."""
    occupant: ClusterGuest | None = None
    staged: int = 0
    aside: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def backup(self) -> BackupEntry:
        if self.entry is None:
            raise PermanentError("a restore plan needs its backup before it runs")
        return self.entry


def check_bridges(config: dict[str, str], bridge_map: dict[str, str], have: set[str],
                  node: str) -> None:
    """InputError naming each network device whose (mapped) bridge ``node`` lacks."""
    mapped = config | mapped_networks(config, bridge_map)
    missing = [f"{key} uses {bridge}" for key, bridge in sorted(bridges_used(mapped).items())
               if bridge not in have]
    if missing:
        raise InputError(f"node {node} lacks the bridge the restored guest would use: "
                         f"{', '.join(missing)} (bridges there: {', '.join(sorted(have)) or 'none'}"
                         "); map it with a bridge map, e.g. vmbr1=vmbr0")


def check_occupant(occupant: ClusterGuest, target: int, node: str, *, force: bool,
                   ours: bool, stop_ours: bool) -> None:
    """Raise unless the guest at ``target`` may be replaced: ``force`` (or ``ours``: a copy
    this job made), on ``node``, not locked, stopped (or ours to stop)."""
    what = f"VMID {target} is {occupant.kind} guest {occupant.name or target!r} on " \
           f"{occupant.node}"
    if not (force or ours):
        raise ConflictError(f"{what}; restoring over it needs force (the guest is then kept "
                            "until the restored one is complete)")
    if occupant.node != node:
        raise ConflictError(f"{what}, not on {node}; a restore can only replace a guest on "
                            "its own node: choose another VMID")
    if occupant.lock:
        raise GuestLocked(f"{what} and locked ({occupant.lock}); wait for that operation or "
                          "clear the lock", lock=occupant.lock)
    if occupant.status == "running" and not (ours and stop_ours):
        raise ConflictError(f"{what} and running; stop it first (a restore never stops a "
                            "guest it replaces)")


def backup_config(text: str, kind: str) -> dict[str, str]:
    """The main section of a backed-up config as key -> value."""
    return dict(parse_guest_config(text, kind).main.items())  # type: ignore[arg-type]


async def read_destination(request: RestoreRequest, vmid: int,
                           ref: BackupRef | None = None) -> tuple[ProxmoxNode, RestoreSide]:
    """The destination's block and what a restore reads there (guest ``vmid``'s backups, the
    backup ``ref`` names and its config); InputError unless it has the PBS storage, the
    target storage and the backup."""
    (dest,) = await aload_nodes(request.destination)
    return dest, read_restore_side(dest, dest.name, request.storage, vmid,
                                   request.dest_storage, ref)


async def check_destination(request: RestoreRequest, dest: ProxmoxNode, side: RestoreSide,
                            kind: str, config: dict[str, str], target: int, *, force: bool,
                            mark: str | None = None, stop_ours: bool = False) -> RestorePlan:
    """Check the target storage, the bridges ``config`` would use and the guest now at
    ``target``. Raises InputError, ConflictError or GuestLocked before anything changes.
    ``mark``: a description line that makes the guest at ``target`` ours to replace (a
    recovery job's previous copy)."""
    occupant = side.guests.get(target)
    require_target_storage(side.storages, request.dest_storage, dest.name, kind,
                           occupant is not None)
    check_bridges(config, request.bridge_map, side.bridges, dest.name)
    plan = RestorePlan(dest=dest, kind=kind, target=target, config=config)
    if occupant is not None:
        ours = bool(mark) and is_marked(read_guest_config(dest, occupant.node, occupant.kind,
                                                          target), mark)
        check_occupant(occupant, target, dest.name, force=force, ours=ours, stop_ours=stop_ours)
        plan.occupant = occupant
        plan.staged, plan.aside = free_vmids(side.guests, 2)
        await check_renumber(dest, occupant.kind, target, plan.aside)
    return plan


async def read_restore_plan(request: RestoreRequest, *, force: bool) -> RestorePlan:
    """Read and check everything for a restore of an existing backup; raises InputError,
    ConflictError or GuestLocked naming the problem before anything changes."""
    ref = parse_backup(request.backup, request.storage)
    dest, side = await read_destination(request, ref.backup_id, ref)
    entry = side.backup
    if entry is None:
        raise PermanentError(f"the destination read no backup for {ref.path}")
    config = backup_config(side.config, entry.kind)
    plan = await check_destination(request, dest, side, entry.kind, config,
                                   request.dest_vmid or entry.guest, force=force)
    plan.entry = entry
    return plan


def is_marked(config: dict[str, Any], mark: str) -> bool:
    """True when a guest config's description starts with ``mark``."""
    return str(config.get("description") or "").split("\n", 1)[0] == mark


def plan_facts(request: RestoreRequest, plan: RestorePlan) -> dict[str, Any]:
    mapped = mapped_networks(plan.config, request.bridge_map)
    backup = (f"{plan.entry.volid} ({human_bytes(plan.entry.size)})" if plan.entry
              else "the one this run makes")
    return {"backup": backup,
            "guest": f"{plan.kind} {plan.entry.guest}" if plan.entry else plan.kind,
            "to": f"{plan.dest.name} as VMID {plan.target}, disks on {request.dest_storage}",
            "VMID now": (f"{plan.occupant.kind} {plan.occupant.name or plan.target} "
                         f"({plan.occupant.status}): restored beside it as {plan.staged}, "
                         f"swapped in when complete, the old one destroyed"
                         if plan.occupant else "free"),
            "bridges": ", ".join(f"{k}: {v}" for k, v in mapped.items()) or "unchanged",
            "unique MACs": request.unique, "start after": request.start}


async def publish_plan(request: RestoreRequest, plan: RestorePlan, title: str) -> None:
    await publish_markdown(artifact_key("restore-plan", plan.dest.name, plan.target),
                           plan_markdown(title, plan_facts(request, plan), [],
                                         ["dry run: nothing was changed", *plan.notes]),
                           "dapx restore plan (dry run)")


# -----------------------------------------------------------------------------------------------
# Restore: the steps


async def restore_as(request: RestoreRequest, plan: RestorePlan, vmid: int) -> float:
    """Restore the backup as ``vmid``; seconds. A temporary guest that PVE created but could
    not finish is destroyed; raises the restore's error."""
    started = time.monotonic()
    upid = start_restore(plan.dest, plan.dest.name, plan.kind, vmid, plan.backup.volid,
                         request.dest_storage, request.unique)
    try:
        await follow_task(plan.dest, upid, f"restore of {plan.backup.volid} as guest {vmid} on "
                          f"{plan.dest.name}")
    except DapxError:
        if vmid == plan.staged:
            await discard_staged(plan)
        raise
    return round(time.monotonic() - started, 3)


async def discard_staged(plan: RestorePlan) -> None:
    """Destroy the temporary guest (ours: made by this run) if it exists and the old guest is
    back at the target; never raises (the error that led here is the one to report)."""
    try:
        guests = read_cluster_guests(plan.dest)
        if plan.staged in guests and plan.target in guests:
            await destroy_guest(plan.dest, plan.dest.name, plan.kind, plan.staged)
    except DapxError:
        pass


async def finish_restore(request: RestoreRequest, plan: RestorePlan, vmid: int,
                         mark: str | None, carry_keys: tuple[str, ...] | None,
                         result: RestoreResult) -> None:
    """Adapt the restored guest's config, swap it into place if it was staged."""
    if request.bridge_map or mark or carry_keys is not None:  # else spare a read and a task
        changes, result.dropped = adapt_guest_config(plan.dest, plan.dest.name, plan.kind, vmid,
                                                     request.bridge_map, mark, carry_keys)
        result.bridges = {k: v for k, v in changes.items() if k.startswith("net")}
    if plan.occupant is None:
        return
    if plan.occupant.status == "running":
        await stop_guest(plan.dest, plan.dest.name, plan.occupant.kind, plan.target)
    swap = await swap_into_place(plan.dest, new_kind=plan.kind, staged=plan.staged,
                                 old_kind=plan.occupant.kind, target=plan.target,
                                 aside=plan.aside)
    result.leftover = swap.leftover


async def carry_out(request: RestoreRequest, plan: RestorePlan, mark: str | None,
                    result: RestoreResult, carry_keys: tuple[str, ...] | None = None) -> None:
    """Restore (beside the old guest when there is one), adapt (``mark`` and ``carry_keys``:
    a replica's), swap, start."""
    vmid = plan.staged if plan.occupant else plan.target
    result.seconds = await restore_as(request, plan, vmid)
    try:
        await finish_restore(request, plan, vmid, mark, carry_keys, result)
    except DapxError:
        if plan.occupant is not None:
            await discard_staged(plan)
        raise
    if request.start:
        await start_guest(plan.dest, plan.dest.name, plan.kind, plan.target)
        result.started = True


def new_result(request: RestoreRequest, plan: RestorePlan, dry_run: bool) -> RestoreResult:
    replaced = (f"{plan.occupant.kind} {plan.occupant.name or plan.target}"
                if plan.occupant else "")
    entry = plan.entry
    return RestoreResult(backup=entry.volid if entry else "", backup_time=entry.time if entry
                         else 0, guest=entry.guest if entry else 0, kind=plan.kind,
                         destination=plan.dest.name, vmid=plan.target,
                         storage=request.dest_storage, bytes=entry.size if entry else 0,
                         replaced=replaced, dry_run=dry_run)


async def restore_backup(request: RestoreRequest, *, force: bool, dry_run: bool,
                         lock_wait: float) -> RestoreResult:
    """The whole restore inside a flow that holds the node sessions: plan, then (unless a dry
    run) carry it out under the target guest's lock."""
    plan = await read_restore_plan(request, force=force)
    result = new_result(request, plan, dry_run)
    if dry_run:
        await publish_plan(request, plan, "Restore plan")
        return result
    async with exclusive(guest_lock_name(plan.dest.name, plan.target),
                         f"working on guest {plan.target} on {plan.dest.name}", lock_wait):
        await carry_out(request, plan, None, result)
    return result


@flow(name="pbs-restore", log_prints=False, **KEPT_RESULTS)
async def pbs_restore(request: RestoreRequest, force: bool = False, dry_run: bool = False,
                      lock_wait: float = DEFAULT_WAIT) -> RestoreResult:
    """Restore ``request.backup`` from PBS storage ``request.storage`` on
    ``request.destination`` as ``request.dest_vmid`` with disks on ``request.dest_storage``.

    ``force`` replaces a guest already at that VMID, keeping it until the restored one is
    complete; ``dry_run`` publishes the plan and changes nothing; ``lock_wait`` is how long to
    wait for another run on the same guest. Raises InputError or ConflictError before anything
    changes, TaskFailed with PVE's message when the restore fails (the old guest intact).
    """
    started = time.monotonic()
    async with node_sessions():
        result = await restore_backup(request, force=force, dry_run=dry_run,
                                      lock_wait=lock_wait)
    if not dry_run:
        await publish_result(result, round(time.monotonic() - started, 3))
    return result


def result_rows(result: RestoreResult) -> list[dict[str, Any]]:
    """The result table: one row."""
    return [{"backup": result.backup, "guest": f"{result.kind} {result.guest}",
             "destination": f"{result.destination}/{result.vmid}", "storage": result.storage,
             "size": human_bytes(result.bytes),
             "seconds": result.seconds, "replaced": result.replaced or "-",
             "bridges": ", ".join(f"{k}: {v}" for k, v in result.bridges.items()) or "-",
             "dropped": ", ".join(result.dropped) or "-",
             "started": "yes" if result.started else "no",
             "leftover": result.leftover or "-"}]


async def publish_result(result: RestoreResult, seconds: float) -> None:
    await publish_table(artifact_key("restore-result", result.destination, result.vmid),
                        result_rows(result),
                        f"{result.backup} -> {result.destination}/{result.vmid} in {seconds:g} s")
