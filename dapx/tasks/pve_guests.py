"""Guests through the PVE API: where they are, their config, start, stop, destroy.

Each task takes the node block whose API it talks to (``api_node``) and, where PVE needs it,
the node that holds the guest (``on``): in a cluster any member answers for the others.
Mutating tasks check first and treat "already done" as done, so a retry is safe.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, Literal

from dapx.core.registration import REPLICA_MARK, is_hazardous, mapped_networks
from dapx.core.resources import ClusterGuest, cluster_guests
from dapx.errors import NotFoundError
from dapx.tasks.base import dapx_task
from dapx.tasks.vzdump import follow

if TYPE_CHECKING:
    from dapx.blocks.node import ProxmoxNode
    from dapx.transports.pve import PveClient

Kind = Literal["qemu", "lxc"]


def _api(node: "ProxmoxNode") -> "PveClient":
    return node.pve_api()


@dapx_task(name="cluster-guests")
def read_cluster_guests(api_node: "ProxmoxNode") -> dict[int, ClusterGuest]:
    """Every guest of ``api_node``'s cluster (``GET /cluster/resources?type=vm``)."""
    return cluster_guests(_api(api_node).guests())


@dapx_task(name="guest-config")
def read_guest_config(api_node: "ProxmoxNode", on: str, kind: Kind, vmid: int) -> dict[str, Any]:
    """The guest's current config with its ``digest`` (``GET .../config``)."""
    return _api(api_node).guest_config(on, kind, vmid)


def config_changes(config: dict[str, Any], kind: str, bridge_map: dict[str, str],
                   mark: str | None, carry_keys: tuple[str, ...] | None = None
                   ) -> tuple[dict[str, str], list[str]]:
    """What adapting a restored config changes: (values to set, keys to delete).

    Bridges mapped; ``mark`` as the first line of the description (any other line reading as
    a replica mark dropped: only the first-line mark the product writes counts). With
    ``carry_keys`` (a replica, not a plain restore): the keys that run code as root or pass
    host devices through are deleted unless named there.
    """
    values = {k: str(v) for k, v in config.items() if k != "digest"}
    changes = mapped_networks(values, bridge_map)
    description = values.get("description", "")
    if mark:
        kept = [ln for ln in description.split("\n")
                if not ln.lstrip("#").strip().lower().startswith(REPLICA_MARK.strip("# :"))]
        wanted = "\n".join([mark, *kept]).rstrip("\n")
        if wanted != description:
            changes["description"] = wanted
    delete = [] if carry_keys is None else [
        k for k, v in values.items() if is_hazardous(kind, k, v) and k not in carry_keys]
    return changes, delete


@dapx_task(name="adapt-guest-config")
def adapt_guest_config(api_node: "ProxmoxNode", on: str, kind: Kind, vmid: int,
                       bridge_map: dict[str, str], mark: str | None = None,
                       carry_keys: tuple[str, ...] | None = None) -> tuple[dict[str, str], list[str]]:
    """Map the guest's bridges, mark its description and (``carry_keys`` not None) delete
    hazardous keys (``PUT .../config`` with the digest just read, so PVE refuses rather than
    overwrites a concurrent edit). Returns (values set, keys deleted); nothing when it is done
    already, so a retry is safe."""
    api = _api(api_node)
    config = api.guest_config(on, kind, vmid)
    changes, delete = config_changes(config, kind, bridge_map, mark, carry_keys)
    if changes or delete:
        extra = {"delete": ",".join(delete)} if delete else {}
        api.set_guest_config(on, kind, vmid, digest=config["digest"], **changes, **extra)
    return changes, delete


async def power(api_node: "ProxmoxNode", on: str, kind: Kind, vmid: int,
                action: Literal["start", "stop", "shutdown"]) -> bool:
    """``action`` the guest unless it is running (start) or stopped (stop) already (then
    False); follow the task. Safe to repeat. The body of the start and stop tasks here and in
    ``migration_api``."""
    done = "running" if action == "start" else "stopped"
    api = _api(api_node)
    if (await asyncio.to_thread(api.guest_status, on, kind, vmid)).get("status") == done:
        return False
    upid = await asyncio.to_thread(api.set_guest_power, on, kind, vmid, action)
    await asyncio.to_thread(follow, api, upid, f"{action} of guest {vmid} on {on}")
    return True


@dapx_task(name="start-guest")
async def start_guest(api_node: "ProxmoxNode", on: str, kind: Kind, vmid: int) -> bool:
    """Start the guest unless it runs already (then False); follow the task."""
    return await power(api_node, on, kind, vmid, "start")


@dapx_task(name="stop-guest")
async def stop_guest(api_node: "ProxmoxNode", on: str, kind: Kind, vmid: int) -> bool:
    """Stop the guest unless it is stopped already (then False); follow the task."""
    return await power(api_node, on, kind, vmid, "stop")


@dapx_task(name="shut-down-guest")
async def shut_down_guest(api_node: "ProxmoxNode", on: str, kind: Kind, vmid: int) -> bool:
    """Shut the guest down cleanly (its OS told, as PVE's Shutdown button) unless it is
    stopped already (then False); follow the task (PVE's fails when the OS does not stop in
    time)."""
    return await power(api_node, on, kind, vmid, "shutdown")


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



@dapx_task(name="source-guest-state", retries=0)
async def guest_state(api_node: "ProxmoxNode", vmid: int, timeout: float = 10.0) -> str:
    """Whether guest ``vmid`` runs anywhere in ``api_node``'s cluster, as its API says:
    ``running on pve1``, ``stopped on pve1``, ``absent``, or ``unreachable: <why>`` (no API
    answer within ``timeout`` seconds, or an API that refuses us). Not retried: a node that is
    down should say so at once."""
    from dapx.errors import DapxError

    try:
        listed = await asyncio.to_thread(lambda: api_node.pve_api(timeout=timeout).guests())
    except DapxError as exc:
        return f"unreachable: {exc}"
    found = [g for g in listed if int(g.get("vmid", 0)) == vmid]
    running = [g for g in found if g.get("status") == "running"]
    if running:
        return f"running on {running[0].get('node')}"
    return f"stopped on {found[0].get('node')}" if found else "absent"
