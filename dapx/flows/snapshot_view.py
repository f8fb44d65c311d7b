"""``snapshot-view``: every snapshot of every guest in one view, grouped (S3).

Shape of a run: the node blocks to read (one node, or every PVE node with ``all_nodes``)
and the replica jobs (deployments tagged ``dapx-job``); then ONE listing command per node
(``dapx.core.snapview``: every ZFS snapshot, BTRFS snapshot, storage.cfg and guest config),
all nodes at once, destinations of the jobs included. Pure steps then group each guest's
snapshots (Proxmox, sanoid, syncoid, replication, other) with time, used and referenced
size, and mark which replica destinations hold the same snapshot, matched by GUID (BTRFS:
received UUID). The result is a flow result, a table artifact and ``dapx snapshot list``.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Optional

from prefect import flow
from pydantic import BaseModel, Field

from dapx.flows import KEPT_RESULTS
from dapx.blocks.manage import aload_nodes, list_nodes
from dapx.core.btrfs_argv import snapshots_of
from dapx.core.jobspec import ReplicaJob
from dapx.core.snapview import (GROUPS, GuestDiskPlace, NodeListing, btrfs_identity,
                                classify, guest_config, guest_disks)
from dapx.core.types import NodeName, Vmid
from dapx.core.units import utc_time
from dapx.errors import DapxError, InputError
from dapx.flows.btrfs_replica import btrfs_disks, btrfs_storage
from dapx.flows.replica import zfs_disks
from dapx.tasks.guests import SourceGuest
from dapx.tasks.jobs import JobRef, replica_jobs
from dapx.tasks.snaplist import list_node_snapshots
from dapx.tasks.ssh import node_sessions
from dapx.ui_extensions.artifacts import artifact_key, human_bytes, publish_table


class SnapshotEntry(BaseModel):
    """One snapshot name of a guest, over the disks that have it."""

    name: str = Field(description="Snapshot name (after '@').")
    group: str = Field(description="proxmox, sanoid, syncoid, replication or other.")
    creation: int = Field(default=0, description="Creation time, Unix seconds (earliest disk).")
    used: Optional[int] = Field(default=None, description="Bytes only it holds (sum of disks; "
                                "unknown on BTRFS).")
    referenced: Optional[int] = Field(default=None, description="Bytes it refers to (sum).")
    disks: list[str] = Field(default_factory=list, description="Disks that have it.")
    held_by: list[str] = Field(default_factory=list, description="Replica destinations that "
                               "hold the same snapshot (same GUID) of every such disk.")


class ReplicaState(BaseModel):
    """A replica job of the guest and the newest snapshot its destination shares."""

    job: str
    destination: str
    common: Optional[str] = Field(default=None, description="Newest snapshot shared by every "
                                  "disk, if any.")
    note: str = ""


class GuestSnapshots(BaseModel):
    """Every snapshot of one guest on one node."""

    node: str
    guest: int
    kind: str
    name: str = ""
    disks: list[str] = Field(default_factory=list, description="key=where, per disk.")
    snapshots: list[SnapshotEntry] = Field(default_factory=list)
    replicas: list[ReplicaState] = Field(default_factory=list)

    def group(self, group: str) -> list[SnapshotEntry]:
        return [s for s in self.snapshots if s.group == group]


class SnapshotView(BaseModel):
    """The view: guests (with their snapshots) on the nodes read, and notes."""

    nodes: list[str] = Field(default_factory=list)
    guests: list[GuestSnapshots] = Field(default_factory=list)
    notes: list[str] = Field(default_factory=list)

    def __str__(self) -> str:
        lines = []
        for g in self.guests:
            lines.append(f"guest {g.guest} ({g.kind} {g.name}) on {g.node}: "
                         f"{', '.join(g.disks) or 'no disks'}")
            for r in g.replicas:
                lines.append(f"  replica {r.job} -> {r.destination}: common "
                             f"{r.common or 'none'}{' (' + r.note + ')' if r.note else ''}")
            for group in GROUPS:
                for s in g.group(group):
                    size = "-" if s.used is None else human_bytes(s.used)
                    held = f" on {','.join(s.held_by)}" if s.held_by else ""
                    lines.append(f"  {group:<11} {s.name:<44} {utc_time(s.creation)} "
                                 f"used {size}{held}")
        return "\n".join(lines + [f"note: {n}" for n in self.notes]) or "no guests"

    def rows(self) -> list[dict]:
        return [{"node": g.node, "guest": g.guest, "group": s.group, "snapshot": s.name,
                 "time": utc_time(s.creation), "used": "-" if s.used is None else s.used,
                 "referenced": "-" if s.referenced is None else s.referenced,
                 "disks": ", ".join(s.disks), "held by": ", ".join(s.held_by) or "-"}
                for g in self.guests for s in g.snapshots]


# -----------------------------------------------------------------------------------------------
# Pure steps


@dataclass
class DiskSnap:
    name: str
    guid: int
    createtxg: int
    creation: int
    used: Optional[int]
    referenced: Optional[int]


def disk_snapshots(listing: NodeListing, place: GuestDiskPlace) -> list[DiskSnap]:
    """The snapshots of one disk, oldest first."""
    if place.kind == "zfs":
        return [DiskSnap(s.name, s.guid, s.createtxg, s.creation, s.used, s.referenced)
                for s in listing.zfs.get(place.location, [])]
    if place.kind != "btrfs":
        return []
    mount = next(m for m in listing.btrfs if m.mount == place.mount)
    prefix = place.location + "@"
    found = [DiskSnap(s.path[len(prefix):], btrfs_identity(s), s.cgen, mount.otimes.get(s.id, 0),
                      None, None)
             for s in mount.subvolumes
             if s.path.startswith(prefix) and "/" not in s.path[len(prefix):]]
    return sorted(found, key=lambda s: (s.createtxg, s.name))


def build_guest(node: str, listing: NodeListing, vmid: int,
                held: dict[str, dict[str, set[int]]]) -> GuestSnapshots:
    """One guest's view; ``held`` maps destination -> disk key -> GUIDs it holds."""
    config = guest_config(listing, vmid)
    places = guest_disks(listing, vmid)
    proxmox = set(config.snapshot_names)
    entries: dict[str, SnapshotEntry] = {}
    holders: dict[str, dict[str, bool]] = {}
    for place in places:
        for snap in disk_snapshots(listing, place):
            entry = entries.setdefault(snap.name, SnapshotEntry(
                name=snap.name, group=classify(snap.name, proxmox), creation=snap.creation))
            entry.creation = min(entry.creation or snap.creation, snap.creation or entry.creation)
            entry.used = _add(entry.used, snap.used, len(entry.disks))
            entry.referenced = _add(entry.referenced, snap.referenced, len(entry.disks))
            entry.disks.append(place.key)
            for dest, disks in held.items():
                ok = snap.guid in disks.get(place.key, set())
                holders.setdefault(snap.name, {})[dest] = \
                    holders.get(snap.name, {}).get(dest, True) and ok
    for name, entry in entries.items():
        entry.held_by = sorted(d for d, ok in holders.get(name, {}).items() if ok)
    for name in proxmox - set(entries):  # a Proxmox snapshot of guests on other storage
        entries[name] = SnapshotEntry(name=name, group="proxmox", creation=int(
            next(s for s in config.sections if s.name == name).get("snaptime") or 0))
    ordered_entries = sorted(entries.values(), key=lambda e: (GROUPS.index(e.group),
                                                              e.creation, e.name))
    return GuestSnapshots(node=node, guest=vmid, kind=config.kind,
                          name=config.get("name") or config.get("hostname") or "",
                          disks=[f"{p.key}={p.location}" for p in places],
                          snapshots=ordered_entries)


