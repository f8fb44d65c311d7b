"""Job parameters: the typed models flows take and `dapx job create` fills in.

A model is checked when it is built, so a bad name, VMID, bridge map or cron line is refused
before anything runs; the Prefect UI renders each model as a form (Literal fields become
dropdowns). Models refuse unknown fields.
"""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from dapx.core import validate
from dapx.core.types import (Bandwidth, BridgeName, CarryKey, DatasetName, Keep, NodeName,
                             PoolName, StorageId, SubFolder, Vmid)
from dapx.core.validate import Compression
from dapx.errors import InputError

NotifyMode = Literal["always", "failure", "daily", "never"]


class ReplicaJob(BaseModel):
    """One guest replicated from a source node to a destination node (R1, R2, R3)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    source: NodeName = Field(description="Node the guest runs on (a node block name).",
                             examples=["pve1"])
    guest: Vmid = Field(description="VMID of the VM or container to replicate.", examples=[100])
    destination: NodeName = Field(description="Node that receives the replica.",
                                  examples=["pve3"])
    dest_pool: PoolName = Field(default="rpool",
                                description="ZFS pool (or BTRFS storage id) on the destination.",
                                examples=["rpool"])
    subfolder: SubFolder = Field(default="replica",
                                 description="Dataset under the pool that holds the replicas.",
                                 examples=["replica"])
    dest_vmid: Optional[Vmid] = Field(
        default=None, description="VMID on the destination; empty keeps the source VMID.",
        examples=[9100])
    compression: Compression = Field(default="lz4", description="Compression on the wire.",
                                     examples=["lz4"])
    keep: int = Field(default=3, ge=1, le=1000,
                      description="Replica snapshots (versions) to keep on each side.",
                      examples=[3])
    register_vm: bool = Field(default=True,
                           description="Register the guest on the destination after the copy.")
    cpu_host: bool = Field(default=False, description="Set `cpu: host` in the registered config.")
    bridge_map: dict[BridgeName, BridgeName] = Field(
        default_factory=dict, description="Network bridge mapping, source -> destination.",
        examples=[{"vmbr0": "vmbr1"}])
    bwlimit: Optional[Bandwidth] = Field(default=None,
                                         description="Bandwidth limit, e.g. 10M (bytes/s).",
                                         examples=["50M"])
    notify: NotifyMode = Field(default="failure", description="When to send a notification.",
                               examples=["failure"])
    carry_keys: list[CarryKey] = Field(
        default_factory=list,
        description="Config keys the registered replica keeps although they run code as root "
        "or pass host devices through on the destination (hookscript, args, hostpciN, usbN, "
        "serialN/parallelN on host ports; for containers devN and raw lxc.* keys). Dropped "
        "unless named here; the plan and the result list what was dropped.",
        examples=[["hostpci0", "lxc.mount.entry"]])
    remove_dropped_disks: bool = Field(
        default=False, description="Destroy the replica of a disk the guest no longer has, "
        "and this job's snapshots of it on the source. Off: each run reports them.")

    @field_validator("bridge_map", mode="before")
    @classmethod
    def _parse_bridge_map(cls, value: object) -> object:
        if not isinstance(value, str):
            return value
        try:
            return validate.parse_bridge_map(value)
        except InputError as exc:
            raise ValueError(str(exc)) from None

    @model_validator(mode="after")
    def _distinct_nodes(self) -> "ReplicaJob":
        if self.source == self.destination:
            raise ValueError(f"source and destination are both {self.source!r}; "
                             "a replica needs another node")
        return self

    @property
    def target_vmid(self) -> int:
        """VMID the replica gets on the destination."""
        return self.dest_vmid or self.guest


class DatasetJob(BaseModel):
    """A plain dataset (not a guest) replicated to another node (plain dataset mode, R1):
    ``pool/ds`` on the source to ``pool/ds`` on the destination, children too when
    ``recursive``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    source: NodeName = Field(description="Node that holds the dataset (a node block name).",
                             examples=["pve1"])
    dataset: DatasetName = Field(description="Dataset to replicate on the source.",
                                 examples=["rpool/data/share"])
    destination: NodeName = Field(description="Node that receives the replica.",
                                  examples=["pve3"])
    dest_dataset: DatasetName = Field(
        description="Dataset on the destination that receives it (below a pool, never the "
        "pool itself; created by the first run).", examples=["rpool/backup/share"])
    recursive: bool = Field(default=False, description="Also replicate every child dataset.",
                            examples=[True])
    compression: Compression = Field(default="lz4", description="Compression on the wire.",
                                     examples=["lz4"])
    keep: int = Field(default=3, ge=1, le=1000,
                      description="Replica snapshots (versions) to keep on each side.",
                      examples=[3])
    bwlimit: Optional[Bandwidth] = Field(default=None,
                                         description="Bandwidth limit, e.g. 10M (bytes/s).",
                                         examples=["50M"])
    notify: NotifyMode = Field(default="failure", description="When to send a notification.",
                               examples=["failure"])

    @model_validator(mode="after")
    def _safe_target(self) -> "DatasetJob":
        if self.source == self.destination:
            raise ValueError(f"source and destination are both {self.source!r}; "
                             "a replica needs another node")
        if "/" not in self.dest_dataset:
            raise ValueError(f"dest_dataset {self.dest_dataset!r} is a whole pool; a receive "
                             "there would overwrite it, name a dataset below it "
                             f"(e.g. {self.dest_dataset}/backup)")
        return self

    @classmethod
    def from_input(cls, **fields: object) -> "DatasetJob":
        """Build from user input (CLI, API); raises InputError with a one-line message."""
        return _from_input(cls, fields)


