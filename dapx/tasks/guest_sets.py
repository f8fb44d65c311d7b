"""The guests a fleet job means, read fresh at every run: the PVE API's guest list, then each
guest's config and its node's storage.cfg over SSH (one round trip per node), reduced at once
to how each guest replicates, so no config outlives its node's read.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from dapx.core.fleet import FleetGuest, replica_method
from dapx.core.guestconfig import parse_guest_config
from dapx.tasks.base import dapx_task
from dapx.tasks.guests import STORAGE_CFG, SourceGuest, config_path, read_files

if TYPE_CHECKING:
    from dapx.blocks.node import ProxmoxNode


@dapx_task(name="list-guests")
async def list_guests(node: "ProxmoxNode") -> list[dict[str, Any]]:
    """Every guest ``node``'s API knows (``GET /cluster/resources?type=vm``: the whole cluster
    for a cluster member): rows with vmid, node, type, name, tags, pool. Raises ApiError."""
    return await asyncio.to_thread(lambda: node.pve_api().guests())


@dapx_task(name="guest-storage-kinds")
async def replica_methods(node: "ProxmoxNode", guests: list[FleetGuest]) -> dict[int, str]:
    """For each guest on ``node``: ``"zfs"``, ``"btrfs"``, or why neither can copy it
    (``core.fleet.replica_method``). A guest whose config vanished since the API listed it
    gets that reason. Raises CommandError when the files cannot be read."""
    if not guests:
        return {}
    paths = {g.vmid: config_path(g.kind, g.vmid, g.node) for g in guests}
    files = (await read_files(node, [*paths.values(), STORAGE_CFG])).files
    storages = read_storages(files)
    methods = {}
    for guest in guests:
        text = files.get(paths[guest.vmid])
        if text is None:
            methods[guest.vmid] = f"its config {paths[guest.vmid]} is gone from {node.name}"
            continue
        methods[guest.vmid] = replica_method(parse_guest_config(text, guest.kind), storages)
    return methods


@dapx_task(name="read-guests")
async def read_guests(node: "ProxmoxNode", guests: list[FleetGuest]) -> dict[int, SourceGuest]:
    """The configs of ``guests`` on ``node`` and its storage.cfg, in one round trip; a guest
    whose config is gone is left out. Raises CommandError when the files cannot be read."""
    if not guests:
        return {}
    paths = {g.vmid: config_path(g.kind, g.vmid, g.node) for g in guests}
    files = (await read_files(node, [*paths.values(), STORAGE_CFG])).files
    storages = read_storages(files)
    return {g.vmid: SourceGuest(node.name, g.vmid, g.kind, files[paths[g.vmid]], storages)
            for g in guests if paths[g.vmid] in files}


@dapx_task(name="read-configs")
async def read_configs(node: "ProxmoxNode", paths: list[str]) -> dict[str, str]:
    """{path: text} of the config files among ``paths`` that exist on ``node`` (one round
    trip). Raises CommandError when the files cannot be read."""
    return (await read_files(node, paths)).files if paths else {}


def read_storages(files: dict[str, str]) -> dict[str, dict[str, str]]:
    from dapx.tasks.guests import NodeFiles

    return NodeFiles({STORAGE_CFG: files.get(STORAGE_CFG, "")}).storages()
