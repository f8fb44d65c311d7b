"""What PVE would refuse, what may be replaced, and the values the migration APIs take.

Pure. ``plan_migration`` puts a whole plan together (disks, network cards, hardware, the
transport, the target VMID, PVE's own refusals) and raises the first refusal: InputError for
what the user asked wrong, ConflictError for the state of the guests (snapshots, HA, a taken
VMID), GuestLocked for a guest PVE has locked. Each message quotes PVE's reason where PVE has
one and says what to do.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from dapx.core.migration_job import MigrationJob
from dapx.core.migration_plan import (DestFacts, MigrationPlan, Occupant, PlannedNic,
                                      SourceFacts, check_maps, choose_copy_transport,
                                      is_marked, names, plan_disks, plan_hardware, plan_nics)
from dapx.core.propstring import PropertyString
from dapx.core.snapnames import STAMP_FORMAT
from dapx.core.snapshots import Snapshot
from dapx.errors import ConflictError, GuestLocked, InputError

SNAPSHOT_PREFIX = "dapx_migrate_"
"""Prefix of the Proxmox snapshots a migration takes first (M3); only these are pruned."""
LOCAL_RESOURCES = ("hostpci", "usb")
"""Config keys that tie a VM to its host: PVE refuses to migrate it ('VM uses local
resources')."""
_MACS = ("virtio", "e1000", "e1000e", "rtl8139", "vmxnet3", "i82551", "i82557b", "i82559er",
         "ne2k_isa", "ne2k_pci", "pcnet", "e1000-82540em", "e1000-82544gc", "e1000-82545em")


# -----------------------------------------------------------------------------------------------
# Moves: what PVE refuses


def check_move(src: SourceFacts, dest: DestFacts, job: MigrationJob, remote: bool) -> None:
    """Refuse, before anything moves, what PVE would refuse or do otherwise."""
    what = f"guest {src.vmid} on {src.node}"
    if src.lock:
        raise GuestLocked(f"{what} is locked ({src.lock}); wait for that operation to end or "
                          "clear the lock", lock=src.lock)
    if src.ha_managed:
        reason = ("cannot remote-migrate VM that is configured for HA" if remote else
                  "PVE hands the migration of an HA resource to the HA manager")
        raise ConflictError(f"{what} is managed by HA ({reason}); take it out of HA first "
                            f"(ha-manager remove {'vm' if src.kind == 'qemu' else 'ct'}:"
                            f"{src.vmid}) or move it with ha-manager")
    local = sorted(k for k in src.config if k.startswith(LOCAL_RESOURCES))
    if local:
        raise ConflictError(f"{what} uses local resources ({', '.join(local)}): PVE refuses to "
                            "migrate it ('VM uses local resources'); detach them first")
    if remote:
        check_remote_move(src, dest, job)
    elif job.dest_vmid is not None and job.dest_vmid != src.vmid:
        raise InputError(f"a move inside a cluster keeps the VMID ({src.vmid}); leave dest_vmid "
                         "empty, or copy the guest to get a new VMID")
    if src.kind == "lxc" and src.status == "running" and not job.restart:
        raise ConflictError(f"container {src.vmid} on {src.node} is running: PVE cannot move a "
                            "running container ('can't migrate running container without "
                            "--online or --restart'); set restart (it is stopped, moved and "
                            "started again) or stop it first")


def check_remote_move(src: SourceFacts, dest: DestFacts, job: MigrationJob) -> None:
    """A move to another cluster: no snapshots (PVE cannot carry them), a free target VMID."""
    what = f"guest {src.vmid} on {src.node}"
    if src.snapshots:
        raise ConflictError(
            f"{what} has snapshots ({names(n for n, _ in src.snapshots)}): PVE refuses a "
            "remote migration with snapshots ('remote migration with snapshots not supported "
            "yet'); delete them first, or copy the guest instead (mode copy)")
    if job.snapshot_first:
        raise InputError("snapshot_first takes a snapshot, and PVE refuses a remote migration "
                         "of a guest with snapshots; turn snapshot_first off for this move")
    occupant = dest.guests.get(job.target_vmid)
    if occupant is not None:
        raise ConflictError(f"VMID {job.target_vmid} is in use on {occupant.node} ("
                            f"{occupant.kind} {occupant.name or job.target_vmid}); choose "
                            "another dest_vmid (a move never replaces a guest)")


# -----------------------------------------------------------------------------------------------
# Copies: the guest at the target VMID


def check_copy_target(job: MigrationJob, dest: DestFacts) -> tuple[str, Occupant | None]:
    """(none|refresh|replace, the guest at the target VMID). Our earlier copy is refreshed;
    another guest is replaced only with ``force``, only on the destination node, only when it
    is not locked and not running. Raises ConflictError or GuestLocked."""
    occupant = dest.guests.get(job.target_vmid)
    if occupant is None:
        return "none", None
    what = (f"VMID {job.target_vmid} is {occupant.kind} guest "
            f"{occupant.name or job.target_vmid!r} on {occupant.node}")
    if occupant.node != dest.node:
        raise ConflictError(f"{what}, not on {dest.node}; choose another dest_vmid")
    if not (occupant.marked or job.force):
        raise ConflictError(f"{what}; choose another dest_vmid, or copy with force (that guest "
                            "is kept until the new copy is complete, then replaced)")
    if occupant.lock:
        raise GuestLocked(f"{what} and locked ({occupant.lock}); wait for that operation or "
                          "clear the lock", lock=occupant.lock)
    if occupant.status == "running" and not occupant.marked:
        raise ConflictError(f"{what} and running; stop it first (dapx never stops a guest it "
                            "did not make)")
    return ("refresh" if occupant.marked else "replace"), occupant


# -----------------------------------------------------------------------------------------------
# The whole plan


def plan_migration(job: MigrationJob, src: SourceFacts, dest: DestFacts) -> MigrationPlan:
    """The plan for ``job``; raises the first refusal (InputError, ConflictError, GuestLocked)."""
    check_maps(job, dest, src.kind)
    disks = plan_disks(src, dest, job)
    nics = plan_nics(src, dest, job)
    hardware = plan_hardware(src, dest, job)
    plan = MigrationPlan(mode=job.mode, transport="migrate", kind=src.kind, source=src.node,
                         guest=src.vmid, destination=dest.node, target_vmid=job.target_vmid,
                         disks=disks, nics=nics, hardware=hardware)
    if job.snapshot_first:
        check_snapshot_support(src, disks)
    if job.mode == "move":
        remote = dest.node not in src.cluster
        check_move(src, dest, job, remote)
        plan.transport = "remote_migrate" if remote else "migrate"
        plan.online = src.kind == "qemu" and src.status == "running"
        plan.restart = src.kind == "lxc" and src.status == "running"
        return plan
    plan.transport = choose_copy_transport(job, disks)
    plan.replace, occupant = check_copy_target(job, dest)  # type: ignore[assignment]
    if occupant is not None:
        plan.occupant = {"node": occupant.node, "kind": occupant.kind, "name": occupant.name,
                         "status": occupant.status}
    return plan


def check_snapshot_support(src: SourceFacts, disks: list) -> None:  # noqa: ANN001
    """PVE snapshots need every disk on a storage that can snapshot (not raw files)."""
    raw = [d.key for d in disks if d.source_type in ("dir", "nfs", "cifs")
           and not d.volid.endswith(".qcow2")]
    if raw:
        raise InputError(f"snapshot_first: disks {', '.join(raw)} of guest {src.vmid} are raw "
                         "files, which PVE cannot snapshot ('snapshot feature is not "
                         "available'); turn snapshot_first off")


# -----------------------------------------------------------------------------------------------
# Values for PVE's migration calls


def pair_list(pairs: dict[str, str]) -> str:
    """PVE's storage-pair-list / bridge-pair-list: ``a:b,c:d``; ``1`` (each to itself) when
    empty."""
    return ",".join(f"{a}:{b}" for a, b in sorted(pairs.items())) or "1"


def storage_pairs(plan: MigrationPlan) -> dict[str, str]:
    """Source storage -> target storage of every disk."""
    return {d.source_storage: d.target_storage for d in plan.disks}


def bridge_pairs(nics: list[PlannedNic]) -> dict[str, str]:
    """Source bridge -> the bridge its first card goes to (other cards are set afterwards)."""
    pairs: dict[str, str] = {}
    for nic in nics:
        pairs.setdefault(nic.source_bridge, nic.target_bridge)
    return pairs


def remote_endpoint(host: str, port: int, token_id: str, secret: str, fingerprint: str) -> str:
    """PVE's ``proxmox-remote`` value for remote_migrate's ``target-endpoint``. It holds the
    API token: build it at the call, never log, store or show it."""
    return (f"host={host},port={int(port)},apitoken=PVEAPIToken={token_id}={secret},"
            f"fingerprint={fingerprint}")


# -----------------------------------------------------------------------------------------------
# After the copy or move: the config changes


def mac_of(value: str) -> str | None:
    """The MAC address of a network card's config value (``virtio=BC:..``, ``hwaddr=BC:..``)."""
    props = PropertyString.parse(value)
    return next((i.value for i in props.items if i.key in _MACS + ("hwaddr",) and i.value),
                None)


def nic_value(value: str, bridge: str, new_mac: bool) -> str:
    """A network card's config value on ``bridge``; without its MAC when ``new_mac`` (PVE
    then makes a new one)."""
    props = PropertyString.parse(value)
    props.set("bridge", bridge)
    if new_mac:
        for item in list(props.items):
            if item.key == "hwaddr":
                props.items.remove(item)
            elif item.key in _MACS:
                item.value, item.raw = "", item.key
    return str(props)


def config_changes(current: dict[str, Any], plan: MigrationPlan, source: dict[str, Any], *,
                   mark: str | None, new_macs: bool) -> dict[str, str]:
    """What to PUT on the destination guest so it matches the plan: hardware, bridges, new
    MACs (for a copy whose card still has the source's MAC), the copy mark as the
    description's first line. Only what differs from ``current``, so a repeated call changes
    nothing."""
    changes = {k: v for k, v in plan.hardware.items() if str(current.get(k, "")) != v}
    for nic in plan.nics:
        value = str(current.get(nic.key, ""))
        if not value:
            continue
        renew = (new_macs and plan.mode == "copy" and mac_of(value) is not None
                 and mac_of(value) == mac_of(str(source.get(nic.key, ""))))
        if renew or PropertyString.parse(value).get("bridge") != nic.target_bridge:
            changes[nic.key] = nic_value(value, nic.target_bridge, renew)
    description = str(current.get("description") or "")
    if mark and not is_marked(description, mark):
        changes["description"] = mark + ("\n" + description if description else "")
    return changes


# -----------------------------------------------------------------------------------------------
# Snapshot first, keep N (M3)


def snapshot_name(when: datetime) -> str:
    """``dapx_migrate_20250101T120000Z`` (29 characters: PVE allows 40)."""
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return SNAPSHOT_PREFIX + when.astimezone(timezone.utc).strftime(STAMP_FORMAT)


def snapshots_to_delete(snapshots: list[tuple[str, int]], keep: int,
                        protect: str) -> list[str]:
    """Names of our migration snapshots beyond the newest ``keep`` (never ``protect``),
    oldest first; other snapshots are never chosen."""
    from dapx.core.retention import select_for_deletion

    ordered = sorted(snapshots, key=lambda s: (s[1], s[0]))
    snaps = [Snapshot(name=n, guid=i + 1, createtxg=i + 1, creation=t)
             for i, (n, t) in enumerate(ordered)]
    return [s.name for s in select_for_deletion(snaps, keep=keep, prefixes=(SNAPSHOT_PREFIX,),
                                                protect={protect})]


def free_vmid(used: set[int], above: int) -> int:
    """The lowest VMID above ``above`` that nothing uses (for a copy staged beside)."""
    vmid = max(above, 99) + 1
    while vmid in used:
        vmid += 1
    return vmid
