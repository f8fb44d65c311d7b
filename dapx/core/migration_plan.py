"""Planning a migration: what PVE's API showed in, a checked plan or a one-line refusal out.

Pure. The flow reads the source guest (config, status, snapshots, its node's storages and
cluster) and the destination (storages, bridges, the VMIDs its cluster uses, CPU models) into
``SourceFacts`` and ``DestFacts``; ``plan_migration`` decides everything before anything
changes: which disk goes to which storage, which network card to which bridge, the hardware
values to set, how the data travels, what happens to a guest already at the target VMID, and
what PVE would refuse (``dapx.core.migration_rules``). Every refusal names the cause and what
to do, in one line.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Literal, Optional

from pydantic import BaseModel, Field

from dapx.core.guestconfig import GuestKind, list_disks, parse_guest_config
from dapx.core.migration_job import MigrationJob
from dapx.core.propstring import PropertyString
from dapx.errors import InputError

Transport = Literal["zfs", "btrfs", "vzdump", "migrate", "remote_migrate"]
Replace = Literal["none", "refresh", "replace"]
"""A copy's target VMID: free; holding this job's earlier copy; holding another guest that
``force`` replaces (beside first, then swapped in)."""

_SIZE = re.compile(r"([0-9]+(?:\.[0-9]+)?)([KMGT]?)")
_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}
_NET = re.compile(r"net[0-9]+")
COPY_MARK = "dapx-replica-of: "
"""First description line of every copy dapx makes (``dapx-replica-of: pve1/100``; in the
config file ``#dapx-replica-of: pve1/100``, the mark registrations of replicas carry too)."""


@dataclass(frozen=True)
class Occupant:
    """A guest that holds a VMID in the destination's cluster."""

    node: str
    kind: str
    name: str = ""
    status: str = "stopped"
    lock: str = ""
    marked: bool = False
    """Its description starts with this job's copy mark: an earlier copy of the same guest."""


@dataclass(frozen=True)
class SourceFacts:
    """The source guest as its node's API shows it."""

    node: str
    vmid: int
    kind: GuestKind
    config: dict[str, str]
    """The current config (``GET .../config?current=1``) without ``digest``."""
    digest: str = ""
    status: str = "stopped"
    lock: str = ""
    ha_managed: bool = False
    snapshots: list[tuple[str, int]] = field(default_factory=list)
    """(name, snaptime) of each snapshot, ``current`` left out."""
    storages: dict[str, dict[str, Any]] = field(default_factory=dict)
    cluster: frozenset[str] = frozenset()
    """Nodes of the source's cluster (the node alone when it stands alone)."""


@dataclass(frozen=True)
class DestFacts:
    """The destination node as its API shows it."""

    node: str
    storages: dict[str, dict[str, Any]]
    bridges: frozenset[str]
    guests: dict[int, Occupant]
    cpu_models: Optional[frozenset[str]] = None


class PlannedDisk(BaseModel):
    """One disk and where it goes."""

    key: str = Field(description="Config key.", examples=["scsi0"])
    volid: str = Field(description="Volume id on the source.",
                       examples=["local-zfs:vm-100-disk-0"])
    source_storage: str = Field(examples=["local-zfs"])
    source_type: str = Field(description="Storage type on the source.", examples=["zfspool"])
    target_storage: str = Field(examples=["local-zfs"])
    target_type: str = Field(description="Storage type on the destination.",
                             examples=["zfspool"])
    size: int = Field(default=0, description="Bytes, from the config's size option.")


class PlannedNic(BaseModel):
    """One network card and its bridge on each side."""

    key: str = Field(examples=["net0"])
    source_bridge: str = Field(examples=["vmbr0"])
    target_bridge: str = Field(examples=["vmbr1"])


class MigrationPlan(BaseModel):
    """Everything decided before anything changes."""

    mode: Literal["copy", "move"]
    transport: Transport
    kind: GuestKind
    source: str
    guest: int
    destination: str
    target_vmid: int
    disks: list[PlannedDisk] = Field(default_factory=list)
    nics: list[PlannedNic] = Field(default_factory=list)
    hardware: dict[str, str] = Field(default_factory=dict,
                                     description="memory, cores, sockets, cpu to set.")
    online: bool = Field(default=False, description="Move a running VM live.")
    restart: bool = Field(default=False, description="Move a running container in restart "
                          "mode.")
    replace: Replace = "none"
    occupant: Optional[dict[str, Any]] = Field(default=None, description="The guest at the "
                                               "target VMID, when there is one.")
    notes: list[str] = Field(default_factory=list)

    @property
    def bytes(self) -> int:
        """What the disks hold (their configured sizes)."""
        return sum(d.size for d in self.disks)

    @property
    def target_storages(self) -> set[str]:
        return {d.target_storage for d in self.disks}


# -----------------------------------------------------------------------------------------------
# Small pure helpers


def disk_size(text: str | None) -> int:
    """``32M``, ``8G``, ``1.5T`` or bytes -> bytes (0 when absent or unreadable)."""
    match = _SIZE.fullmatch((text or "").strip())
    return int(float(match[1]) * _UNITS[match[2]]) if match else 0


def as_config(values: dict[str, Any], kind: GuestKind):  # noqa: ANN201 - a GuestConfig
    """An API config dict as a parsed GuestConfig (description and digest left out)."""
    text = "".join(f"{k}: {v}\n" for k, v in values.items()
                   if k not in ("description", "digest") and "\n" not in str(v))
    return parse_guest_config(text, kind)


def copy_mark(source: str, vmid: int) -> str:
    """``dapx-replica-of: pve1/100``: the description line that makes a copy this job's."""
    return f"{COPY_MARK}{source}/{vmid}"


def is_marked(description: str | None, mark: str) -> bool:
    """True when a description's first line is ``mark``."""
    return (description or "").split("\n", 1)[0].strip() == mark


def names(values: object) -> str:
    """``a, b, c`` (or ``none``) for messages."""
    listed = sorted(str(v) for v in values)  # type: ignore[attr-defined]
    return ", ".join(listed) or "none"


def holds(storage: dict[str, Any], kind: str) -> bool:
    """True when a storage takes VM images (qemu) or container volumes (lxc)."""
    content = str(storage.get("content", "")).split(",")
    return ("images" if kind == "qemu" else "rootdir") in content


# -----------------------------------------------------------------------------------------------
# Disks, network cards, hardware


def target_storage_of(job: MigrationJob, source_storage: str) -> str:
    """Where a disk on ``source_storage`` goes: the map, else ``target_storage``, else the
    same id."""
    return job.storage_map.get(source_storage) or job.target_storage or source_storage


def check_dest_storage(dest: DestFacts, sid: str, kind: str, why: str) -> dict[str, Any]:
    """The destination storage ``sid``; InputError when it is missing, inactive, or holds no
    disks of ``kind``."""
    found = dest.storages.get(sid)
    if found is None:
        raise InputError(f"node {dest.node} has no storage {sid!r} ({why}; it has: "
                         f"{names(dest.storages)}); map it, e.g. storage_map local=local-zfs")
    if not int(found.get("active", 1)):
        raise InputError(f"storage {sid!r} on {dest.node} is not active ({why})")
    if not holds(found, kind):
        want = "VM images" if kind == "qemu" else "container volumes"
        raise InputError(f"storage {sid!r} on {dest.node} does not hold {want} (content "
                         f"{found.get('content') or 'none'}; {why}); choose another")
    return found


def plan_disks(src: SourceFacts, dest: DestFacts, job: MigrationJob) -> list[PlannedDisk]:
    """Every disk with its target storage. Raises InputError for a host path, a storage the
    source does not define, or a target storage the destination lacks or cannot use."""
    planned = []
    for disk in list_disks(as_config(src.config, src.kind)):
        if disk.storage is None:
            raise InputError(f"disk {disk.key} of guest {src.vmid} is the host path "
                             f"{disk.volname}; it cannot be copied or moved, detach it first")
        source = src.storages.get(disk.storage)
        if source is None:
            raise InputError(f"disk {disk.key} uses storage {disk.storage!r}, which "
                             f"{src.node} does not have")
        target = target_storage_of(job, disk.storage)
        found = check_dest_storage(dest, target, src.kind, f"for disk {disk.key}")
        planned.append(PlannedDisk(key=disk.key, volid=disk.volid, source_storage=disk.storage,
                                   source_type=str(source.get("type", "")),
                                   target_storage=target, target_type=str(found.get("type", "")),
                                   size=disk_size(disk.options.get("size"))))
    return planned


def check_maps(job: MigrationJob, dest: DestFacts, kind: str) -> None:
    """Every bridge and storage a map names must exist on the destination (used or not)."""
    for bridge in {*job.bridge_map.values(), *job.nic_bridges.values()}:
        if bridge not in dest.bridges:
            raise InputError(f"node {dest.node} has no bridge {bridge!r} (it has: "
                             f"{names(dest.bridges)}); fix the bridge map")
    for sid in {*job.storage_map.values(), *([job.target_storage] if job.target_storage else [])}:
        check_dest_storage(dest, sid, kind, "named by the storage map")


def plan_nics(src: SourceFacts, dest: DestFacts, job: MigrationJob) -> list[PlannedNic]:
    """Every network card's bridge on the destination. Raises InputError for a card the
    guest does not have, or a bridge the destination lacks."""
    nets = {k: v for k, v in src.config.items() if _NET.fullmatch(k)}
    unknown = sorted(set(job.nic_bridges) - set(nets))
    if unknown:
        raise InputError(f"guest {src.vmid} has no network card {', '.join(unknown)} (it has: "
                         f"{names(nets)})")
    planned = []
    for key in sorted(nets, key=lambda k: int(k[3:])):
        bridge = PropertyString.parse(str(nets[key])).get("bridge")
        if not bridge:
            continue
        target = job.nic_bridges.get(key) or job.bridge_map.get(bridge) or bridge
        if target not in dest.bridges:
            raise InputError(f"node {dest.node} has no bridge {target!r} for {key} (it has: "
                             f"{names(dest.bridges)}); map it, e.g. bridge_map "
                             f"{bridge}={sorted(dest.bridges)[0] if dest.bridges else 'vmbr0'}")
        planned.append(PlannedNic(key=key, source_bridge=bridge, target_bridge=target))
    return planned


def _memory_mib(value: object) -> int | None:
    text = str(value or "")
    text = PropertyString.parse(text).get("current") or PropertyString.parse(text).default or ""
    return int(text) if text.isdigit() else None


def plan_hardware(src: SourceFacts, dest: DestFacts, job: MigrationJob) -> dict[str, str]:
    """The hardware values to set on the destination (only those that differ). Raises
    InputError for a VM-only option on a container or a CPU type the destination lacks."""
    if src.kind == "lxc" and (job.sockets is not None or job.cpu is not None):
        raise InputError(f"guest {src.vmid} is a container: it has no sockets or CPU type to "
                         "change (memory and cores only)")
    if job.cpu is not None and dest.cpu_models is not None and job.cpu not in dest.cpu_models \
            and not job.cpu.startswith("custom-"):
        sample = ", ".join(sorted(dest.cpu_models)[:8])
        raise InputError(f"node {dest.node} has no CPU type {job.cpu!r} (it has e.g. {sample}, "
                         "host)")
    changes = {}
    if job.memory is not None and _memory_mib(src.config.get("memory")) != job.memory:
        changes["memory"] = str(job.memory)
    for key in ("cores", "sockets", "cpu"):
        value = getattr(job, key)
        if value is not None and str(src.config.get(key, "")) != str(value):
            changes[key] = str(value)
    return changes


# -----------------------------------------------------------------------------------------------
# How a copy travels


def choose_copy_transport(job: MigrationJob, disks: list[PlannedDisk]) -> Transport:
    """zfs or btrfs when every disk is on that storage type on both sides (two nodes), else
    vzdump. Raises InputError when the asked transport cannot carry these disks, or the disks
    would need more target storages than it can fill."""
    types = {(d.source_type, d.target_type) for d in disks}
    same_node = job.source == job.destination
    fits = {"zfs": types == {("zfspool", "zfspool")}, "btrfs": types == {("btrfs", "btrfs")}}
    wanted = job.transport
    if wanted == "auto":
        wanted = next((t for t in ("zfs", "btrfs") if fits[t] and not same_node), "vzdump")
    if wanted in fits and not fits[wanted]:
        raise InputError(f"transport {wanted} needs every disk on {wanted} storage on both "
                         f"sides; these go {', '.join(sorted(f'{a} -> {b}' for a, b in types))}"
                         "; use transport auto")
    if wanted in fits and same_node:
        raise InputError(f"transport {wanted} copies between two nodes; a copy on the same "
                         "node goes through vzdump (transport auto)")
    if len({d.target_storage for d in disks}) > 1:
        raise InputError(f"transport {wanted} puts every disk of a copy on one storage; the "
                         f"storage map sends them to {names({d.target_storage for d in disks})}")
    return wanted  # type: ignore[return-value]
