"""``pbs-recovery``: a replica through PBS (R5) for guests on any storage.

Shape of a run (flows -> tasks -> core): read the backup side as ``pbs-backup`` does for one
guest (the PBS storage, the guest's node, the PBS node and datastore) and the destination as
``pbs-restore`` does (the PBS storage there, the target storage, the bridges the guest's
current config uses once mapped, the guest at the target VMID: our previous copy - marked
``dapx-replica-of: <source>/<vmid>`` in its description - may be replaced, any other guest only
with ``force``, and never the source guest itself). Everything is checked before anything
changes; a dry run publishes both plans and stops. Then, holding the target's global
concurrency limit: back the guest up on its node (its own limit held meanwhile), prune its
group if the job has a retention, restore that backup on the destination - beside the
previous copy, swapped into place only once complete (``flows.swap``) - with bridges mapped,
the mark set, stopped unless the job says start. The result names the recovery point (the
backup's time) and the bytes moved.
"""

from __future__ import annotations

import time
from typing import Any

from prefect import flow
from pydantic import BaseModel, Field

from dapx.flows import KEPT_RESULTS
from dapx.flows.hooks import job_hooks, record_protection
from dapx.core.backups import BackupEntry, pbs_time
from dapx.core.jobspec import RecoveryJob, RestoreRequest
from dapx.errors import InputError
from dapx.flows.backup import (BackupPlan, GuestBackup, back_up_guest, read_backup_plan,
                               would_prune)
from dapx.flows.restore import (RestorePlan, RestoreResult, carry_out, check_destination,
                                new_result as new_restore_result, plan_facts, read_destination)
from dapx.tasks.guests import replica_mark
from dapx.tasks.locks import DEFAULT_WAIT, exclusive, guest_lock_name
from dapx.tasks.pve_guests import read_guest_config
from dapx.tasks.ssh import node_sessions
from dapx.ui_extensions.artifacts import (artifact_key, human_bytes, plan_markdown,
                                          publish_markdown, publish_table)


class RecoveryResult(BaseModel):
    """What one pbs-recovery run did: the recovery point and the bytes moved."""

    source: str = Field(description="Node that held the guest.", examples=["pve3"])
    guest: int = Field(description="VMID of the guest.", examples=[300])
    destination: str = Field(description="Node of the copy.", examples=["pve1"])
    dest_vmid: int = Field(description="VMID of the copy.", examples=[9300])
    recovery_point: int = Field(default=0, description="Backup time of the copy, epoch "
                                "seconds (0 for a dry run).")
    bytes: int = Field(default=0, description="Bytes moved (the backup's size).")
    notify: str = Field(default="failure", description="The job's notify mode.")
    dry_run: bool = False
    backup: GuestBackup | None = None
    restore: RestoreResult | None = None
    seconds: float = 0.0


def copy_mark(node: str, vmid: int) -> str:
    """The description line that marks a copy as this job's: ``dapx-replica-of: pve3/300``
    (PVE writes it as ``#dapx-replica-of: pve3/300``, as registrations are marked)."""
    return replica_mark(node, vmid).lstrip("#")


def restore_request(job: RecoveryJob, backup: str = "") -> RestoreRequest:
    """The restore half of a recovery job (``backup``: the one just made, when known)."""
    return RestoreRequest(storage=job.storage, backup=backup or f"vm/{job.guest}/latest",
                          destination=job.destination, dest_vmid=job.target_vmid,
                          dest_storage=job.dest_storage, unique=job.unique,
                          bridge_map=job.bridge_map, start=job.start)


async def plan_recovery(job: RecoveryJob, force: bool) -> tuple[BackupPlan, RestorePlan]:
    """Read and check both sides; raises InputError, ConflictError, GuestLocked before
    anything changes."""
    backup = await read_backup_plan(job.source, job.storage, [job.guest], job.pbs_node)
    guest = backup.guests[0]
    request = restore_request(job)
    dest, side = await read_destination(request, guest.vmid)
    if dest.name == guest.node and job.target_vmid == guest.vmid:
        raise InputError(f"the copy of guest {job.guest} would replace the guest itself on "
                         f"{dest.name}; choose another destination VMID")
    config = read_guest_config(backup.api_node, guest.node, guest.kind, guest.vmid)
    values = {k: str(v) for k, v in config.items() if k != "digest"}
    restore = await check_destination(request, dest, side, guest.kind, values,
                                       job.target_vmid, force=force, stop_ours=True,
                                       mark=copy_mark(guest.node, guest.vmid))
    if restore.occupant and restore.occupant.vmid == guest.vmid and \
            restore.occupant.node == guest.node:
        raise InputError(f"VMID {job.target_vmid} on {dest.name} is guest {job.guest} itself; "
                         "choose another destination VMID")
    return backup, restore


def entry_of(backup: GuestBackup) -> BackupEntry:
    """The backup just made, as a restore takes it."""
    return BackupEntry(volid=backup.volid, guest=backup.guest, kind=backup.kind,  # type: ignore[arg-type]
                       time=backup.backup_time, size=backup.bytes, verified="none",
                       protected=False)