BackupMode = Literal["snapshot", "suspend", "stop"]


def _bridge_map(value: object) -> object:
    """A ``vmbr0=vmbr1,...`` string parsed to a dict (dicts pass through); ValueError."""
    if not isinstance(value, str):
        return value
    try:
        return validate.parse_bridge_map(value)
    except InputError as exc:
        raise ValueError(str(exc)) from None


class PbsRetention(BaseModel):
    """Which backups of a guest PBS keeps after each backup (B1): PBS's keep options.

    A rule left empty is not used. At least one rule must be set: PBS keeps every backup when
    given none, which would silently turn retention off. Protected backups are always kept.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    keep_last: Optional[Keep] = Field(default=None, description="Keep the N newest backups.",
                                      examples=[7])
    keep_hourly: Optional[Keep] = Field(default=None, description="Keep the newest backup of "
                                        "each of the last N hours that have one.", examples=[24])
    keep_daily: Optional[Keep] = Field(default=None, description="Keep the newest backup of "
                                       "each of the last N days that have one.", examples=[14])
    keep_weekly: Optional[Keep] = Field(default=None, description="Keep the newest backup of "
                                        "each of the last N ISO weeks that have one.",
                                        examples=[8])
    keep_monthly: Optional[Keep] = Field(default=None, description="Keep the newest backup "
                                         "of each of the last N months that have one.",
                                         examples=[12])
    keep_yearly: Optional[Keep] = Field(default=None, description="Keep the newest backup of "
                                        "each of the last N years that have one.", examples=[3])

    @model_validator(mode="after")
    def _not_empty(self) -> "PbsRetention":
        if not self.counts():
            raise ValueError("retention sets no keep count; PBS would keep every backup. Set "
                             "at least one (e.g. keep_last=7)")
        return self

    def counts(self) -> dict[str, int]:
        """The rules in use: ``{"keep_last": 7, "keep_daily": 14}``."""
        return {k: v for k, v in self.model_dump().items() if v}

    def describe(self) -> str:
        """``keep-last 7, keep-daily 14``."""
        return ", ".join(f"{k.replace('_', '-')} {v}" for k, v in self.counts().items())


class BackupJob(BaseModel):
    """Back guests up to a PBS storage of their cluster and prune each guest's backups (B1)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    node: NodeName = Field(description="Node to ask (a node block name); guests are backed up "
                           "on whichever node of its cluster holds them.", examples=["pve1"])
    guests: list[Vmid] = Field(default_factory=list, description="VMIDs to back up; empty "
                               "backs up every guest on the node.", examples=[[100, 101]])
    storage: StorageId = Field(description="The PVE storage (type pbs) that receives the "
                               "backups.", examples=["pbs"])
    retention: PbsRetention = Field(description="Backups PBS keeps per guest after each run.",
                                    examples=[{"keep_last": 7, "keep_daily": 14}])
    mode: BackupMode = Field(default="snapshot", description="vzdump mode: snapshot (guest "
                             "keeps running), suspend or stop.", examples=["snapshot"])
    pbs_node: Optional[NodeName] = Field(default=None, description="The PBS node block whose "
                                         "datastore the storage uses; empty finds it by the "
                                         "storage's server address.", examples=["pbs1"])
    notify: NotifyMode = Field(default="failure", description="When to send a notification.",
                               examples=["failure"])

    @field_validator("guests")
    @classmethod
    def _no_duplicates(cls, value: list[int]) -> list[int]:
        if len(set(value)) != len(value):
            raise ValueError(f"guests {value} lists a VMID twice")
        return value

    @classmethod
    def from_input(cls, **fields: object) -> "BackupJob":
        """Build from user input (CLI, API); raises InputError with a one-line message."""
        return _from_input(cls, fields)


