"""Migrations through the PVE API: read both sides, snapshots, migrate, remote_migrate, config.

Each task takes the node block whose API it talks to. Reads are safe to retry. A migration
start is never retried (a second start would be a second migration); its UPID is followed by
a task of its own. Mutating tasks check first and treat "already done" as done: a snapshot
that exists, a config that already has the values, a guest that is gone.

remote_migrate's ``target-endpoint`` carries the destination's API token: it is built inside
``start_remote_migrate`` from the destination's block, sent once, and scrubbed from any error.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, Literal

from dapx.core.migration_plan import (DestFacts, MigrationPlan, Occupant, SourceFacts,
                                      is_marked)
from dapx.core.migration_rules import (bridge_pairs, config_changes, pair_list,
                                       remote_endpoint, storage_pairs)
from dapx.errors import DapxError, InputError, NotFoundError, PermanentError
from dapx.tasks.base import dapx_task
from dapx.tasks.pve_guests import power

if TYPE_CHECKING:
    from dapx.blocks.node import ProxmoxNode
    from dapx.transports.pve import PveClient

Kind = Literal["qemu", "lxc"]
TASK_TIMEOUT = 24 * 3600.0
"""Longest a migration or snapshot task is followed before the run gives up on it."""


def _api(node: "ProxmoxNode") -> "PveClient":
    return node.pve_api()


def where_is(api: "PveClient", vmid: int) -> dict[str, Any] | None:
    """The cluster resource of guest ``vmid`` as ``api``'s cluster lists it, or None."""
    return next((g for g in api.guests() if int(g.get("vmid", 0)) == vmid), None)


# -----------------------------------------------------------------------------------------------
# Reading both sides


@dapx_task(name="read-source-guest")
def read_source(source: "ProxmoxNode", vmid: int) -> SourceFacts:
    """Guest ``vmid`` on ``source`` as its API shows it: config, status, lock, HA, snapshots,
    the node's storages and cluster. Raises InputError when the guest is not on that node."""
    api = _api(source)
    found = where_is(api, vmid)
    if found is None or found.get("node") != source.name:
        elsewhere = f" (it is on {found['node']})" if found else ""
        raise InputError(f"guest {vmid} is not on node {source.name}{elsewhere}; check the "
                         "VMID and the source node")
    kind = str(found.get("type"))
    config = api.current_config(source.name, kind, vmid)  # type: ignore[arg-type]
    status = api.guest_status(source.name, kind, vmid)  # type: ignore[arg-type]
    snaps = api.snapshots(source.name, kind, vmid)  # type: ignore[arg-type]
    members = {str(e["name"]) for e in api.cluster_status() if e.get("type") == "node"}
    return SourceFacts(
        node=source.name, vmid=vmid, kind=kind,  # type: ignore[arg-type]
        config={k: str(v) for k, v in config.items() if k != "digest"},
        digest=str(config.get("digest", "")), status=str(status.get("status", "stopped")),
        lock=str(status.get("lock") or config.get("lock") or ""),
        ha_managed=bool((status.get("ha") or {}).get("managed")),
        snapshots=[(str(s["name"]), int(s.get("snaptime", 0))) for s in snaps
                   if s.get("name") != "current"],
        storages={str(s["storage"]): s for s in api.storages(source.name)},
        cluster=frozenset(members | {source.name}))


def _occupant(api: "PveClient", entry: dict[str, Any], vmid: int, mark: str) -> Occupant:
    """A guest holding a VMID; ``marked`` when its description carries ``mark``."""
    kind, node = str(entry.get("type")), str(entry.get("node"))
    try:
        description = api.guest_config(node, kind, vmid).get("description")  # type: ignore[arg-type]
    except NotFoundError:
        description = None
    return Occupant(node=node, kind=kind, name=str(entry.get("name") or ""),
                    status=str(entry.get("status") or "stopped"),
                    lock=str(entry.get("lock") or ""), marked=is_marked(description, mark))


@dapx_task(name="read-destination")
def read_destination(dest: "ProxmoxNode", target_vmid: int, mark: str,
                     want_cpu_models: bool) -> DestFacts:
    """The destination's storages, bridges, the VMIDs its cluster uses (the guest at
    ``target_vmid`` read closer: is it our copy?) and, when asked, its CPU models."""
    api = _api(dest)
    guests: dict[int, Occupant] = {}
    for entry in api.guests():
        vmid = int(entry.get("vmid", 0))
        guests[vmid] = (_occupant(api, entry, vmid, mark) if vmid == target_vmid else
                        Occupant(node=str(entry.get("node")), kind=str(entry.get("type"))))
    models = None
    if want_cpu_models:
        models = frozenset(str(m["name"]) for m in api.cpu_models(dest.name))
    return DestFacts(node=dest.name,
                     storages={str(s["storage"]): s for s in api.storages(dest.name)},
                     bridges=frozenset(str(i["iface"]) for i in
                                       api.network(dest.name, type="any_bridge")),
                     guests=guests, cpu_models=models)