def _add(total: Optional[int], value: Optional[int], count: int) -> Optional[int]:
    if value is None or (total is None and count):
        return None
    return (total or 0) + value


def held_by_job(ref: JobRef, source: NodeListing, dest: NodeListing, node: str
                ) -> tuple[dict[str, set[int]], ReplicaState]:
    """For one guest replica job: disk key -> GUIDs the destination holds, and its state."""
    job: ReplicaJob = ref.job  # type: ignore[assignment]
    state = ReplicaState(job=ref.name, destination=job.destination)
    kind, text = source.configs[job.guest]
    guest = SourceGuest(node, job.guest, kind, text, source.storages)  # type: ignore[arg-type]
    held: dict[str, set[int]] = {}
    commons: list[Optional[str]] = []
    try:
        if ref.flow == "btrfs-replica":
            dest_storages = dest.storages
            sid = btrfs_storage(dest_storages, job.dest_pool, job.destination)
            for disk in btrfs_disks(guest, job, dest_storages, sid):
                mount = next((m for m in dest.btrfs if m.mount == disk.dest_mount), None)
                snaps = snapshots_of(mount.subvolumes, disk.received_rel, received=True) \
                    if mount else []
                held[disk.key] = {s.guid for s in snaps}
        else:
            for disk in zfs_disks(guest, job):
                held[disk.key] = {s.guid for s in dest.zfs.get(disk.target, [])}
    except DapxError as exc:
        state.note = str(exc)
        return {}, state
    for place in guest_disks(source, job.guest):
        snaps = disk_snapshots(source, place)
        shared = [s.name for s in snaps if s.guid in held.get(place.key, set())]
        commons.append(shared[-1] if shared else None)
    state.common = commons[0] if commons and all(c == commons[0] for c in commons) else None
    if commons and state.common is None and any(commons):
        state.note = "disks share different snapshots"
    return held, state


