"""Backups and restores through the PVE API: vzdump, restore, a PBS storage's backups.

Every call goes to the API of the node block given (``api_node``) with the node that must do
the work in the path (``/nodes/<holder>/vzdump``): in a cluster PVE forwards it there. PVE
answers a vzdump for a guest that is not on the node in the path with a task that ends OK and
backs up nothing, so callers always pass the node that holds the guest.

Long tasks are followed by their UPID in a worker thread (the PVE client is synchronous).
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Callable, Literal, Optional

from pydantic import BaseModel, Field

from dapx.core.backups import (BackupEntry, BackupRef, TaskOutcome, archive_from_log, backup_entry,
                               find_backup, task_outcome)
from dapx.core.resources import (ClusterGuest, PbsStorage, cluster_guests, pbs_storage,
                                 require_pbs_storage)
from dapx.errors import DapxError, InputError, NotFoundError, TaskFailed
from dapx.tasks.base import dapx_task

if TYPE_CHECKING:
    from dapx.blocks.node import ProxmoxNode
    from dapx.transports.pve import PveClient

TASK_TIMEOUT = 12 * 3600.0
"""Longest a backup or restore task is followed before the run gives up on it."""
LOG_LINES = 1000


class VzdumpRun(BaseModel):
    """One finished vzdump task."""

    upid: str = Field(description="The task's UPID.")
    archive: str = Field(default="", description="PBS snapshot path it logged "
                         "(vm/100/2025-11-26T00:00:00Z); empty if it logged none.")
    warnings: list[str] = Field(default_factory=list, description="Its WARN: lines.")
    seconds: float = Field(description="How long the task ran.")


def _api(node: "ProxmoxNode") -> "PveClient":
    return node.pve_api()


def follow(api: "PveClient", upid: str, what: str) -> tuple[TaskOutcome, list[str]]:
    """Wait for task ``upid`` to stop (blocking); its outcome and log. Raises TaskFailed naming
    ``what`` with PVE's ERROR lines when it failed."""
    try:
        status = api.wait_task(upid, timeout=TASK_TIMEOUT, warnings_ok=True)
    except TaskFailed as exc:
        log = api.task_log(upid, tail=LOG_LINES)
        outcome = task_outcome(exc.exitstatus, log)
        raise TaskFailed(f"{what} failed: {outcome.error}", upid=upid,
                         exitstatus=exc.exitstatus, log_tail=log[-20:]) from None
    log = api.task_log(upid, tail=LOG_LINES)
    return task_outcome(str(status.get("exitstatus", "")), log), log


@dapx_task(name="read-backup-side")
def read_backup_side(api_node: "ProxmoxNode",
                     storage: str) -> tuple[PbsStorage, dict[int, ClusterGuest]]:
    """What a backup run reads from PVE, in one task: the PBS storage as the cluster of
    ``api_node`` defines it (``GET /storage/{id}``) and every guest of that cluster with the
    node holding it (``GET /cluster/resources``). Raises InputError for a storage that does not
    exist or is not of type pbs."""
    section, guests = _at_once(lambda: _storage_section(api_node, storage),
                               lambda: cluster_guests(_api(api_node).guests()))
    return pbs_storage(storage, section), guests


def _storage_section(api_node: "ProxmoxNode", storage: str) -> dict[str, Any]:
    try:
        return _api(api_node).storage_config(storage)
    except NotFoundError:
        raise InputError(f"storage {storage!r} does not exist on {api_node.name}'s cluster") \
            from None


class RestoreSide(BaseModel):
    """What a restore reads from the destination, in one task."""

    storages: dict[str, dict[str, Any]] = Field(description="The node's storages by id.")
    backups: list[BackupEntry] = Field(description="The guest's backups on the PBS storage.")
    guests: dict[int, ClusterGuest] = Field(description="The cluster's guests by VMID.")
    bridges: set[str] = Field(description="The node's bridges.")
    backup: Optional[BackupEntry] = Field(default=None, description="The backup asked for.")
    config: str = Field(default="", description="The guest config inside that backup.")


def _at_once(*calls: Callable[[], Any]) -> list[Any]:
    """Run independent API reads in threads (each makes its own client): one round trip of
    latency instead of several. The first error is raised."""
    with ThreadPoolExecutor(max_workers=len(calls)) as pool:
        return [f.result() for f in [pool.submit(c) for c in calls]]


