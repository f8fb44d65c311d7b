"""Names of the scratch copies beside a replica that a forced full resend receives into.

A forced resend never destroys a replica before its replacement is complete: the new copy is
received into ``<parent>/dapx-resend/new.<name>`` beside ``<parent>/<name>``; only when every
disk of the run has arrived is each old copy renamed to ``<parent>/dapx-resend/old.<name>``,
the new one renamed into place, and the old one destroyed. ``dapx-resend`` is no volume name
PVE makes (``vm-<vmid>-...``), so PVE never lists it as a disk, and a registered config never
points into it. What a cut run leaves there is dapx's own: a ``new.`` copy is reused (or
replaced) by the next forced run; an ``old.`` copy is destroyed once its replacement is in
place, or renamed back when a run died between the two renames.
"""

from __future__ import annotations

from typing import Literal

from dapx.core.validate import validate_dataset_name
from dapx.errors import InputError

STAGING_DIR = "dapx-resend"
SwapRepair = Literal["none", "destroy-old", "restore-old"]


def _split(target: str) -> tuple[str, str]:
    parent, slash, leaf = validate_dataset_name(target).rpartition("/")
    if not slash:
        raise InputError(f"{target!r} is a whole pool; a replica lives below one")
    return parent, leaf


def staging_parent(target: str) -> str:
    """``rpool/replica/dapx-resend`` for ``rpool/replica/vm-9100-disk-0``."""
    return f"{_split(target)[0]}/{STAGING_DIR}"


def incoming_name(target: str) -> str:
    """Where the new copy of ``target`` is received: ``<parent>/dapx-resend/new.<name>``."""
    return validate_dataset_name(f"{staging_parent(target)}/new.{_split(target)[1]}")


def replaced_name(target: str) -> str:
    """Where the old copy waits during a swap: ``<parent>/dapx-resend/old.<name>``."""
    return validate_dataset_name(f"{staging_parent(target)}/old.{_split(target)[1]}")


def incoming_in_tree(dataset: str, root: str) -> str:
    """The incoming name of ``dataset`` when the whole tree under ``root`` is received at
    once (``syncoid --recursive``): its place below the root's incoming copy."""
    if dataset != root and not dataset.startswith(root + "/"):
        raise InputError(f"{dataset!r} is not in the tree of {root!r}")
    return validate_dataset_name(incoming_name(root) + dataset[len(root):])


def swap_repair(target_exists: bool, old_exists: bool) -> SwapRepair:
    """What a run finds left of an earlier swap, and how it is settled before planning:
    nothing; an old copy whose replacement is in place (destroy it); or an old copy alone,
    the run having died between the two renames (rename it back: it is the replica)."""
    if not old_exists:
        return "none"
    return "destroy-old" if target_exists else "restore-old"
