"""Proxmox snapshots of a guest (S1): names as PVE checks them, and what blocks a rollback.

Names follow PVE's ``pve-configid`` format for ``snapname``: a letter first, then letters,
digits, ``_`` and ``-``, at least 2 and at most 40 characters; ``current`` is reserved.

Rollback on ZFS: PVE's ZFS plugin (``volume_rollback_is_possible``) refuses to roll a disk
back when the disk has any snapshot newer than the target (``zfs rollback`` without ``-r``),
whoever made it: sanoid's ``autosnap_*``, a replication's ``dapx_*``, a newer Proxmox
snapshot. PVE checks each disk in turn, so the product checks every disk first and refuses
with the full list (``rollback_blockers``) instead of letting PVE stop half-way.
"""

from __future__ import annotations

import re

from dapx.core.snapshots import Snapshot, ordered
from dapx.errors import ConflictError, InputError

PVE_SNAPNAME_MAX = 40
RESERVED = ("current",)
_PVE_SNAPNAME = re.compile(r"[A-Za-z][A-Za-z0-9_-]+")


def validate_pve_snapshot_name(name: str) -> str:
    """A Proxmox snapshot name as PVE accepts it. Out: the name. Raises InputError."""
    if not isinstance(name, str) or not _PVE_SNAPNAME.fullmatch(name):
        raise InputError(f"snapshot name {name!r} is invalid for Proxmox: start with a letter, "
                         "then letters, digits, '_' or '-' (at least 2 characters)")
    if len(name) > PVE_SNAPNAME_MAX:
        raise InputError(f"snapshot name {name!r} is {len(name)} characters; Proxmox allows "
                         f"at most {PVE_SNAPNAME_MAX}")
    if name.lower() in RESERVED:
        raise InputError(f"snapshot name {name!r} is reserved by Proxmox; pick another")
    return name


def rollback_blockers(disks: dict[str, list[Snapshot]], target: str) -> dict[str, list[str]]:
    """Per dataset, the snapshots newer than ``target`` that make PVE refuse a ZFS rollback.

    In: each disk dataset's snapshots (any order), the snapshot to roll back to. Out:
    {dataset: [newer snapshot names, oldest first]} for datasets that have any (empty dict:
    nothing blocks). Raises ConflictError naming the datasets that lack ``target``.
    """
    missing = [d for d, snaps in disks.items() if target not in {s.name for s in snaps}]
    if missing:
        raise ConflictError(f"snapshot {target!r} is missing on {', '.join(sorted(missing))}; "
                            "Proxmox cannot roll those disks back to it")
    blockers = {}
    for dataset, snaps in disks.items():
        history = ordered(snaps)
        at = next(i for i, s in enumerate(history) if s.name == target)
        newer = [s.name for s in history[at + 1:]]
        if newer:
            blockers[dataset] = newer
    return blockers


def blocked_rollback_message(node: str, vmid: int, target: str,
                             blockers: dict[str, list[str]], groups: dict[str, str]) -> str:
    """One line: what stops rolling ``vmid`` back to ``target`` and what to do.

    ``groups`` maps a snapshot name to its group (sanoid, replication, ...) for the message.
    """
    parts = []
    for dataset, names in sorted(blockers.items()):
        shown = ", ".join(f"{n} ({groups.get(n, 'other')})" for n in names)
        parts.append(f"{dataset}: {shown}")
    return (f"refusing to roll guest {vmid} on {node} back to {target!r}: Proxmox rolls ZFS "
            f"disks back only to their newest snapshot, and these are newer: "
            f"{'; '.join(parts)}. Delete them first (a replication snapshot is the base of "
            "the next incremental run; a sanoid one is taken again by its policy)")
