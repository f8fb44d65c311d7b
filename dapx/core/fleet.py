"""Fleet jobs (X7): one job that protects a set of guests, each guest its own replica run.

Pure decisions, no I/O. In: the job (``FleetJob``), the guest list the PVE API gives
(``GET /cluster/resources?type=vm`` rows) and each guest's config with its node's
storage.cfg. Out: which guests the job means this run (``select_guests``), how each one is
copied (``replica_method``: zfs, btrfs, or why neither), the ``ReplicaJob`` of one guest
(``guest_job``: the destination VMID is ``vmid + vmid_offset``), the names of the node
limits, and the run's summary (``FleetRow``, ``failure_message``).
"""

from __future__ import annotations

import re
from typing import Any, Iterable, Literal, Optional

from pydantic import (AfterValidator, BaseModel, ConfigDict, Field, field_validator,
                      model_validator)
from typing_extensions import Annotated

from dapx.core.guestconfig import GuestConfig, list_disks
from dapx.core.jobspec import NotifyMode, ReplicaJob
from dapx.core.types import Bandwidth, NodeName, PoolName, SubFolder, Vmid
from dapx.core.validate import VMID_MAX, Compression, validate_node_name
from dapx.errors import InputError

Method = Literal["zfs", "btrfs"]
StorageFilter = Literal["replicable", "zfs", "btrfs"]

DEFAULT_NODE_SLOTS = 4
"""Replica runs at once per node and direction (sending, receiving) when the product creates a
node's limit: a node streams a few sends well; the orchestrator only waits on them."""

_PVE_POOL = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]{0,63}")  # pve-poolid
_PVE_TAG = re.compile(r"[a-z0-9_][a-z0-9_\-+.]{0,127}", re.IGNORECASE)  # pve-tag


def _pool_id(value: str) -> str:
    if not _PVE_POOL.fullmatch(value or ""):
        raise ValueError("PVE pool names are letters, digits, '_', '-' and '.' (at most 64)")
    return value


def _tag(value: str) -> str:
    if not _PVE_TAG.fullmatch(value or ""):
        raise ValueError("PVE tags are letters, digits, '_', '-', '+' and '.'")
    return value.lower()


PvePool = Annotated[str, AfterValidator(_pool_id), Field(examples=["production"])]
PveTag = Annotated[str, AfterValidator(_tag), Field(examples=["replicate"])]


class FleetJob(BaseModel):
    """A set of guests replicated node to node, each guest its own zfs-replica or
    btrfs-replica run (by its storage). The set is read from the PVE API at every run."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    routes: dict[NodeName, NodeName] = Field(
        description="Source node -> destination node: the guests of each source node go to "
        "its destination.", examples=[{"pve1": "pve3", "pve2": "pve3"}])
    vmids: list[Vmid] = Field(
        default_factory=list, description="Only these guests (empty: every guest of the "
        "source nodes).", examples=[[100, 101]])
    pool: Optional[PvePool] = Field(default=None, description="Only guests in this PVE pool.")
    tag: Optional[PveTag] = Field(default=None, description="Only guests with this PVE tag.")
    storage: StorageFilter = Field(
        default="replicable", description="replicable: guests whose disks are all on ZFS or "
        "all on BTRFS (others are skipped); zfs or btrfs: only those.", examples=["replicable"])
    vmid_offset: int = Field(
        default=0, ge=0, le=VMID_MAX, description="Destination VMID = source VMID + offset "
        "(0 keeps the VMID).", examples=[10000])
    per_source: Optional[int] = Field(
        default=None, ge=1, le=256, description="At most this many of this job's guests at "
        "once per source node (default: the node's limit).", examples=[4])
    per_destination: Optional[int] = Field(
        default=None, ge=1, le=256, description="At most this many of this job's guests at "
        "once per destination node (default: the node's limit).", examples=[4])
    share_connections: bool = Field(
        default=True, description="One SSH connection per node for the whole run, shared by "
        "every guest's run (at most 8 commands at once on it), instead of one per guest run.")
    dest_pool: PoolName = Field(default="rpool", description="ZFS pool (or BTRFS storage id) "
                                "on the destinations.", examples=["rpool"])
    subfolder: SubFolder = Field(default="replica", description="Dataset under the pool that "
                                 "holds the replicas.", examples=["replica"])
    compression: Compression = Field(default="lz4", description="Compression on the wire.")
    keep: int = Field(default=3, ge=1, le=1000, description="Replica snapshots (versions) to "
                      "keep on each side.", examples=[3])
    register_vm: bool = Field(default=True, description="Register each guest on its "
                              "destination after the copy.")
    bwlimit: Optional[Bandwidth] = Field(default=None, description="Bandwidth limit per guest, "
                                         "e.g. 10M (bytes/s).")
    notify: NotifyMode = Field(default="failure", description="When to send a notification.")

    @field_validator("routes")
    @classmethod
    def _routes(cls, routes: dict[str, str]) -> dict[str, str]:
        if not routes:
            raise ValueError("name at least one source node and its destination")
        same = [s for s, d in routes.items() if s == d]
        if same:
            raise ValueError(f"node {same[0]!r} cannot be its own destination")
        return routes

    @model_validator(mode="after")
    def _list_or_filters(self) -> "FleetJob":
        if len(set(self.vmids)) != len(self.vmids):
            raise ValueError("a VMID is listed twice")
        return self

    def nodes(self) -> list[str]:
        """Every node the job names (sources and destinations), once each."""
        return sorted(set(self.routes) | set(self.routes.values()))


# -----------------------------------------------------------------------------------------------
# The guests a run means


class FleetGuest(BaseModel):
    """One guest of the set, as the API lists it."""

    model_config = ConfigDict(frozen=True)

    vmid: int
    node: str
    kind: Literal["qemu", "lxc"]
    name: str = ""


def _tags(row: dict[str, Any]) -> set[str]:
    return {t.lower() for t in re.split(r"[;, ]+", str(row.get("tags") or "")) if t}


def select_guests(rows: Iterable[dict[str, Any]], job: FleetJob) -> tuple[list[FleetGuest],
                                                                           list[int]]:
    """The guests on the job's source nodes that its filters keep, by node then VMID, and the
    listed VMIDs found on none of them. In: ``/cluster/resources?type=vm`` rows (of one or
    more clusters; a guest seen twice counts once)."""
    wanted = set(job.vmids)
    found: dict[int, FleetGuest] = {}
    for row in rows:
        kind, node = row.get("type"), str(row.get("node", ""))
        if kind not in ("qemu", "lxc") or node not in job.routes or row.get("vmid") is None:
            continue
        vmid = int(row["vmid"])
        if wanted and vmid not in wanted:
            continue
        if job.pool and str(row.get("pool") or "") != job.pool:
            continue
        if job.tag and job.tag not in _tags(row):
            continue
        found[vmid] = FleetGuest(vmid=vmid, node=node, kind=kind,
                                 name=str(row.get("name") or ""))
    missing = sorted(wanted - set(found))
    return sorted(found.values(), key=lambda g: (g.node, g.vmid)), missing


def replica_method(config: GuestConfig, storages: dict[str, dict[str, str]]) -> Method | str:
    """``"zfs"`` when every disk is on a zfspool storage, ``"btrfs"`` when every disk is on a
    btrfs storage; otherwise a sentence saying why neither copies the guest."""
    disks = list_disks(config)
    if not disks:
        return "the guest has no disks"
    kinds = set()
    for disk in disks:
        kind = storages.get(disk.storage or "", {}).get("type", "a host path"
                                                         if disk.storage is None else "unknown")
        kinds.add(kind)
    if kinds == {"zfspool"}:
        return "zfs"
    if kinds == {"btrfs"}:
        return "btrfs"
    return (f"its disks are on {', '.join(sorted(kinds))} storage: only ZFS or BTRFS replicate "
            "node to node (use a replica through PBS)")


def wanted_method(method: str, job: FleetJob) -> bool:
    """True when the job's storage filter keeps a guest whose ``replica_method`` is ``method``."""
    if job.storage == "replicable":
        return method in ("zfs", "btrfs")
    return method == job.storage


