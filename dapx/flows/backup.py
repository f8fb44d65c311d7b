"""``pbs-backup``: back guests up to a Proxmox Backup Server and prune their backups (B1).

Shape of a run (flows -> tasks -> core): load the asked node's block; read, through its API,
the PBS storage (``GET /storage/{id}``: datastore, server) and every guest of its cluster with
the node that holds it (``/cluster/resources``); pick the guests the job means (unknown VMIDs
stop the run before anything changes); find the PBS node block by the storage's server and
check the datastore; read each guest's backups on PBS. A dry run publishes what would be
backed up and what the retention would prune, and stops. Otherwise, for each guest under its
global concurrency limit: ``vzdump`` on the node that HOLDS it (PVE answers OK and backs up
nothing on another node), followed by its UPID (``OK`` done, ``WARNINGS: N`` done with the
warnings, anything else fails the guest with PVE's message); the new backup read back from
PBS (time, bytes); then PBS prunes that guest's group with the job's keep counts (never a
protected backup). A failing guest does not stop the others; the run publishes a result table
and fails at the end naming every guest that failed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from prefect import flow
from pydantic import BaseModel, Field

from dapx.flows import KEPT_RESULTS
from dapx.flows.hooks import job_hooks, record_protection
from dapx.blocks.manage import afind_pbs_node, aload_nodes
from dapx.blocks.node import ProxmoxNode
from dapx.core.backups import TYPE_OF_KIND, pbs_time
from dapx.core.jobspec import BackupJob, BackupMode, PbsRetention
from dapx.core.pbs_retention import to_remove
from dapx.core.resources import ClusterGuest, PbsStorage, guests_to_back_up
from dapx.errors import DapxError, PermanentError
from dapx.tasks import pbs as pbs_tasks
from dapx.tasks.locks import DEFAULT_WAIT, exclusive, guest_lock_name
from dapx.tasks.ssh import node_sessions
from dapx.tasks.vzdump import read_backup_side, run_vzdump
from dapx.ui_extensions.artifacts import (artifact_key, human_bytes, plan_markdown,
                                          publish_markdown, publish_table)

# -----------------------------------------------------------------------------------------------
# Results


class GuestBackup(BaseModel):
    """One guest's backup in a run: what the protection state needs."""

    guest: int = Field(description="VMID.", examples=[100])
    name: str = Field(default="", description="Guest name.", examples=["web01"])
    kind: str = Field(description="qemu or lxc.", examples=["qemu"])
    node: str = Field(description="Node that holds the guest (where vzdump ran).",
                      examples=["pve1"])
    storage: str = Field(description="PVE storage (type pbs).", examples=["pbs"])
    datastore: str = Field(description="PBS datastore.", examples=["store1"])
    backup: str = Field(default="", description="PBS snapshot path of the new backup.",
                        examples=["vm/100/2025-11-26T02:00:00Z"])
    volid: str = Field(default="", description="Its PVE volume id (restore from this).",
                       examples=["pbs:backup/vm/100/2025-11-26T02:00:00Z"])
    backup_time: int = Field(default=0, description="Backup time, epoch seconds (0: none).")
    bytes: int = Field(default=0, description="Bytes the backup holds on PBS.")
    seconds: float = Field(default=0.0, description="How long vzdump ran.")
    warnings: list[str] = Field(default_factory=list, description="vzdump's warnings.")
    pruned: list[str] = Field(default_factory=list, description="Backup times retention "
                              "removed (for a dry run: would remove).")
    error: str = Field(default="", description="Why this guest failed, if it did.")


class BackupResult(BaseModel):
    """What one pbs-backup run did (returned by the flow, shown as a table)."""

    node: str = Field(description="The node asked.")
    storage: str = Field(description="PVE storage (type pbs).")
    datastore: str = Field(default="", description="PBS datastore.")
    pbs_node: str = Field(default="", description="PBS node block.")
    mode: BackupMode = "snapshot"
    retention: str = Field(default="", description="The keep counts applied.")
    notify: str = Field(default="failure", description="The job's notify mode.")
    dry_run: bool = False
    guests: list[GuestBackup] = Field(default_factory=list)
    seconds: float = 0.0

    @property
    def failures(self) -> list[str]:
        return [f"{g.guest}: {g.error}" for g in self.guests if g.error]


