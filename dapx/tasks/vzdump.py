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
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, Field

from dapx.core.backups import BackupEntry, TaskOutcome, archive_from_log, backup_entry, task_outcome
from dapx.core.resources import PbsStorage, pbs_storage
from dapx.errors import NotFoundError, TaskFailed
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
    return node.api()  # type: ignore[return-value]


def follow(api: "PveClient", upid: str, what: str) -> tuple[TaskOutcome, list[str]]:
    """Wait for task ``upid`` to stop (blocking); its outcome and log. Raises TaskFailed naming
    ``what`` with PVE's ERROR lines when it failed."""
    try:
        api.wait_task(upid, timeout=TASK_TIMEOUT, warnings_ok=True)
    except TaskFailed as exc:
        log = api.task_log(upid, tail=LOG_LINES)
        outcome = task_outcome(exc.exitstatus, log)
        raise TaskFailed(f"{what} failed: {outcome.error}", upid=upid,
                         exitstatus=exc.exitstatus, log_tail=log[-20:]) from None
    log = api.task_log(upid, tail=LOG_LINES)
    status = api.task_status(upid)
    return task_outcome(str(status.get("exitstatus", "")), log), log


@dapx_task(name="read-pbs-storage")
def read_pbs_storage(api_node: "ProxmoxNode", storage: str) -> PbsStorage:
    """The PBS storage ``storage`` as the cluster of ``api_node`` defines it (``GET
    /storage/{id}``). Raises InputError when it does not exist or is not of type pbs."""
    from dapx.errors import InputError

    try:
        section = _api(api_node).storage_config(storage)
    except NotFoundError:
        raise InputError(f"storage {storage!r} does not exist on {api_node.name}'s cluster") \
            from None
    return pbs_storage(storage, section)


@dapx_task(name="list-backups")
def list_backups(api_node: "ProxmoxNode", on: str, storage: str,
                 vmid: int | None = None) -> list[BackupEntry]:
    """Guest backups on PBS storage ``storage`` as node ``on`` lists them (``GET
    /nodes/{on}/storage/{storage}/content?content=backup``), optionally of one guest."""
    items = _api(api_node).storage_content(on, storage, content="backup", vmid=vmid)
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


@dapx_task(name="extract-backup-config")
def extract_backup_config(api_node: "ProxmoxNode", on: str, volid: str) -> str:
    """The guest config inside backup ``volid``, read by node ``on`` (``GET
    /nodes/{on}/vzdump/extractconfig``)."""
    return str(_api(api_node).extract_config(on, volid) or "")


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