@dapx_task(name="read-restore-side")
def read_restore_side(api_node: "ProxmoxNode", on: str, storage: str, vmid: int,
                      dest_storage: str, ref: Optional[BackupRef] = None) -> RestoreSide:
    """Node ``on``'s storages (the PBS storage ``storage`` and ``dest_storage`` must be
    there), guest ``vmid``'s backups on ``storage``, the cluster's guests, the node's bridges
    and, for ``ref``, that backup and the config inside it (``GET
    /nodes/{on}/vzdump/extractconfig``). Raises InputError (no such storage, no such
    backup)."""
    storages, items, guests, bridges = _at_once(
        lambda: {str(s["storage"]): s for s in _api(api_node).storages(on)},
        lambda: _content(api_node, on, storage, vmid),
        lambda: cluster_guests(_api(api_node).guests()),
        lambda: {str(i["iface"]) for i in _api(api_node).network(on, type="any_bridge")})
    require_pbs_storage(storages, storage, on)
    if dest_storage not in storages:
        raise InputError(f"node {on} has no storage {dest_storage!r} for the restored disks "
                         f"(it has: {', '.join(sorted(storages))})")
    if isinstance(items, Exception):
        raise items
    side = RestoreSide(storages=storages, guests=guests, bridges=bridges,
                       backups=[e for e in map(backup_entry, items) if e is not None])
    if ref is not None:
        side.backup = find_backup(side.backups, ref)
        side.config = str(_api(api_node).extract_config(on, side.backup.volid) or "")
    return side


def _content(api_node: "ProxmoxNode", on: str, storage: str, vmid: int) -> Any:
    """The storage's backups of ``vmid``, or the error (raised once the storage is checked:
    a storage that is not PBS's gets the clearer refusal)."""
    try:
        return _api(api_node).storage_content(on, storage, content="backup", vmid=vmid) or []
    except DapxError as exc:
        return exc


@dapx_task(name="list-backups")
def list_backups(api_node: "ProxmoxNode", on: str, storage: str,
                 vmid: int | None = None) -> list[BackupEntry]:
    """Guest backups on PBS storage ``storage`` as node ``on`` lists them (``GET
    /nodes/{on}/storage/{storage}/content?content=backup``), optionally of one guest. Raises
    InputError unless ``on`` has that storage and it is of type pbs."""
    api = _api(api_node)
    require_pbs_storage({str(s["storage"]): s for s in api.storages(on)}, storage, on)
    items = api.storage_content(on, storage, content="backup", vmid=vmid)
    return [e for e in (backup_entry(i) for i in items or []) if e is not None]


@dapx_task(name="vzdump", retries=0)
async def run_vzdump(api_node: "ProxmoxNode", holder: str, vmid: int, storage: str,
                     mode: Literal["snapshot", "suspend", "stop"]) -> VzdumpRun:
    """Back guest ``vmid`` up on node ``holder`` to PBS storage ``storage`` and follow the
    task. ``prune-backups keep-all=1``: the job prunes through PBS with its own policy, so the
    storage's policy must not prune behind it. Not retried: a second start would make a second
    backup. Raises TaskFailed with PVE's message, GuestLocked, ApiError."""
    api = _api(api_node)
    started = time.monotonic()
    upid = await asyncio.to_thread(api.vzdump, holder, vmid, storage, mode=mode,
                                   **{"prune-backups": "keep-all=1"})
    outcome, log = await asyncio.to_thread(follow, api, upid,
                                           f"backup of guest {vmid} on {holder}")
    archive = archive_from_log(log) or ""
    if not archive and any("skip external VMs" in line for line in log):
        raise TaskFailed(f"backup of guest {vmid}: {holder} no longer holds it (PVE skipped "
                         "it); run again", upid=upid, exitstatus="OK", log_tail=log[-20:])
    return VzdumpRun(upid=upid, archive=archive, warnings=outcome.warnings,
                     seconds=round(time.monotonic() - started, 3))


@dapx_task(name="start-restore", retries=0)
def start_restore(api_node: "ProxmoxNode", on: str, kind: Literal["qemu", "lxc"], vmid: int,
                  volid: str, storage: str, unique: bool) -> str:
    """Start restoring backup ``volid`` as guest ``vmid`` on node ``on``, disks on ``storage``;
    VMs through ``POST /nodes/{on}/qemu`` with ``archive``, containers through ``POST
    /nodes/{on}/lxc`` with ``ostemplate`` and ``restore=1``. Never with ``force``: the VMID
    must be free. Returns the UPID. Not retried: a half-made guest must be cleaned up, not
    restored over. Raises ApiError (the VMID is taken, a bad storage...)."""
    extra = {"unique": 1} if unique else {}
    return _api(api_node).restore(on, kind, vmid, volid, storage, **extra)


@dapx_task(name="follow-task")
async def follow_task(api_node: "ProxmoxNode", upid: str, what: str) -> list[str]:
    """Wait for task ``upid`` to end; its log. Raises TaskFailed naming ``what`` with PVE's
    message when it failed (``WARNINGS: N`` counts as done)."""
    api = _api(api_node)
    _, log = await asyncio.to_thread(follow, api, upid, what)
    return log