@dapx_task(name="guest-lock")
def guest_lock(api_node: "ProxmoxNode", on: str, kind: Kind, vmid: int) -> str:
    """The lock guest ``vmid`` holds (``create``, ``backup``...), or "" when none."""
    status = _api(api_node).guest_status(on, kind, vmid)
    return str(status.get("lock") or "")


@dapx_task(name="guest-location")
def guest_location(api_node: "ProxmoxNode", vmid: int) -> tuple[str, str] | None:
    """(node, kind) holding ``vmid`` in ``api_node``'s cluster, or None."""
    found = where_is(_api(api_node), vmid)
    return (str(found["node"]), str(found["type"])) if found else None


# -----------------------------------------------------------------------------------------------
# Following tasks


def follow(api: "PveClient", upid: str, what: str) -> dict[str, Any]:
    """Wait (blocking) for task ``upid``; its status. Raises TaskFailed naming ``what`` with
    PVE's last log line when it failed (``WARNINGS: N`` counts as done)."""
    from dapx.errors import TaskFailed

    try:
        return api.wait_task(upid, timeout=TASK_TIMEOUT, warnings_ok=True)
    except TaskFailed as exc:
        raise TaskFailed(f"{what} failed: {exc.exitstatus or 'no exit status'}", upid=upid,
                         exitstatus=exc.exitstatus, log_tail=exc.log_tail) from None


@dapx_task(name="follow-pve-task")
async def follow_task(api_node: "ProxmoxNode", upid: str, what: str) -> list[str]:
    """Follow ``upid`` to its end; the last lines of its log. Raises TaskFailed."""
    api = _api(api_node)
    await asyncio.to_thread(follow, api, upid, what)
    return await asyncio.to_thread(api.task_log, upid, 50)


# -----------------------------------------------------------------------------------------------
# Snapshots (M3)


@dapx_task(name="take-pve-snapshot")
async def take_snapshot(api_node: "ProxmoxNode", on: str, kind: Kind, vmid: int, name: str,
                        description: str) -> bool:
    """Take Proxmox snapshot ``name`` of the guest and follow the task; False when it exists
    already (a retry after it was taken)."""
    api = _api(api_node)
    snaps = await asyncio.to_thread(api.snapshots, on, kind, vmid)
    if any(s.get("name") == name for s in snaps):
        return False
    upid = await asyncio.to_thread(api.create_snapshot, on, kind, vmid, name, description)
    await asyncio.to_thread(follow, api, upid, f"snapshot {name} of guest {vmid} on {on}")
    return True


@dapx_task(name="delete-pve-snapshots")
async def delete_snapshots(api_node: "ProxmoxNode", on: str, kind: Kind, vmid: int,
                           names: list[str]) -> list[str]:
    """Delete the named snapshots one by one; the names deleted (missing ones are skipped)."""
    api = _api(api_node)
    present = {s.get("name") for s in await asyncio.to_thread(api.snapshots, on, kind, vmid)}
    done = []
    for name in names:
        if name not in present:
            continue
        upid = await asyncio.to_thread(api.delete_snapshot, on, kind, vmid, name)
        await asyncio.to_thread(follow, api, upid, f"delete of snapshot {name} of {vmid}")
        done.append(name)
    return done


# -----------------------------------------------------------------------------------------------
# Moves


@dapx_task(name="start-migrate", retries=0)
def start_migrate(source: "ProxmoxNode", plan: MigrationPlan) -> str:
    """POST .../migrate to the destination (a member of the source's cluster); the UPID.
    Local disks go along (``with-local-disks`` for a VM), to the planned storages. Not
    retried."""
    options: dict[str, Any] = {}
    pairs = storage_pairs(plan)
    mapped = any(a != b for a, b in pairs.items())
    if plan.kind == "qemu":
        options["online"] = 1 if plan.online else None
        options["with-local-disks"] = 1 if plan.disks else None
        options["targetstorage"] = pair_list(pairs) if mapped else None
    else:
        options["restart"] = 1 if plan.restart else None
        options["target-storage"] = pair_list(pairs) if mapped else None
    return _api(source).migrate(plan.source, plan.kind, plan.guest, plan.destination,
                                **{k: v for k, v in options.items() if v is not None})