# -----------------------------------------------------------------------------------------------
# Read and plan


@dataclass
class BackupPlan:
    """Everything read before anything changes."""

    api_node: ProxmoxNode
    pbs: ProxmoxNode
    storage: PbsStorage
    guests: list[ClusterGuest]
    groups: dict[int, list[dict[str, Any]]]
    """Each guest's backups on PBS now."""


async def read_backup_plan(node: str, storage: str, wanted: list[int],
                           pbs_node: str | None) -> BackupPlan:
    """The asked node, the PBS storage and node, the guests and their backups. Raises
    InputError for an unknown node, storage, datastore or guest."""
    (api_node,) = await aload_nodes(node)
    pbs_storage, cluster = read_backup_side(api_node, storage)
    guests = guests_to_back_up(cluster, wanted, node)
    pbs = await afind_pbs_node(pbs_storage.server, pbs_node)
    groups = pbs_tasks.read_groups(pbs, pbs_storage.datastore,
                                   [(TYPE_OF_KIND[g.kind], g.vmid) for g in guests],
                                   pbs_storage.namespace)
    return BackupPlan(api_node, pbs, pbs_storage, guests, groups)


def would_prune(group: list[dict[str, Any]], retention: PbsRetention, now: int) -> list[int]:
    """Backup times retention would remove once a backup taken ``now`` joins ``group``."""
    times = [int(s["backup-time"]) for s in group] + [now]
    protected = {int(s["backup-time"]) for s in group if s.get("protected")}
    return [t for t in to_remove(times, protected, retention.counts()) if t != now]


def new_result(job: BackupJob, plan: BackupPlan, guest: ClusterGuest) -> GuestBackup:
    return GuestBackup(guest=guest.vmid, name=guest.name, kind=guest.kind, node=guest.node,
                       storage=job.storage, datastore=plan.storage.datastore)


def plan_rows(job: BackupJob, plan: BackupPlan, now: int) -> list[dict[str, Any]]:
    rows = []
    for guest in plan.guests:
        group = plan.groups[guest.vmid]
        rows.append({"guest": guest.vmid, "name": guest.name, "kind": guest.kind,
                     "node": guest.node, "status": guest.status, "mode": job.mode,
                     "backups now": len(group),
                     "would prune": ", ".join(pbs_time(t) for t in would_prune(
                         group, job.retention, now)) or "nothing"})
    return rows


async def publish_plan(job: BackupJob, plan: BackupPlan, rows: list[dict[str, Any]]) -> None:
    facts = {"asked node": job.node, "storage": f"{job.storage} (PBS {plan.pbs.name}, "
             f"datastore {plan.storage.datastore})", "mode": job.mode,
             "retention": job.retention.describe()}
    await publish_markdown(artifact_key("backup-plan", job.node, job.storage),
                           plan_markdown(f"Backup plan: {len(rows)} guest(s)", facts, rows,
                                         ["dry run: nothing was changed"]),
                           "dapx backup plan (dry run)")


# -----------------------------------------------------------------------------------------------
# Back up one guest


