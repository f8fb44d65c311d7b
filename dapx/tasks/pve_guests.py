"""Guests through the PVE API: where they are, their config, start, stop, destroy.

Each task takes the node block whose API it talks to (``api_node``) and, where PVE needs it,
the node that holds the guest (``on``): in a cluster any member answers for the others.
Mutating tasks check first and treat "already done" as done, so a retry is safe.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, Literal

from dapx.core.registration import mapped_networks
from dapx.core.resources import ClusterGuest, cluster_guests
from dapx.errors import NotFoundError
from dapx.tasks.base import dapx_task
from dapx.tasks.vzdump import follow

if TYPE_CHECKING:
    from dapx.blocks.node import ProxmoxNode
    from dapx.transports.pve import PveClient

Kind = Literal["qemu", "lxc"]


def _api(node: "ProxmoxNode") -> "PveClient":
    return node.api()  # type: ignore[return-value]


@dapx_task(name="cluster-guests")
def read_cluster_guests(api_node: "ProxmoxNode") -> dict[int, ClusterGuest]:
    """Every guest of ``api_node``'s cluster (``GET /cluster/resources?type=vm``)."""
    return cluster_guests(_api(api_node).guests())


@dapx_task(name="guest-config")
def read_guest_config(api_node: "ProxmoxNode", on: str, kind: Kind, vmid: int) -> dict[str, Any]:
    """The guest's current config with its ``digest`` (``GET .../config``)."""
    return _api(api_node).guest_config(on, kind, vmid)


def config_changes(config: dict[str, Any], bridge_map: dict[str, str],
                   mark: str | None) -> dict[str, str]:
    """What adapting a config changes: mapped bridges, and ``mark`` as the first line of the
    description (kept when it is there already)."""
    values = {k: str(v) for k, v in config.items() if k != "digest"}
    changes = mapped_networks(values, bridge_map)
    description = values.get("description", "")
    if mark and description.split("\n", 1)[0] != mark:
        changes["description"] = mark + ("\n" + description if description else "")
    return changes


@dapx_task(name="adapt-guest-config")
def adapt_guest_config(api_node: "ProxmoxNode", on: str, kind: Kind, vmid: int,
                       bridge_map: dict[str, str], mark: str | None = None) -> dict[str, str]:
    """Map the guest's bridges and mark its description (``PUT .../config`` with the digest
    just read, so PVE refuses rather than overwrites a concurrent edit). Returns what changed;
    nothing when it is done already, so a retry is safe."""
    api = _api(api_node)
    config = api.guest_config(on, kind, vmid)
    changes = config_changes(config, bridge_map, mark)
    if changes:
        api.set_guest_config(on, kind, vmid, digest=config["digest"], **changes)
    return changes


@dapx_task(name="start-guest")
async def start_guest(api_node: "ProxmoxNode", on: str, kind: Kind, vmid: int) -> None:
    """Start the guest unless it runs already; follow the task."""
    api = _api(api_node)
    if (await asyncio.to_thread(api.guest_status, on, kind, vmid)).get("status") == "running":
        return
    upid = await asyncio.to_thread(api.set_guest_power, on, kind, vmid, "start")
    await asyncio.to_thread(follow, api, upid, f"start of guest {vmid} on {on}")


@dapx_task(name="stop-guest")
async def stop_guest(api_node: "ProxmoxNode", on: str, kind: Kind, vmid: int) -> None:
    """Stop the guest unless it is stopped already; follow the task."""
    api = _api(api_node)
    if (await asyncio.to_thread(api.guest_status, on, kind, vmid)).get("status") == "stopped":
        return
    upid = await asyncio.to_thread(api.set_guest_power, on, kind, vmid, "stop")
    await asyncio.to_thread(follow, api, upid, f"stop of guest {vmid} on {on}")


@dapx_task(name="destroy-guest")
async def destroy_guest(api_node: "ProxmoxNode", on: str, kind: Kind, vmid: int) -> bool:
    """Destroy guest ``vmid`` on ``on`` and its disks; False when it did not exist (a retry
    after the guest went). Raises TaskFailed, GuestLocked, ApiError."""
    api = _api(api_node)
    try:
        upid = await asyncio.to_thread(api.destroy_guest, on, kind, vmid)
    except NotFoundError:
        return False
    await asyncio.to_thread(follow, api, upid, f"destroy of guest {vmid} on {on}")
    return True

