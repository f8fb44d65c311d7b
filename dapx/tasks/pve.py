"""The PVE API as tasks: guest snapshots (S1), each followed by its UPID until it ends.

The client (``dapx.transports.pve.PveClient``) is synchronous; calls run in a worker thread
so a flow's other work goes on meanwhile. Mutating tasks are safe to repeat (a retry after a
lost answer finds the work done): create treats an existing snapshot of that name as done,
delete a missing one; the flow checks both before it asks, so a user's mistake is still
refused once, by name.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from dapx.core.pvesnap import validate_pve_snapshot_name
from dapx.errors import NotFoundError
from dapx.tasks.base import dapx_task
from dapx.transports.pve import GuestKind

if TYPE_CHECKING:
    from dapx.blocks.node import ProxmoxNode

TASK_TIMEOUT = 1800.0
"""Seconds a snapshot task may run (a RAM state of a large VM takes minutes)."""


async def _api(node: "ProxmoxNode", method: str, *args: Any, **kwargs: Any) -> Any:
    client = node.pve_api()
    return await asyncio.to_thread(getattr(client, method), *args, **kwargs)


async def _wait(node: "ProxmoxNode", upid: str) -> None:
    client = node.pve_api()
    await asyncio.to_thread(client.wait_task, upid, timeout=TASK_TIMEOUT, poll=0.5)


@dapx_task(name="pve-guest-kind")
async def guest_kind(node: "ProxmoxNode", vmid: int) -> GuestKind:
    """``qemu`` or ``lxc`` for ``vmid`` on ``node`` (from /cluster/resources).

    Raises NotFoundError when the node has no such guest.
    """
    for guest in await _api(node, "guests"):
        if int(guest.get("vmid", 0)) == vmid and guest.get("node") == node.name:
            return "lxc" if guest.get("type") == "lxc" else "qemu"
    raise NotFoundError(f"guest {vmid} is not on node {node.name} (the PVE API lists no such "
                        "guest there); check the VMID and the node")


@dapx_task(name="pve-list-snapshots")
async def list_snapshots(node: "ProxmoxNode", kind: GuestKind, vmid: int) -> list[dict]:
    """The guest's Proxmox snapshots (``current`` left out), oldest first by snaptime."""
    found = await _api(node, "snapshots", node.name, kind, vmid)
    snaps = [s for s in found if s.get("name") != "current"]
    return sorted(snaps, key=lambda s: (int(s.get("snaptime") or 0), s.get("name", "")))


@dapx_task(name="pve-create-snapshot")
async def create_snapshot(node: "ProxmoxNode", kind: GuestKind, vmid: int, name: str,
                          description: str | None, vmstate: bool) -> None:
    """POST .../snapshot and wait for its task; a snapshot of that name already there is
    taken as done (a retry after the first attempt's answer was lost)."""
    validate_pve_snapshot_name(name)
    existing = await _api(node, "snapshots", node.name, kind, vmid)
    if any(s.get("name") == name for s in existing):
        return
    upid = await _api(node, "create_snapshot", node.name, kind, vmid, name,
                      description=description, vmstate=vmstate)
    await _wait(node, upid)


@dapx_task(name="pve-delete-snapshot")
async def delete_snapshot(node: "ProxmoxNode", kind: GuestKind, vmid: int, name: str) -> None:
    """DELETE .../snapshot/{name} and wait; already gone counts as done."""
    validate_pve_snapshot_name(name)
    existing = await _api(node, "snapshots", node.name, kind, vmid)
    if not any(s.get("name") == name for s in existing):
        return
    upid = await _api(node, "delete_snapshot", node.name, kind, vmid, name)
    await _wait(node, upid)


@dapx_task(name="pve-rollback-snapshot")
async def rollback_snapshot(node: "ProxmoxNode", kind: GuestKind, vmid: int, name: str) -> None:
    """POST .../snapshot/{name}/rollback and wait (repeating it changes nothing more)."""
    upid = await _api(node, "rollback_snapshot", node.name, kind, vmid,
                      validate_pve_snapshot_name(name))
    await _wait(node, upid)
