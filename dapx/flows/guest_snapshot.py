"""``guest-snapshot``: list, create, delete and roll back a guest's Proxmox snapshots (S1).

Shape of a run: check the name as PVE does (before anything runs); load the node; find the
guest's kind through the API; read its snapshots; refuse a create over an existing name and
a delete or rollback of a missing one, naming what exists. A rollback on ZFS storage first
reads every disk's snapshots (one ``zfs get``) and refuses, naming them, when any disk has a
newer snapshot (sanoid's, a replication's, a newer Proxmox one): PVE would refuse them too,
but only disk by disk. Every change is a PVE task followed by its UPID. The result lists the
guest's snapshots afterwards and is also a table artifact.
"""

from __future__ import annotations

import asyncio
from typing import Literal, Optional

from prefect import flow
from pydantic import BaseModel, Field

from dapx.flows import KEPT_RESULTS
from dapx.blocks.manage import aload_nodes
from dapx.blocks.node import ProxmoxNode
from dapx.core.guestconfig import GuestConfig, Section, list_disks
from dapx.core.pvesnap import (blocked_rollback_message, rollback_blockers,
                               validate_pve_snapshot_name)
from dapx.core.snapview import classify
from dapx.core.types import NodeName, Vmid
from dapx.core.units import utc_time
from dapx.core.volumes import zfs_dataset
from dapx.errors import ConflictError, InputError
from dapx.tasks import pve, zfs
from dapx.tasks.guests import read_guest
from dapx.tasks.ssh import node_sessions
from dapx.ui_extensions.artifacts import artifact_key, publish_table

Action = Literal["list", "create", "delete", "rollback"]


class PveSnapshot(BaseModel):
    """One Proxmox snapshot as the API lists it."""

    name: str = Field(description="Snapshot name.", examples=["before-upgrade"])
    snaptime: int = Field(default=0, description="Creation time, Unix seconds.")
    description: str = Field(default="", description="Its description.")
    parent: str = Field(default="", description="The snapshot it was taken after.")
    vmstate: bool = Field(default=False, description="True when it holds the RAM state.")


class GuestSnapshotResult(BaseModel):
    """What a guest-snapshot run did and the guest's snapshots afterwards."""

    node: str
    guest: int
    kind: str
    action: str
    name: str = ""
    done: str = Field(default="", description="One line: what changed.")
    snapshots: list[PveSnapshot] = Field(default_factory=list)

    def __str__(self) -> str:
        lines = [f"guest {self.guest} on {self.node}: {self.done or 'listed'}"]
        lines += [f"  {s.name:<40} {utc_time(s.snaptime)} {'RAM ' if s.vmstate else ''}"
                  f"{s.description}".rstrip() for s in self.snapshots]
        return "\n".join(lines)


def _snapshots(raw: list[dict]) -> list[PveSnapshot]:
    return [PveSnapshot(name=s["name"], snaptime=int(s.get("snaptime") or 0),
                        description=str(s.get("description") or ""),
                        parent=str(s.get("parent") or ""), vmstate=bool(s.get("vmstate")))
            for s in raw]


def check_request(action: Action, name: Optional[str]) -> None:
    """InputError before anything runs: a change needs a name PVE would accept."""
    if action == "list":
        return
    if not name:
        raise InputError(f"snapshot {action} needs a snapshot name")
    validate_pve_snapshot_name(name)


def snapshot_disks(config: GuestConfig, name: str) -> list:  # list[Disk]
    """The disks PVE rolls back: those of the snapshot's own section."""
    section = next((s for s in config.sections[1:] if s.name == name), None)
    if section is None:
        return list_disks(config)
    return list_disks(GuestConfig(config.kind, [Section(None, "", section.lines)]))


async def check_rollback(node: ProxmoxNode, vmid: int, name: str) -> None:
    """Raise ConflictError naming every newer snapshot on the guest's ZFS disks."""
    guest = await read_guest(node, vmid)
    config = guest.config
    datasets = []
    for disk in snapshot_disks(config, name):
        storage = guest.storages.get(disk.storage or "", {})
        if storage.get("type") == "zfspool" and "pool" in storage:
            datasets.append(zfs_dataset(storage["pool"], disk.volname))
    if not datasets:
        return
    states = await zfs.dataset_states(node, datasets)
    blockers = rollback_blockers({d: states[d].snapshots for d in datasets}, name)
    if blockers:
        known = set(config.snapshot_names)
        groups = {n: classify(n, known) for names in blockers.values() for n in names}
        raise ConflictError(blocked_rollback_message(node.name, vmid, name, blockers, groups))


async def _act(node: ProxmoxNode, kind: str, vmid: int, action: Action, name: str,
               description: Optional[str], vmstate: bool, names: list[str]) -> str:
    if action == "create":
        if name in names:
            raise ConflictError(f"guest {vmid} on {node.name} already has a snapshot {name!r}")
        await pve.create_snapshot(node, kind, vmid, name, description, vmstate)
        return f"created {name}" + (" with RAM state" if vmstate and kind == "qemu" else "")
    if name not in names:
        raise InputError(f"guest {vmid} on {node.name} has no snapshot {name!r} (it has: "
                         f"{', '.join(names) or 'none'})")
    if action == "delete":
        await pve.delete_snapshot(node, kind, vmid, name)
        return f"deleted {name}"
    await check_rollback(node, vmid, name)
    await pve.rollback_snapshot(node, kind, vmid, name)
    return f"rolled back to {name}"


@flow(name="guest-snapshot", log_prints=False, **KEPT_RESULTS)
async def guest_snapshot(node: NodeName, guest: Vmid, action: Action = "list",
                         name: Optional[str] = None, description: Optional[str] = None,
                         vmstate: bool = False) -> GuestSnapshotResult:
    """S1: ``action`` (list, create, delete, rollback) on guest ``guest``'s Proxmox snapshots
    on node ``node``; ``name`` for a change, ``description`` and ``vmstate`` (RAM state,
    VMs only) for a create.

    Raises InputError for a bad or unknown name, ConflictError for a name in use or a
    rollback that newer snapshots block (named), NotFoundError for a guest not on the node,
    TaskFailed when PVE's task fails.
    """
    check_request(action, name)
    (block,) = await aload_nodes(node)
    async with node_sessions():
        kind = await pve.guest_kind(block, guest)
        before = _snapshots(await pve.list_snapshots(block, kind, guest))
        done = ""
        if action != "list":
            done = await _act(block, kind, guest, action, name or "", description, vmstate,
                              [s.name for s in before])
        after = before if action == "list" else _snapshots(
            await pve.list_snapshots(block, kind, guest))
    result = GuestSnapshotResult(node=node, guest=guest, kind=kind, action=action,
                                 name=name or "", done=done, snapshots=after)
    rows = [{"snapshot": s.name, "time": s.snaptime, "RAM": s.vmstate,
             "description": s.description} for s in after]
    await publish_table(artifact_key("guest-snapshots", node, guest),
                        rows or [{"snapshot": "none", "time": "", "RAM": "", "description": ""}],
                        str(result).splitlines()[0])
    return result


def run_guest_snapshot(**kwargs) -> GuestSnapshotResult:  # noqa: ANN003
    """Run the flow from sync code (the CLI)."""
    return asyncio.run(guest_snapshot(**kwargs))
