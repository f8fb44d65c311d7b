"""Forced full resends (ZFS) that never lose the replica: receive beside, then swap.

When a target shares no snapshot with its source, a forced run sends everything again. The new
copy arrives in dapx's scratch dataset beside the old one (``dapx.core.staging``); the old
replica stays whole, and the registered config keeps pointing at it, for the whole transfer.
Only when every disk of the run has arrived are the copies swapped (old renamed aside, new
renamed into place, old destroyed). A run that dies leaves either a ``new.`` copy (reused by
the next forced run, incrementally when it holds a source snapshot) or an ``old.`` copy
(destroyed when its replacement is in place, renamed back when the run died between the two
renames: ``settle_swaps`` does that before anything is planned).

Names here are dataset names; the caller maps its disks to them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from dapx.blocks.node import ProxmoxNode
from dapx.core import staging as names
from dapx.core.snapshots import FullSend, Plan, Snapshot, plan_staged
from dapx.errors import DapxError
from dapx.tasks import zfs

log = logging.getLogger("dapx.resend")


@dataclass(frozen=True)
class Staging:
    """Where each target's new copy would arrive, and which targets swap: every target on
    its own, or (a recursive tree sent at once) only the root, its children moving with it."""

    incoming: dict[str, str]
    """target -> the dataset its new copy is received into"""
    old: dict[str, str]
    """swapping target -> where its old copy waits during the swap"""

    @property
    def roots(self) -> list[str]:
        return list(self.old)

    def all_names(self) -> list[str]:
        """Every dataset to read on the destination: targets, incoming and old copies."""
        return list(self.incoming) + list(self.incoming.values()) + list(self.old.values())

    def parents(self) -> list[str]:
        """The scratch parents the incoming copies need (``<parent>/dapx-resend``)."""
        return sorted({names.staging_parent(t) for t in self.roots})


def staging_for(targets: list[str], tree: bool) -> Staging:
    """The scratch names of ``targets``; ``tree``: they are one tree rooted at the first."""
    if tree:
        root = targets[0]
        return Staging({t: names.incoming_in_tree(t, root) for t in targets},
                       {root: names.replaced_name(root)})
    return Staging({t: names.incoming_name(t) for t in targets},
                   {t: names.replaced_name(t) for t in targets})


async def settle_swaps(dest: ProxmoxNode, staging: Staging, dst: dict[str, zfs.DatasetState],
                       *, dry_run: bool) -> dict[str, zfs.DatasetState]:
    """Settle what a run that died during a swap left (see the module docstring).

    A dry run changes nothing and plans as if it had been done. Returns the destination
    states to plan with (read again when something changed).
    """
    restore, swapped = [], []  # targets whose old copy goes back / goes (swap finished)
    for target, old in staging.old.items():
        action = names.swap_repair(dst[target].exists, dst[old].exists)
        if action == "restore-old":
            restore.append(target)
        elif action == "destroy-old":
            swapped.append(target)
    if not restore and not swapped:
        return dst
    if dry_run:
        settled = dict(dst)
        for target in restore:
            settled[target] = zfs.DatasetState(target, True, dst[staging.old[target]].owner,
                                               dst[staging.old[target]].referenced,
                                               dst[staging.old[target]].snapshots)
        return settled
    for target in restore:
        log.warning("%s: a run died between the renames of a swap; renaming %s back",
                    dest.name, staging.old[target])
        await zfs.rename_back(dest, staging.old[target], target)
    await zfs.mount_trees(dest, swapped)  # the run may have died before its swap's mount
    await zfs.destroy_existing(dest, [staging.old[target] for target in swapped])
    return await zfs.dataset_states(dest, staging.all_names())


def staged_plans(plans: dict[str, Plan], sources: dict[str, list[Snapshot]],
                 staging: Staging, dst: dict[str, zfs.DatasetState],
                 keys: dict[str, str], tree: bool) -> dict[str, Plan]:
    """The transfers into the incoming copies, by disk key: for each disk whose plan
    replaces its target (a tree: every disk, when any of them does).

    ``plans``/``keys``: disk key -> plan / target; ``sources``: disk key -> the source's
    snapshots including the one this run takes.
    """
    replaced = [k for k, p in plans.items() if isinstance(p, FullSend) and p.replace_target]
    chosen = list(plans) if tree and replaced else replaced
    staged = {}
    for key in chosen:
        incoming = dst[staging.incoming[keys[key]]]
        staged[key] = plan_staged(sources[key], incoming.snapshots if incoming.exists else None)
    return staged


async def swap_all(dest: ProxmoxNode, staging: Staging, targets: list[str]) -> str:
    """Swap the new copy of each of ``targets`` (swap roots) into place, then destroy the old
    copies. Returns "" or why it stopped: a failed swap undoes the swaps done before it, so
    the guest never points at a mix of old and new disks."""
    done: list[str] = []
    for target in targets:
        try:
            await zfs.swap_in(dest, target, staging.incoming[target], staging.old[target])
        except DapxError as exc:
            for undo in reversed(done):
                await zfs.swap_in(dest, undo, staging.old[undo], staging.incoming[undo])
            return f"the new copy could not be swapped in ({exc}); the old copy stays in use"
        done.append(target)
    await zfs.destroy_existing(dest, [staging.old[t] for t in targets])
    for parent in sorted({names.staging_parent(t) for t in targets}):
        await zfs.remove_if_empty(dest, parent)
    return ""
