"""The ``vm-migration`` job: a guest copied or moved to another node or cluster (M1-M4).

A model is checked when it is built (a bad VMID, node, bridge, storage id, a memory below
PVE's 16 MiB, zero cores, the same node and VMID), so ``dapx job create migration``, ``dapx
migrate`` and Prefect's run form refuse bad input before anything runs. What needs the nodes
(the guest exists, the destination has the bridge, PVE would refuse the move) is checked by
the flow's plan step, still before anything changes (``dapx.core.migration_plan``).
"""

from __future__ import annotations

import re
from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from dapx.core import validate
from dapx.core.types import Bandwidth, BridgeName, NodeName, StorageId, Vmid
from dapx.core.validate import Compression
from dapx.errors import InputError

NotifyMode = Literal["always", "failure", "daily", "never"]
MigrationMode = Literal["copy", "move"]
CopyTransport = Literal["auto", "zfs", "btrfs", "vzdump"]
"""``auto`` follows the storage: ZFS to ZFS and BTRFS to BTRFS through the replica steps,
anything else as a vzdump archive streamed node to node."""

MIN_MEMORY_MIB = 16
"""PVE's minimum for ``memory`` (qemu and lxc alike)."""

_NIC_KEY = re.compile(r"net[0-9]{1,2}")
_CPU_TYPE = re.compile(r"(?:custom-)?[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}")


def validate_nic_key(key: str) -> str:
    """A network device key of a guest config (``net0`` .. ``net31``); InputError otherwise."""
    if not isinstance(key, str) or not _NIC_KEY.fullmatch(key) or int(key[3:]) > 31:
        raise InputError(f"network device {key!r} is not a config key like net0 .. net31")
    return key


def validate_cpu_type(name: str) -> str:
    """A QEMU CPU model name as PVE's ``cpu`` option takes it (``host``, ``x86-64-v3``,
    ``custom-mymodel``); flags are not taken here. InputError otherwise."""
    if not isinstance(name, str) or not _CPU_TYPE.fullmatch(name):
        raise InputError(f"CPU type {name!r} is not a CPU model name (e.g. host, x86-64-v2-AES, "
                         "custom-<name>)")
    return name


def parse_pairs(text: str, what: str, check_key, check_value) -> dict[str, str]:  # noqa: ANN001
    """``"a=b,c=d"`` -> ``{"a": "b", "c": "d"}`` with each side checked; ``""`` -> ``{}``.

    Raises InputError for a malformed pair, a bad name, or a key given twice.
    """
    pairs: dict[str, str] = {}
    for pair in (p.strip() for p in text.split(",")) if text.strip() else ():
        key, sep, value = pair.partition("=")
        if not sep:
            raise InputError(f"{what} entry {pair!r} needs the form old=new")
        key, value = check_key(key.strip()), check_value(value.strip())
        if key in pairs:
            raise InputError(f"{what} names {key} twice; keep one entry for it")
        pairs[key] = value
    return pairs


def _from_text(value: object, what: str, check_key, check_value) -> object:  # noqa: ANN001
    if not isinstance(value, str):
        return value
    try:
        return parse_pairs(value, what, check_key, check_value)
    except InputError as exc:
        raise ValueError(str(exc)) from None


