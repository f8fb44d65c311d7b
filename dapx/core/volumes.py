"""Where a PVE volume lives on disk: ZFS dataset names and BTRFS subvolume paths.

Follows PVE's storage plugins (and the lab contract): ``local-zfs:vm-100-disk-0`` is the
dataset ``<pool>/vm-100-disk-0``; ``local-btrfs:100/vm-100-disk-0.raw`` is the subvolume
``<path>/images/100/vm-100-disk-0`` holding ``disk.raw``; a container volume
``local-btrfs:101/subvol-101-disk-0.subvol`` is the subvolume
``<path>/images/101/subvol-101-disk-0.subvol``.
"""

from __future__ import annotations

import re

from dapx.core.validate import validate_abs_path, validate_dataset_name, validate_subfolder
from dapx.errors import InputError

_ZFS_VOLNAME = re.compile(r"(?:vm|base|subvol)-[0-9]+-[A-Za-z0-9_.-]+")
_BTRFS_VOLNAME = re.compile(r"(?P<vmid>[0-9]+)/(?P<name>(?:vm|base|subvol)-[0-9]+-"
                            r"[A-Za-z0-9_-]+)\.(?P<fmt>raw|subvol)")


def zfs_dataset(pool: str, volname: str) -> str:
    """The dataset of a zfspool volume: ``rpool/data`` + ``vm-100-disk-0``. Raises InputError."""
    if not _ZFS_VOLNAME.fullmatch(volname):
        raise InputError(f"volume {volname!r} is not a ZFS volume name PVE makes")
    return validate_dataset_name(f"{validate_dataset_name(pool)}/{volname}")


def destination_dataset(pool: str, subfolder: str, name: str) -> str:
    """``pool[/subfolder]/name`` for the replica of one disk. Raises InputError."""
    parts = [validate_dataset_name(pool), validate_subfolder(subfolder), name]
    return validate_dataset_name("/".join(p for p in parts if p))


def btrfs_subvolume(storage_path: str, volname: str) -> str:
    """The subvolume path of a BTRFS volume (the directory ``btrfs send`` works on).

    ``/var/lib/pve/local-btrfs`` + ``100/vm-100-disk-0.raw`` ->
    ``/var/lib/pve/local-btrfs/images/100/vm-100-disk-0``. Raises InputError.
    """
    match = _BTRFS_VOLNAME.fullmatch(volname)
    if not match:
        raise InputError(f"volume {volname!r} is not a BTRFS volume name PVE makes "
                         "(<vmid>/vm-<vmid>-disk-N.raw or .subvol)")
    leaf = match["name"] + (".subvol" if match["fmt"] == "subvol" else "")
    base = validate_abs_path(storage_path.rstrip("/") or "/", "BTRFS storage path")
    return validate_abs_path(f"{base}/images/{match['vmid']}/{leaf}", "BTRFS subvolume")