def dest_vmid(vmid: int, offset: int) -> int:
    """The destination VMID: ``vmid + offset``. Raises InputError when out of PVE's range."""
    target = vmid + offset
    if target > VMID_MAX:
        raise InputError(f"destination VMID {vmid} + {offset} = {target} is beyond PVE's "
                         f"{VMID_MAX}; lower the job's vmid_offset")
    return target


def guest_job(job: FleetJob, guest: FleetGuest) -> ReplicaJob:
    """The replica job of one guest of the fleet. Raises InputError (bad VMID rule)."""
    from pydantic import ValidationError

    from dapx.core.types import validation_message

    try:
        return ReplicaJob(source=guest.node, guest=guest.vmid,
                          destination=job.routes[guest.node],
                          dest_vmid=dest_vmid(guest.vmid, job.vmid_offset),
                          dest_pool=job.dest_pool, subfolder=job.subfolder,
                          compression=job.compression, keep=job.keep,
                          register_vm=job.register_vm, bwlimit=job.bwlimit, notify="never")
    except ValidationError as exc:
        raise InputError(validation_message(exc)) from None


# -----------------------------------------------------------------------------------------------
# Node limits


def send_limit_name(node: str) -> str:
    """``dapx-node-pve1-send``: replica runs sending from ``node`` at once, across jobs."""
    return f"dapx-node-{validate_node_name(node)}-send"


def receive_limit_name(node: str) -> str:
    """``dapx-node-pve3-receive``: replica runs receiving on ``node`` at once, across jobs."""
    return f"dapx-node-{validate_node_name(node)}-receive"


def job_slots(node_limit: int, job_cap: int | None) -> int:
    """How many of a job's guests may run at once on a node: the node's limit, or the job's
    own cap when lower."""
    return max(1, min(node_limit, job_cap or node_limit))


# -----------------------------------------------------------------------------------------------
# The run's outcome


class FleetRow(BaseModel):
    """One guest's line in the fleet run's table: what is kept of its run, nothing more."""

    guest: int
    node: str
    destination: str = ""
    dest_vmid: int = 0
    method: str = "-"
    outcome: Literal["completed", "failed", "skipped"] = "completed"
    bytes_sent: int = 0
    seconds: float = 0.0
    flow_run: str = ""
    error: str = ""

    @property
    def label(self) -> str:
        """``pve1/100``; ``pve2/*`` for a node whose guests could not be read at all."""
        return f"{self.node}/{self.guest or '*'}"


def failure_message(rows: list[FleetRow]) -> str:
    """One line naming every failed guest and why (for the run's final state)."""
    failed = [r for r in rows if r.outcome == "failed"]
    done = sum(r.outcome == "completed" for r in rows)
    parts = [f"{r.label}: {r.error}" for r in failed]
    return (f"{len(failed)} of {len(failed) + done} guest(s) failed ({done} completed): "
            + "; ".join(parts))


def first_line(text: str, limit: int = 300) -> str:
    """The first line of an error message, cut to ``limit`` characters."""
    line = (text or "").strip().split("\n", 1)[0]
    return line if len(line) <= limit else line[: limit - 1] + "…"
