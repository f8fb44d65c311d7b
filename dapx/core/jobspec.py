"""Job parameters: the typed models flows take and `dapx job create` fills in.

A model is checked when it is built, so a bad name, VMID, bridge map or cron line is refused
before anything runs; the Prefect UI renders each model as a form (Literal fields become
dropdowns). Models refuse unknown fields.
"""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from dapx.core import validate
from dapx.core.types import (Bandwidth, BridgeName, CarryKey, DatasetName, NodeName, PoolName,
                             SubFolder, Vmid)
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


def _from_input(model: type[BaseModel], fields: dict[str, object]):  # noqa: ANN202
    from pydantic import ValidationError

    from dapx.core.types import validation_message

    try:
        return model(**fields)
    except ValidationError as exc:
        raise InputError(validation_message(exc)) from None
