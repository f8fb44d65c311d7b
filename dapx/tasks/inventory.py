"""The guests each PVE node's API lists, for the protection state (X4)."""

from __future__ import annotations

import asyncio

from dapx.blocks.node import ProxmoxNode
from dapx.core.protection import Guest
from dapx.tasks.base import dapx_task

API_TIMEOUT = 15.0


@dapx_task(name="list-guests", retries=1)
async def node_guests(node: ProxmoxNode) -> list[Guest]:
    """The VMs and containers on ``node`` (``GET /cluster/resources?type=vm``), named by the
    node's block name as jobs name them.

    A cluster lists every member's guests on each member: then only those whose PVE node
    name is the block's name are kept. A standalone node's guests are all its own, whatever
    its host name. Raises what the API client raises (node offline, TLS mismatch...)."""
    resources = await asyncio.to_thread(lambda: node.api(timeout=API_TIMEOUT).guests())
    resources = [r for r in resources if "vmid" in r]
    members = {str(r.get("node") or "") for r in resources}
    if len(members) > 1:
        resources = [r for r in resources if r.get("node") == node.name]
    return sorted((Guest(node=node.name, vmid=int(r["vmid"]), name=str(r.get("name") or ""),
                         kind=str(r.get("type") or "qemu")) for r in resources),
                  key=lambda g: g.vmid)