def endpoint_of(dest: "ProxmoxNode") -> str:
    """The destination's proxmox-remote string (holds its API token). Raises InputError when
    its block has no API token or pinned fingerprint."""
    if not dest.api_token_id or dest.api_token_secret is None or not dest.tls_fingerprint:
        raise InputError(f"node {dest.name} has no API token or pinned TLS fingerprint in its "
                         "block: a move to another cluster logs in to its API; set "
                         f"api_token_id/api_token_secret and test the node (dapx node test "
                         f"{dest.name})")
    return remote_endpoint(dest.host, int(dest.api_port or 8006), dest.api_token_id,
                           dest.api_token_secret.get_secret_value(), dest.tls_fingerprint)


@dapx_task(name="start-remote-migrate", retries=0)
def start_remote_migrate(source: "ProxmoxNode", dest: "ProxmoxNode",
                         plan: MigrationPlan) -> str:
    """POST .../remote_migrate with the destination's endpoint, the storage and bridge maps,
    the target VMID; ``delete`` so the source is removed once the target is complete. The
    UPID. Not retried. Errors never carry the token."""
    secret = dest.api_token_secret.get_secret_value() if dest.api_token_secret else ""
    options: dict[str, Any] = {"target-vmid": plan.target_vmid, "delete": 1}
    if plan.online:
        options["online"] = 1
    if plan.restart:
        options["restart"] = 1
    try:
        return _api(source).remote_migrate(
            plan.source, plan.kind, plan.guest, endpoint=endpoint_of(dest),
            target_storage=pair_list(storage_pairs(plan)),
            target_bridge=pair_list(bridge_pairs(plan.nics)), **options)
    except InputError:
        raise
    except DapxError as exc:
        text = str(exc).replace(secret, "***") if secret else str(exc)
        raise PermanentError(text) from None


# -----------------------------------------------------------------------------------------------
# The guest on the destination


@dapx_task(name="apply-guest-changes")
def apply_changes(api_node: "ProxmoxNode", on: str, kind: Kind, vmid: int,
                  plan: MigrationPlan, source_config: dict[str, Any], mark: str | None,
                  new_macs: bool) -> dict[str, str]:
    """Set the planned hardware, bridges, new MACs and the copy mark on guest ``vmid``
    (``PUT .../config`` with the digest just read: PVE refuses rather than overwrites a
    concurrent edit). Returns what changed; nothing when it is done already."""
    api = _api(api_node)
    current = api.guest_config(on, kind, vmid)
    changes = config_changes(current, plan, source_config, mark=mark, new_macs=new_macs)
    if changes:
        api.set_guest_config(on, kind, vmid, digest=current["digest"], **changes)
    return changes


@dapx_task(name="start-guest-after")
async def start_guest(api_node: "ProxmoxNode", on: str, kind: Kind, vmid: int) -> bool:
    """Start the guest unless it runs already (then False); follow the task."""
    return await power(api_node, on, kind, vmid, "start")


@dapx_task(name="stop-own-copy")
async def stop_guest(api_node: "ProxmoxNode", on: str, kind: Kind, vmid: int) -> bool:
    """Stop the guest unless it is stopped already (then False); follow the task."""
    return await power(api_node, on, kind, vmid, "stop")


@dapx_task(name="discard-guest")
async def discard_guest(api_node: "ProxmoxNode", on: str, kind: Kind, vmid: int) -> bool:
    """Destroy guest ``vmid`` on ``on`` and its disks, also those its config does not name yet
    (a half-made copy of this run: a restore allocates volumes before it writes them into the
    config); False when it is not there. Raises GuestLocked (a killed restore's ``create``
    lock), TaskFailed, ApiError."""
    api = _api(api_node)
    try:
        upid = await asyncio.to_thread(api.delete, "nodes", on, kind, vmid, purge=1,
                                       **{"destroy-unreferenced-disks": 1})
    except NotFoundError:
        return False
    await asyncio.to_thread(follow, api, upid, f"removal of guest {vmid} on {on}")
    return True


@dapx_task(name="read-storage-config")
def read_storage_config(api_node: "ProxmoxNode", storage: str) -> dict[str, Any]:
    """Storage ``storage``'s storage.cfg section as ``api_node``'s cluster defines it (``GET
    /storage/{storage}``: type, pool, path...)."""
    return _api(api_node).storage_config(storage)