async def back_up_guest(job_storage: str, mode: BackupMode, retention: PbsRetention | None,
                        plan: BackupPlan, guest: ClusterGuest, result: GuestBackup) -> None:
    """vzdump on the guest's node, the new backup read back from PBS, then prune. Fills
    ``result``; raises DapxError when a step fails."""
    started = time.time()
    run = await run_vzdump(plan.api_node, guest.node, guest.vmid, job_storage, mode)
    result.seconds, result.warnings = run.seconds, run.warnings
    btype = TYPE_OF_KIND[guest.kind]
    found, removed = pbs_tasks.record_and_prune(
        plan.pbs, plan.storage.datastore, btype, guest.vmid, run.archive, started,
        retention.counts() if retention else None, plan.storage.namespace)
    result.backup_time, result.bytes = int(found["backup-time"]), int(found.get("size") or 0)
    result.backup = f"{btype}/{guest.vmid}/{pbs_time(result.backup_time)}"
    result.volid = f"{job_storage}:backup/{result.backup}"
    result.pruned = [pbs_time(t) for t in removed]


async def back_up_all(job: BackupJob, plan: BackupPlan, results: list[GuestBackup],
                      lock_wait: float) -> None:
    """Each guest in turn under its lock; a failure is recorded and the next guest runs."""
    for guest, result in zip(plan.guests, results):
        try:
            async with exclusive(guest_lock_name(guest.node, guest.vmid),
                                 f"working on guest {guest.vmid} on {guest.node}", lock_wait):
                await back_up_guest(job.storage, job.mode, job.retention, plan, guest, result)
        except DapxError as exc:
            result.error = str(exc)
            continue
        await record_protection("backup", guest.node, guest.vmid,
                                f"{plan.pbs.name}:{plan.storage.datastore}", ref=result.backup,
                                bytes_sent=result.bytes, seconds=result.seconds)


# -----------------------------------------------------------------------------------------------
# The flow


@flow(name="pbs-backup", log_prints=False, **KEPT_RESULTS, **job_hooks())
async def pbs_backup(job: BackupJob, dry_run: bool = False,
                     lock_wait: float = DEFAULT_WAIT) -> BackupResult:
    """Back up ``job.guests`` (every guest of ``job.node`` when empty) to PBS storage
    ``job.storage`` and prune each guest's backups with ``job.retention``.

    ``dry_run`` publishes what would be backed up and pruned and changes nothing;
    ``lock_wait`` is how long to wait for another run on the same guest. Raises InputError for
    bad input (before anything runs), PermanentError naming every guest that failed.
    """
    started = time.monotonic()
    async with node_sessions():
        plan = await read_backup_plan(job.node, job.storage, job.guests, job.pbs_node)
        result = BackupResult(node=job.node, storage=job.storage, mode=job.mode,
                              datastore=plan.storage.datastore, pbs_node=plan.pbs.name,
                              retention=job.retention.describe(), notify=job.notify,
                              dry_run=dry_run)
        result.guests = [new_result(job, plan, g) for g in plan.guests]
        if dry_run:
            now = int(time.time())
            for guest, row in zip(result.guests, plan.guests):
                guest.pruned = [pbs_time(t) for t in would_prune(
                    plan.groups[row.vmid], job.retention, now)]
            await publish_plan(job, plan, plan_rows(job, plan, now))
            return result
        await back_up_all(job, plan, result.guests, lock_wait)
    result.seconds = round(time.monotonic() - started, 3)
    await publish_result(result)
    if result.failures:
        raise PermanentError(f"backup failed for {len(result.failures)} of {len(result.guests)} "
                             f"guest(s): {'; '.join(result.failures)}")
    return result


def result_rows(guests: list[GuestBackup]) -> list[dict[str, Any]]:
    """The result table's rows, one per guest."""
    return [{"guest": g.guest, "node": g.node, "volume id": g.volid or "-",
             "size": human_bytes(g.bytes), "seconds": g.seconds,
             "warnings": "; ".join(g.warnings) or "-", "pruned": len(g.pruned),
             "error": g.error or "-"} for g in guests]


async def publish_result(result: BackupResult) -> None:
    await publish_table(artifact_key("backup-result", result.node, result.storage),
                        result_rows(result.guests),
                        f"backup to {result.storage} ({result.datastore}): "
                        f"{len(result.guests) - len(result.failures)} of {len(result.guests)} "
                        f"guest(s) in {result.seconds:g} s")