class MigrationJob(BaseModel):
    """One guest copied (the source stays) or moved (PVE's migration) to another node."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    source: NodeName = Field(description="Node the guest is on (a node block name).",
                             examples=["pve1"])
    guest: Vmid = Field(description="VMID of the VM or container.", examples=[100])
    destination: NodeName = Field(description="Node that receives the copy or the guest.",
                                  examples=["pve3"])
    mode: MigrationMode = Field(
        default="copy", description="copy: a copy appears on the destination, the guest stays; "
        "move: PVE migrates the guest (inside its cluster, or remote_migrate to another).",
        examples=["copy"])
    dest_vmid: Optional[Vmid] = Field(
        default=None, description="VMID on the destination; empty keeps the source's VMID. "
        "A move inside a cluster always keeps it.", examples=[9100])
    transport: CopyTransport = Field(
        default="auto", description="How a copy's data travels: auto (by storage), zfs, btrfs "
        "(replica steps) or vzdump (an archive streamed node to node).", examples=["auto"])
    target_storage: Optional[StorageId] = Field(
        default=None, description="Destination storage for every disk the storage map does "
        "not name; empty keeps each disk's storage id.", examples=["local-zfs"])
    storage_map: dict[StorageId, StorageId] = Field(
        default_factory=dict, description="Source storage -> destination storage, per storage "
        "the disks use.", examples=[{"local": "local-zfs"}])
    bridge_map: dict[BridgeName, BridgeName] = Field(
        default_factory=dict, description="Source bridge -> destination bridge, for every "
        "network card on it.", examples=[{"vmbr0": "vmbr1"}])
    nic_bridges: dict[str, BridgeName] = Field(
        default_factory=dict, description="Network card -> destination bridge (wins over the "
        "bridge map).", examples=[{"net1": "vmbr2"}])
    memory: Optional[int] = Field(default=None, ge=MIN_MEMORY_MIB, le=16 * 1024 * 1024,
                                  description="Memory in MiB (PVE's minimum is 16).",
                                  examples=[4096])
    cores: Optional[int] = Field(default=None, ge=1, le=8192, description="CPU cores.",
                                 examples=[4])
    sockets: Optional[int] = Field(default=None, ge=1, le=64,
                                   description="CPU sockets (VMs only).", examples=[1])
    cpu: Optional[str] = Field(default=None, description="CPU type (VMs only), checked against "
                               "the destination's CPU models.", examples=["host"])
    new_macs: bool = Field(default=False, description="Give a copy's network cards new MAC "
                           "addresses (for a copy that runs beside the original).")
    snapshot_first: bool = Field(default=False, description="Take a Proxmox snapshot of the "
                                 "source first (named dapx_migrate_<time>).")
    keep_snapshots: int = Field(default=3, ge=1, le=100, description="How many of those "
                                "snapshots to keep (the newest).", examples=[3])
    start_after: bool = Field(default=False, description="Start the copy (or the moved guest) "
                              "afterwards.")
    restart: bool = Field(default=False, description="Move a running container in restart "
                          "mode (stopped, moved, started again); PVE cannot move it otherwise.")
    force: bool = Field(default=False, description="A copy may replace the guest at the target "
                        "VMID; it is kept until the new copy is complete.")
    compression: Compression = Field(default="lz4", description="Compression on the wire "
                                     "(zfs transport).", examples=["lz4"])
    bwlimit: Optional[Bandwidth] = Field(default=None, description="Bandwidth limit, e.g. 50M "
                                         "(bytes/s).", examples=["50M"])
    notify: NotifyMode = Field(default="failure", description="When to send a notification.",
                               examples=["failure"])

    @field_validator("bridge_map", mode="before")
    @classmethod
    def _bridges(cls, value: object) -> object:
        return _from_text(value, "bridge map", validate.validate_bridge_name,
                          validate.validate_bridge_name)

    @field_validator("storage_map", mode="before")
    @classmethod
    def _storages(cls, value: object) -> object:
        return _from_text(value, "storage map", validate.validate_storage_id,
                          validate.validate_storage_id)

    @field_validator("nic_bridges", mode="before")
    @classmethod
    def _nics(cls, value: object) -> object:
        return _from_text(value, "NIC bridge map", validate_nic_key, validate.validate_bridge_name)

    @field_validator("nic_bridges")
    @classmethod
    def _nic_keys(cls, value: dict[str, str]) -> dict[str, str]:
        try:
            for key in value:
                validate_nic_key(key)
        except InputError as exc:
            raise ValueError(str(exc)) from None
        return value

    @field_validator("cpu")
    @classmethod
    def _cpu(cls, value: Optional[str]) -> Optional[str]:
        try:
            return validate_cpu_type(value) if value is not None else None
        except InputError as exc:
            raise ValueError(str(exc)) from None

    @model_validator(mode="after")
    def _sensible(self) -> "MigrationJob":
        if self.source == self.destination and self.mode == "move":
            raise ValueError(f"source and destination are both {self.source!r}; a move needs "
                             "another node")
        if self.source == self.destination and self.target_vmid == self.guest:
            raise ValueError(f"a copy of guest {self.guest} on {self.source} needs another "
                             "node or another VMID")
        if self.mode == "move" and self.force:
            raise ValueError("force only applies to copies (a move never replaces a guest)")
        return self

    @property
    def target_vmid(self) -> int:
        """VMID of the copy (or of the moved guest) on the destination."""
        return self.dest_vmid or self.guest

    @property
    def hardware(self) -> dict[str, object]:
        """The hardware changes asked for (memory, cores, sockets, cpu), without the empty ones."""
        asked = {"memory": self.memory, "cores": self.cores, "sockets": self.sockets,
                 "cpu": self.cpu}
        return {k: v for k, v in asked.items() if v is not None}

    @classmethod
    def from_input(cls, **fields: object) -> "MigrationJob":
        """Build from user input (CLI, API); raises InputError with a one-line message."""
        from pydantic import ValidationError

        from dapx.core.types import validation_message

        try:
            return cls(**fields)
        except ValidationError as exc:
            raise InputError(validation_message(exc)) from None
