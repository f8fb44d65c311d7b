"""The move half of ``vm-migration`` (M1): PVE migrates the guest, dapx checks where it ended.

Inside a cluster: ``POST .../migrate`` (local disks along, to the planned storages; a running
VM live, a running container in restart mode). To another cluster: ``POST .../remote_migrate``
with the destination's endpoint (from its node block), storage and bridge maps, the target
VMID and ``delete`` (the source goes once the target is complete). The task is followed by its
UPID. Afterwards the guest must be on the destination only; a failed move must leave it on the
source: when PVE left a half-made guest on the destination of a remote move, it is removed.
"""

from __future__ import annotations

import logging

from dapx.blocks.node import ProxmoxNode
from dapx.core.migration_plan import MigrationPlan
from dapx.errors import DapxError, PermanentError
from dapx.tasks.migration_api import (discard_guest, follow_task, guest_location,
                                      start_migrate, start_remote_migrate)

log = logging.getLogger("dapx.migration")


async def move_guest(source: ProxmoxNode, dest: ProxmoxNode, plan: MigrationPlan) -> None:
    """Move the guest as planned (cluster or remote); raises TaskFailed with PVE's message
    when PVE fails it, PermanentError when the guest is not where it should be afterwards."""
    what = f"migration of guest {plan.guest} from {plan.source} to {plan.destination}"
    if plan.transport == "migrate":
        upid = start_migrate(source, plan)
        await follow_task(source, upid, what)
    else:
        upid = start_remote_migrate(source, dest, plan)
        try:
            await follow_task(source, upid, what)
        except DapxError:
            await clear_half_made(source, dest, plan)
            raise
    check_moved(source, dest, plan)


def check_moved(source: ProxmoxNode, dest: ProxmoxNode, plan: MigrationPlan) -> None:
    """PermanentError unless the guest is on the destination and gone from the source."""
    there = guest_location(dest, plan.target_vmid)
    if there is None or there[0] != plan.destination:
        raise PermanentError(f"PVE reported the {plan.transport} of guest {plan.guest} done, "
                             f"but VMID {plan.target_vmid} is "
                             f"{'on ' + there[0] if there else 'not'} on {plan.destination}")
    if plan.transport == "remote_migrate":
        left = guest_location(source, plan.guest)
        if left is not None and left[0] == plan.source:
            raise PermanentError(f"guest {plan.guest} is on {plan.destination} now but still "
                                 f"on {plan.source} too; remove one of them by hand")


async def clear_half_made(source: ProxmoxNode, dest: ProxmoxNode, plan: MigrationPlan) -> None:
    """After a failed remote move: when the guest is still on the source and a guest now holds
    the target VMID on the destination (it was free: the plan checked), that is PVE's
    half-made copy; remove it. Never raises (the move's own error is the one to report)."""
    try:
        if guest_location(source, plan.guest) is None:
            return  # the source is gone: whatever is on the destination is the guest now
        there = guest_location(dest, plan.target_vmid)
        if there is not None and there[0] == plan.destination:
            await discard_guest(dest, plan.destination, there[1], plan.target_vmid)  # type: ignore[arg-type]
    except DapxError as exc:
        log.warning("could not remove the half-made guest %s on %s: %s", plan.target_vmid,
                    plan.destination, exc)
