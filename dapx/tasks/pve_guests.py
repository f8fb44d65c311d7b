"""Guests through the PVE API (placeholder until issue 10's module lands: it holds only what
``dapx.flows.swap`` needs; when the ``pbs`` branch is merged, take its ``pve_guests.py``, which
has this task and more).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Literal

from dapx.errors import NotFoundError
from dapx.tasks.base import dapx_task

if TYPE_CHECKING:
    from dapx.blocks.node import ProxmoxNode

TASK_TIMEOUT = 12 * 3600.0

Kind = Literal["qemu", "lxc"]


@dapx_task(name="destroy-guest")
async def destroy_guest(api_node: "ProxmoxNode", on: str, kind: Kind, vmid: int) -> bool:
    """Destroy guest ``vmid`` on ``on`` and its disks; False when it did not exist (a retry
    after the guest went). Raises TaskFailed, GuestLocked, ApiError."""
    api = api_node.api()
    try:
        upid = await asyncio.to_thread(api.destroy_guest, on, kind, vmid)  # type: ignore[union-attr]
    except NotFoundError:
        return False
    await asyncio.to_thread(api.wait_task, upid, timeout=TASK_TIMEOUT, warnings_ok=True)
    return True
