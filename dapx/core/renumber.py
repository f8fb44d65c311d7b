"""Give a guest another VMID on the same node: the volumes to rename and the new config.

PVE has no API to renumber a guest. Its volumes carry the VMID in their names
(``vm-100-disk-0``, ``100/vm-100-disk-0.raw``), so renumbering renames each volume on its
storage the way PVE names it (``dapx.core.registration.rename_volume``) and rewrites every
volume id in the config (current, pending and snapshot sections; unused disks, vmstate and
cloud-init drives too). Used to swap a restored guest into place (restore beside, then swap)
and by migrations.

Where a volume lives, per storage type (as PVE's storage plugins lay them out):
- ``zfspool``: the dataset ``<pool>/<volname>`` (``zfs rename``; snapshots follow);
- ``dir``, ``nfs``, ``cifs``: the file or directory ``<path>/images/<volname>``;
- ``btrfs``: the subvolume ``<path>/images/<vmid>/<name>`` (snapshots are ``<subvol>@<snap>``
  beside it and move with it).
Other types (LVM, Ceph RBD, iSCSI...) are refused: dapx cannot rename their volumes.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from dapx.core.guestconfig import (QEMU_DISK_KEYS, LXC_DISK_KEYS, UNUSED_KEYS, ConfigLine,
                                   GuestKind, parse_guest_config, serialise)
from dapx.core.propstring import PropertyString
from dapx.core.registration import rename_volume
from dapx.core.validate import validate_abs_path, validate_vmid
from dapx.core.volumes import btrfs_subvolume, zfs_dataset
from dapx.errors import InputError

PATH_TYPES = ("dir", "nfs", "cifs")
SWAPPABLE_TYPES = ("zfspool", "btrfs", *PATH_TYPES)
_VOLUME_KEYS = frozenset(QEMU_DISK_KEYS + LXC_DISK_KEYS + UNUSED_KEYS + ["vmstate"])


class VolumeMove(BaseModel):
    """One volume renamed on its storage."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    old_volid: str = Field(description="Volume id now.", examples=["local-zfs:vm-100-disk-0"])
    new_volid: str = Field(description="Volume id after.", examples=["local-zfs:vm-9100-disk-0"])
    method: Literal["zfs", "path", "btrfs"] = Field(
        description="zfs: rename a dataset; path: move a file or directory; btrfs: move a "
        "subvolume and its @snapshot siblings.")
    source: str = Field(description="Dataset or path now.", examples=["rpool/data/vm-100-disk-0"])
    target: str = Field(description="Dataset or path after.",
                        examples=["rpool/data/vm-9100-disk-0"])


class RenumberPlan(BaseModel):
    """Everything that changes when guest ``old_vmid`` becomes ``new_vmid`` on its node."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: GuestKind = Field(description="qemu or lxc.")
    old_vmid: int = Field(description="VMID now.", examples=[100])
    new_vmid: int = Field(description="VMID after.", examples=[9100])
    moves: list[VolumeMove] = Field(description="Volumes to rename, in config order.")
    config_text: str = Field(description="The config under its new VMID.")


def _volume_of(key: str, value: str) -> tuple[PropertyString, str | None, str] | None:
    """(parsed value, property holding the volume, volume id) of a config entry, or None when
    it names no storage volume (none, a host path, an ISO image)."""
    props = PropertyString.parse(value)
    prop = "volume" if props.get("volume") else None
    volume = props.get(prop) or ""
    storage, sep, volname = volume.partition(":")
    if not sep or volume.startswith("/") or volname.startswith("iso/") or volume == "none":
        return None
    return props, prop, volume


def volume_location(storage: str, volname: str, vmid: int,
                    storages: dict[str, dict[str, str]]) -> tuple[str, str]:
    """(method, dataset or path) of a volume. Raises InputError for a storage that is not
    defined or whose volumes dapx cannot rename."""
    opts = storages.get(storage)
    if opts is None:
        raise InputError(f"storage {storage!r} (volume {storage}:{volname}) is not in the "
                         "node's storage.cfg")
    kind = opts.get("type", "")
    if kind == "zfspool" and opts.get("pool"):
        return "zfs", zfs_dataset(opts["pool"], volname)
    if kind in PATH_TYPES and opts.get("path"):
        return "path", validate_abs_path(f"{opts['path'].rstrip('/')}/images/{volname}",
                                         "volume path")
    if kind == "btrfs" and opts.get("path"):
        return "btrfs", btrfs_subvolume(opts["path"], volname)
    raise InputError(f"storage {storage!r} is of type {kind or 'unknown'}: dapx can rename "
                     f"guest volumes only on {', '.join(SWAPPABLE_TYPES)} storages "
                     f"(guest {vmid}, volume {storage}:{volname})")


def _move(volid: str, old: int, new: int, storages: dict[str, dict[str, str]]) -> VolumeMove:
    storage, _, volname = volid.partition(":")
    renamed = rename_volume(volname, old, new)
    method, source = volume_location(storage, volname, old, storages)
    _, target = volume_location(storage, renamed, new, storages)
    return VolumeMove(old_volid=volid, new_volid=f"{storage}:{renamed}", method=method,
                      source=source, target=target)


def _renamed_line(line: ConfigLine, moves: dict[str, VolumeMove]) -> ConfigLine:
    if line.key not in _VOLUME_KEYS or line.value is None:
        return line
    found = _volume_of(line.key, line.value)
    if found is None or found[2] not in moves:
        return line
    props, prop, volid = found
    props.set(prop, moves[volid].new_volid)
    ending = line.raw[len(line.raw.rstrip("\r\n")):]
    return ConfigLine(f"{line.key}: {props}{ending}", line.key, str(props))


def plan_renumber(text: str, kind: GuestKind, old_vmid: int, new_vmid: int,
                  storages: dict[str, dict[str, str]]) -> RenumberPlan:
    """The renames and new config for guest ``old_vmid`` (config ``text``) as ``new_vmid``.

    In: the config text, its kind, both VMIDs and the node's storage.cfg sections. Raises
    InputError for a volume on a storage dapx cannot rename, a linked clone, or a volume that
    belongs to another guest (renaming it would take it from that guest).
    """
    validate_vmid(old_vmid)
    validate_vmid(new_vmid)
    if old_vmid == new_vmid:
        raise InputError(f"guest {old_vmid} already has that VMID")
    config = parse_guest_config(text, kind)
    moves: dict[str, VolumeMove] = {}
    for section in config.sections:
        for line in section.lines:
            found = (_volume_of(line.key, line.value)
                     if line.key in _VOLUME_KEYS and line.value is not None else None)
            if found is not None and found[2] not in moves:
                moves[found[2]] = _move(found[2], old_vmid, new_vmid, storages)
    for section in config.sections:
        section.lines = [_renamed_line(line, moves) for line in section.lines]
    return RenumberPlan(kind=kind, old_vmid=old_vmid, new_vmid=new_vmid,
                        moves=list(moves.values()), config_text=serialise(config))
