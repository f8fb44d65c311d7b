"""Put a complete new guest in the place of an existing one, never leaving neither.

The new guest was made beside the old one under a free VMID (``staged``). The swap:
1. check the new guest can take the target's VMID (its volumes there, the names free once the
   old guest has moved away) - nothing changes if it cannot;
2. renumber the old guest aside (``target`` -> ``aside``);
3. renumber the new guest into place (``staged`` -> ``target``); if that fails, the old guest
   is renumbered back into place and the error is raised;
4. destroy the old guest (``aside``) through the API.
At every moment the user has the old guest (at ``target`` or ``aside``) or the new one at
``target``. Each step is safe to repeat. Used by restores with ``force``, replicas through
PBS and migrations.
"""

from __future__ import annotations

import logging

from pydantic import BaseModel, Field

from dapx.blocks.node import ProxmoxNode
from dapx.core.guestconfig import GuestKind
from dapx.errors import DapxError
from dapx.tasks.pve_guests import destroy_guest
from dapx.tasks.renumber import check_renumber, renumber_guest

log = logging.getLogger("dapx.swap")


class SwapResult(BaseModel):
    """What a swap did."""

    target: int = Field(description="The VMID the new guest now has.", examples=[9300])
    replaced_kind: str = Field(description="Kind of the guest it replaced.", examples=["qemu"])
    leftover: str = Field(default="", description="The old guest, if destroying it failed: "
                          "its VMID and why (it is set aside, not in the way).")


async def swap_into_place(node: ProxmoxNode, *, new_kind: GuestKind, staged: int,
                          old_kind: GuestKind, target: int, aside: int,
                          keep_old: bool = False) -> SwapResult:
    """Swap guest ``staged`` into VMID ``target`` on ``node`` (the caller holds the sessions
    and the target's lock); ``keep_old`` leaves the old guest at ``aside`` instead of
    destroying it (a failback keeps the original). Raises ConflictError before anything
    changes when the new guest cannot take the target's place, and the renumber errors (with
    the old guest back at ``target``)."""
    old_plan = await check_renumber(node, old_kind, target, aside)
    await check_renumber(node, new_kind, staged, target,
                         moving_away=[m.old_volid for m in old_plan.moves])
    await renumber_guest(node, old_kind, target, aside)
    try:
        await renumber_guest(node, new_kind, staged, target)
    except DapxError:
        await renumber_guest(node, old_kind, aside, target)
        raise
    result = SwapResult(target=target, replaced_kind=old_kind)
    if keep_old:
        return result
    try:
        await destroy_guest(node, node.name, old_kind, aside)
    except DapxError as exc:  # the new guest is in place; the old one only takes space
        log.warning("the replaced guest %s stays as VMID %s on %s: %s", target, aside,
                    node.name, exc)
        result.leftover = f"VMID {aside}: {exc}"
    return result