class RestoreRequest(BaseModel):
    """Restore one PBS backup as a guest on a chosen node, VMID and storage (B2)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    storage: StorageId = Field(description="The PVE storage (type pbs) holding the backup; the "
                               "destination node must have it.", examples=["pbs"])
    backup: str = Field(description="The backup: vm/300/2025-11-26T02:00:00Z, vm/300/latest "
                        "or its volume id pbs:backup/vm/300/...",
                        examples=["vm/300/2025-11-26T02:00:00Z"])
    destination: NodeName = Field(description="Node that gets the guest.", examples=["pve1"])
    dest_vmid: Optional[Vmid] = Field(default=None, description="VMID of the restored guest; "
                                      "empty keeps the backed-up guest's VMID.",
                                      examples=[9300])
    dest_storage: StorageId = Field(description="Storage on the destination for the disks "
                                    "(content images for VMs, rootdir for containers).",
                                    examples=["local-zfs"])
    unique: bool = Field(default=False, description="Give the restored guest new MAC "
                         "addresses (and a new VM generation id).")
    bridge_map: dict[BridgeName, BridgeName] = Field(
        default_factory=dict, description="Network bridge mapping, backup -> destination.",
        examples=[{"vmbr1": "vmbr0"}])
    start: bool = Field(default=False, description="Start the guest once it is restored.")

    _parse_bridge_map = field_validator("bridge_map", mode="before")(_bridge_map)

    @field_validator("backup")
    @classmethod
    def _backup_name(cls, value: str, info) -> str:  # noqa: ANN001 - pydantic's ValidationInfo
        from dapx.core.backups import parse_backup

        try:
            parse_backup(value, info.data.get("storage") or "pbs")
        except InputError as exc:
            raise ValueError(str(exc)) from None
        return value.strip()

    @classmethod
    def from_input(cls, **fields: object) -> "RestoreRequest":
        """Build from user input (CLI, API); raises InputError with a one-line message."""
        return _from_input(cls, fields)


class RecoveryJob(BaseModel):
    """A replica through PBS (R5): back a guest up on its node, restore it on another node
    (any cluster that has the same PBS storage), replacing the previous copy only once the new
    one is complete."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    source: NodeName = Field(description="Node that holds the guest.", examples=["pve3"])
    guest: Vmid = Field(description="VMID of the VM or container.", examples=[300])
    destination: NodeName = Field(description="Node that gets the copy.", examples=["pve1"])
    dest_vmid: Optional[Vmid] = Field(default=None, description="VMID of the copy; empty "
                                      "keeps the guest's VMID.", examples=[9300])
    storage: StorageId = Field(description="PBS storage (PVE storage id) defined on both "
                               "nodes.", examples=["pbs"])
    dest_storage: StorageId = Field(description="Storage on the destination for the copy's "
                                    "disks.", examples=["local"])
    bridge_map: dict[BridgeName, BridgeName] = Field(
        default_factory=dict, description="Network bridge mapping, source -> destination.",
        examples=[{"vmbr1": "vmbr0"}])
    start: bool = Field(default=False, description="Start the copy after each run (it stays "
                        "stopped otherwise).")
    unique: bool = Field(default=False, description="Give the copy new MAC addresses.")
    mode: BackupMode = Field(default="snapshot", description="vzdump mode on the source.",
                             examples=["snapshot"])
    carry_keys: list[CarryKey] = Field(
        default_factory=list,
        description="Config keys the copy keeps although they run code as root or pass host "
        "devices through on the destination (hookscript, args, hostpciN, usbN, serialN/"
        "parallelN on host ports; for containers devN and raw lxc.* keys). Removed from the "
        "restored config unless named here; the result lists what was removed.",
        examples=[["hostpci0"]])
    retention: Optional[PbsRetention] = Field(
        default=None, description="Prune the guest's backups after each run; empty prunes "
        "nothing (the guest's backup group is shared with its backup job, whose retention "
        "then applies).", examples=[{"keep_last": 3}])
    pbs_node: Optional[NodeName] = Field(default=None, description="The PBS node block; empty "
                                         "finds it by the storage's server address.",
                                         examples=["pbs1"])
    notify: NotifyMode = Field(default="failure", description="When to send a notification.",
                               examples=["failure"])

    _parse_bridge_map = field_validator("bridge_map", mode="before")(_bridge_map)

    @property
    def target_vmid(self) -> int:
        """VMID the copy gets on the destination."""
        return self.dest_vmid or self.guest

    @classmethod
    def from_input(cls, **fields: object) -> "RecoveryJob":
        """Build from user input (CLI, API); raises InputError with a one-line message."""
        return _from_input(cls, fields)


def _from_input(model: type[BaseModel], fields: dict[str, object]):  # noqa: ANN202
    from pydantic import ValidationError

    from dapx.core.types import validation_message

    try:
        return model(**fields)
    except ValidationError as exc:
        raise InputError(validation_message(exc)) from None