# -----------------------------------------------------------------------------------------------
# The flow


async def _pve_nodes(node: Optional[str], all_nodes: bool) -> list[str]:
    if all_nodes:
        rows = await asyncio.to_thread(list_nodes)
        return [r["name"] for r in rows if r["kind"] == "pve"]
    if not node:
        raise InputError("name a node (--node), or ask for every node (--all-nodes)")
    return [node]


def _relevant(jobs: list[JobRef], nodes: list[str], guest: Optional[int]) -> list[JobRef]:
    return [j for j in jobs if j.flow in ("zfs-replica", "btrfs-replica")
            and j.job.source in nodes and (guest is None or j.job.guest == guest)]


async def read_view(node: Optional[str], guest: Optional[int], all_nodes: bool) -> SnapshotView:
    """Read every listing (one command per node, at once) and build the view."""
    names = await _pve_nodes(node, all_nodes)
    refs, notes = await replica_jobs()
    jobs = _relevant(refs, names, guest)
    wanted = sorted(set(names) | {j.job.destination for j in jobs})
    blocks = {b.name: b for b in await aload_nodes(*wanted)}
    async with node_sessions():
        listed = await asyncio.gather(*(list_node_snapshots(blocks[n]) for n in wanted),
                                      return_exceptions=True)
    listings: dict[str, NodeListing] = {}
    for name, found in zip(wanted, listed):
        if isinstance(found, BaseException):
            if not isinstance(found, DapxError) or name in names:
                raise found
            notes.append(f"{name}: {found}")
            continue
        listings[name] = found
    return build_view(names, guest, listings, jobs, notes)


def build_view(names: list[str], guest: Optional[int], listings: dict[str, NodeListing],
               jobs: list[JobRef], notes: list[str]) -> SnapshotView:
    """The view from the listings (pure). Raises InputError when ``guest`` is on none."""
    view = SnapshotView(nodes=names, notes=notes)
    for name in names:
        listing = listings[name]
        vmids = [guest] if guest is not None else sorted(listing.configs)
        for vmid in vmids:
            if vmid not in listing.configs:
                continue
            held: dict[str, dict[str, set[int]]] = {}
            states: list[ReplicaState] = []
            for ref in jobs:
                if ref.job.source != name or ref.job.guest != vmid:
                    continue
                dest = listings.get(ref.job.destination)
                if dest is None:
                    states.append(ReplicaState(job=ref.name, destination=ref.job.destination,
                                               note="destination could not be read"))
                    continue
                found, state = held_by_job(ref, listing, dest, name)
                merged = held.setdefault(ref.job.destination, {})
                for key, guids in found.items():  # two jobs to one node: either copy counts
                    merged[key] = merged.get(key, set()) | guids
                states.append(state)
            entry = build_guest(name, listing, vmid, held)
            entry.replicas = states
            view.guests.append(entry)
    if guest is not None and not view.guests:
        raise InputError(f"guest {guest} is on none of: {', '.join(names)}")
    return view


@flow(name="snapshot-view", log_prints=False, **KEPT_RESULTS)
async def snapshot_view(node: Optional[NodeName] = None, guest: Optional[Vmid] = None,
                        all_nodes: bool = False) -> SnapshotView:
    """S3: every snapshot of guest ``guest`` (every guest when empty) on node ``node`` (every
    PVE node with ``all_nodes``), grouped, with sizes and which replica destinations hold
    each one. One listing command per node. Leaves a table artifact.

    Raises InputError for no node, an unknown node or a guest on none of the nodes.
    """
    view = await read_view(node, guest, all_nodes)
    key = artifact_key("snapshots", "all" if all_nodes else node, guest or "all")
    await publish_table(key, view.rows() or [{"snapshot": "none"}],
                        f"{sum(len(g.snapshots) for g in view.guests)} snapshots of "
                        f"{len(view.guests)} guest(s) on {', '.join(view.nodes)}")
    return view


def run_snapshot_view(**kwargs) -> SnapshotView:  # noqa: ANN003
    """Run the flow from sync code (the CLI)."""
    return asyncio.run(snapshot_view(**kwargs))