async def publish_plan(job: RecoveryJob, backup: BackupPlan, restore: RestorePlan) -> None:
    request = restore_request(job)
    group = backup.groups[job.guest]
    facts = {"guest": f"{backup.guests[0].kind} {job.guest} on {backup.guests[0].node}",
             "backup to": f"{job.storage} (PBS {backup.pbs.name}, datastore "
             f"{backup.storage.datastore}), mode {job.mode}",
             "retention": (f"{job.retention.describe()}; would prune: " + (", ".join(
                 pbs_time(t) for t in would_prune(group, job.retention, int(time.time())))
                 or "nothing")) if job.retention else "none (the guest's backup job prunes)"}
    facts |= plan_facts(request, restore)
    await publish_markdown(artifact_key("recovery-plan", job.source, job.guest,
                                        job.destination),
                           plan_markdown(f"Replica through PBS: guest {job.guest}", facts, [],
                                         ["dry run: nothing was changed"]),
                           "dapx recovery plan (dry run)")


async def run_recovery(job: RecoveryJob, backup: BackupPlan, restore: RestorePlan,
                       result: RecoveryResult, lock_wait: float) -> None:
    """Back up (under the source guest's lock), then restore that backup."""
    guest = backup.guests[0]
    result.backup = new_result_for(job, backup)
    async with exclusive(guest_lock_name(guest.node, guest.vmid),
                         f"working on guest {guest.vmid} on {guest.node}", lock_wait):
        await back_up_guest(job.storage, job.mode, job.retention, backup, guest, result.backup)
    restore.entry = entry_of(result.backup)
    request = restore_request(job, result.backup.volid)
    result.restore = new_restore_result(request, restore, False)
    await carry_out(request, restore, copy_mark(guest.node, guest.vmid), result.restore,
                    tuple(job.carry_keys))
    result.recovery_point, result.bytes = result.backup.backup_time, result.backup.bytes


def new_result_for(job: RecoveryJob, backup: BackupPlan) -> GuestBackup:
    guest = backup.guests[0]
    return GuestBackup(guest=guest.vmid, name=guest.name, kind=guest.kind, node=guest.node,
                       storage=job.storage, datastore=backup.storage.datastore)


@flow(name="pbs-recovery", log_prints=False, **KEPT_RESULTS, **job_hooks())
async def pbs_recovery(job: RecoveryJob, dry_run: bool = False, force: bool = False,
                       lock_wait: float = DEFAULT_WAIT) -> RecoveryResult:
    """Back ``job.guest`` up on ``job.source`` to PBS storage ``job.storage`` and restore it
    on ``job.destination`` as ``job.target_vmid``, replacing the previous copy once the new
    one is complete.

    ``dry_run`` publishes the plan and changes nothing; ``force`` allows replacing a guest at
    the target VMID that is not this job's copy; ``lock_wait`` is how long to wait for another
    run on the same guests. Raises InputError/ConflictError before anything changes, TaskFailed
    with PVE's message when the backup or the restore fails (the previous copy intact).
    """
    started = time.monotonic()
    result = RecoveryResult(source=job.source, guest=job.guest, destination=job.destination,
                            dest_vmid=job.target_vmid, notify=job.notify, dry_run=dry_run)
    async with node_sessions():
        backup, restore = await plan_recovery(job, force)
        if dry_run:
            await publish_plan(job, backup, restore)
            return result
        async with exclusive(guest_lock_name(restore.dest.name, restore.target),
                             f"working on guest {restore.target} on {restore.dest.name}",
                             lock_wait):
            await run_recovery(job, backup, restore, result, lock_wait)
    result.seconds = round(time.monotonic() - started, 3)
    await publish_result(result)
    await record_protection("recovery", job.source, job.guest, job.destination,
                            ref=result.backup.volid if result.backup else "",
                            bytes_sent=result.bytes, seconds=result.seconds)
    return result


def result_rows(result: RecoveryResult) -> list[dict[str, Any]]:
    """The result table: one row."""
    restore = result.restore
    return [{"guest": f"{result.source}/{result.guest}",
             "copy": f"{result.destination}/{result.dest_vmid}",
             "recovery point": pbs_time(result.recovery_point) if result.recovery_point else "-",
             "backup": result.backup.volid if result.backup else "-",
             "size": human_bytes(result.bytes),
             "backup seconds": result.backup.seconds if result.backup else 0,
             "restore seconds": restore.seconds if restore else 0,
             "replaced": (restore.replaced or "-") if restore else "-",
             "pruned": len(result.backup.pruned) if result.backup else 0,
             "warnings": "; ".join(result.backup.warnings) if result.backup and
             result.backup.warnings else "-"}]


async def publish_result(result: RecoveryResult) -> None:
    await publish_table(artifact_key("recovery-result", result.source, result.guest,
                                     result.destination),
                        result_rows(result),
                        f"guest {result.guest}: {result.source} -> {result.destination}/"
                        f"{result.dest_vmid} in {result.seconds:g} s")

