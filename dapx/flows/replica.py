"""``zfs-replica`` and ``btrfs-replica``: copy a guest's disks to another node (R1, R2).

Shape of a run (flows -> tasks -> core): load the node blocks; read the guest config and the
source's storage.cfg in one round trip; map disks to datasets; check node trust; read both
sides' snapshots (one ``zfs get`` per node); plan every disk with ``core.snapshots`` (any
conflict stops the run before anything changes; ``force`` is explicit); a dry run publishes
the plan and stops. Otherwise, under a global concurrency limit for the source guest: one
atomic snapshot of all disks, syncoid per disk ON THE SOURCE node pushing to the destination,
retention on both sides for the disks that made it, registration, a result table. A failing
disk does not hide the others: the run fails at the end naming every failure.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Awaitable, Callable

from prefect import flow
from pydantic import BaseModel, Field

from dapx.flows import KEPT_RESULTS
from dapx.blocks.manage import aload_nodes
from dapx.blocks.node import ProxmoxNode
from dapx.core import snapshots as snapplan
from dapx.core.guestconfig import list_disks
from dapx.core.jobspec import ReplicaJob
from dapx.core.registration import rename_volume
from dapx.core.retention import select_for_deletion
from dapx.core.snapnames import SNAPSHOT_PREFIX, job_prefix, new_snapshot_name
from dapx.core.snapshots import FullSend, Plan, Snapshot
from dapx.core.syncoid_argv import SyncoidOptions
from dapx.core.volumes import destination_dataset, zfs_dataset
from dapx.errors import ConflictError, DapxError, InputError, PermanentError
from dapx.flows.register import check_vmid_available, register_guest, registration_note
from dapx.flows.trust import KNOWN_HOSTS, REPLICATION_KEY, check_trust
from dapx.tasks import zfs
from dapx.tasks.guests import SourceGuest, read_guest
from dapx.tasks.locks import DEFAULT_WAIT, guest_lock_name, run_exclusively
from dapx.tasks.syncoid import run_pipe, run_syncoid
from dapx.ui_extensions.artifacts import (
    Progress,
    artifact_key,
    human_bytes,
    plan_markdown,
    publish_markdown,
    publish_table,
)

# -----------------------------------------------------------------------------------------------
# Results


class DiskResult(BaseModel):
    """One disk of one run."""

    disk: str = Field(description="Config key.", examples=["scsi0"])
    source_dataset: str = Field(description="Dataset on the source.")
    dest_dataset: str = Field(description="Dataset on the destination.")
    plan: str = Field(description="What the plan said.")
    bytes_sent: int = Field(default=0, description="Bytes pv counted on the wire.")
    seconds: float = Field(default=0.0, description="Transfer time.")
    common: str = Field(default="", description="Newest snapshot both sides now hold.")
    pruned_source: list[str] = Field(default_factory=list, description="Snapshots destroyed.")
    pruned_dest: list[str] = Field(default_factory=list, description="Snapshots destroyed.")
    error: str = Field(default="", description="Why this disk failed, if it did.")


class ReplicaResult(BaseModel):
    """What one replication run did (returned by the flow, shown as a table)."""

    source: str
    guest: int
    destination: str
    dest_vmid: int
    snapshot: str = Field(description="Snapshot this run took (planned, for a dry run).")
    dry_run: bool = False
    disks: list[DiskResult] = Field(default_factory=list)
    registration: str = ""
    seconds: float = 0.0

    @property
    def bytes_sent(self) -> int:
        return sum(d.bytes_sent for d in self.disks)

    @property
    def failures(self) -> list[str]:
        return [f"{d.disk}: {d.error}" for d in self.disks if d.error]


# -----------------------------------------------------------------------------------------------
# Pure steps


@dataclass(frozen=True)
class ZfsDisk:
    """One guest disk and where its replica goes."""

    key: str
    volid: str
    source: str
    target: str


@dataclass(frozen=True)
class ZfsRun:
    """What the shared ZFS steps (plan rows, transfer, retention) need from a job, so guest
    replication (``ReplicaJob``) and plain dataset mode (``DatasetJob``) run the same code."""

    source: str
    destination: str
    subject: str
    """What moves, for messages and artifacts: ``guest 100``, ``dataset rpool/data/share``."""
    key: str
    """Artifact key part naming the subject: ``100``, ``rpool-data-share``."""
    owner: str
    """``dapx:owner`` value marking the targets: ``pve1/100``."""
    tag: str
    """Snapshot tag (``dapx_<tag>_...``); retention only prunes this tag's snapshots."""
    keep: int
    compression: str
    bwlimit: str | None
    dest_pool: str
    recursive: bool = False
    """One ``syncoid --recursive`` for the first dataset and its children (dataset mode)."""


def guest_run(job: ReplicaJob) -> ZfsRun:
    """The shared-step view of a guest replication job."""
    return ZfsRun(source=job.source, destination=job.destination, subject=f"guest {job.guest}",
                  key=str(job.guest), owner=f"{job.source}/{job.guest}", tag=job_tag(job),
                  keep=job.keep, compression=job.compression, bwlimit=job.bwlimit,
                  dest_pool=job.dest_pool)


def not_zfs_message(key: str, volid: str, vmid: int, kind: str) -> str:
    return (f"disk {key} ({volid}) of guest {vmid} is on {kind} storage, not ZFS: zfs-replica "
            "cannot copy it. Use btrfs-replica for BTRFS storage; for any other storage back "
            "the guest up to PBS and restore it on the destination (backup/restore flows)")


def zfs_disks(guest: SourceGuest, job: ReplicaJob) -> list[ZfsDisk]:
    """Every disk as source/destination datasets. Raises InputError for a disk that is not
    on a zfspool storage, a host path, or a guest without disks."""
    disks = list_disks(guest.config)
    if not disks:
        raise InputError(f"guest {job.guest} on {job.source} has no disks to replicate")
    found = []
    for disk in disks:
        if disk.storage is None:
            raise InputError(f"disk {disk.key} of guest {job.guest} is the host path "
                             f"{disk.volname}; it cannot be replicated, detach it first")
        storage = guest.storages.get(disk.storage)
        if storage is None:
            raise InputError(f"disk {disk.key} uses storage {disk.storage!r}, which "
                             f"{job.source}'s storage.cfg does not define")
        if storage["type"] != "zfspool" or "pool" not in storage:
            raise InputError(not_zfs_message(disk.key, disk.volid, job.guest, storage["type"]))
        renamed = rename_volume(disk.volname, job.guest, job.target_vmid)
        found.append(ZfsDisk(disk.key, disk.volid, zfs_dataset(storage["pool"], disk.volname),
                             destination_dataset(job.dest_pool, job.subfolder, renamed)))
    return found


def job_tag(job: ReplicaJob) -> str:
    """Snapshot tag of a job: ``pve3-9100`` (destination and target VMID)."""
    return f"{job.destination}-{job.target_vmid}"


def planned_snapshot(name: str, existing: list[Snapshot]) -> Snapshot:
    """A stand-in for the snapshot this run will take, newer than every existing one."""
    newest = max((s.createtxg for s in existing), default=0)
    return Snapshot(name=name, guid=0, createtxg=newest + 1,
                    creation=int(datetime.now(timezone.utc).timestamp()))


def target_owned(state: zfs.DatasetState) -> bool:
    """Ours when it carries the owner mark, or when every snapshot it has is a dapx one."""
    return state.owner is not None or (bool(state.snapshots) and all(
        s.name.startswith(SNAPSHOT_PREFIX) for s in state.snapshots))


def plan_disk(disk: ZfsDisk, source: zfs.DatasetState, target: zfs.DatasetState, name: str,
              *, force: bool, destination: str) -> Plan:
    """The plan for one disk, as if ``name`` had been taken. Raises ConflictError."""
    snaps = source.snapshots + [planned_snapshot(name, source.snapshots)]
    return snapplan.plan_incremental(
        snaps, target.snapshots if target.exists else None, target_written=target.written,
        target_owned=target_owned(target), force=force,
        dataset=f"{destination}:{disk.target}")


def plan_all(disks: list[ZfsDisk], src: dict, dst: dict, name: str, *, force: bool,
             destination: str) -> dict[str, Plan]:
    """Plans for every disk; raises one ConflictError naming every conflicting disk."""
    plans, conflicts = {}, []
    for disk in disks:
        try:
            plans[disk.key] = plan_disk(disk, src[disk.source], dst[disk.target], name,
                                        force=force, destination=destination)
        except ConflictError as exc:
            conflicts.append(f"{disk.key}: {exc}")
    if conflicts:
        raise ConflictError("; ".join(conflicts))
    return plans


def prune_list(state: zfs.DatasetState, run: ZfsRun, protect: str,
               extra: Snapshot | None = None) -> list[str]:
    """Names retention destroys on one dataset (never ``protect``, only this job's own)."""
    snaps = state.snapshots + ([extra] if extra else [])
    victims = select_for_deletion(snaps, keep=run.keep, prefixes=(job_prefix(run.tag),),
                                  protect={protect})
    return [s.name for s in victims]


def syncoid_options(run: ZfsRun, dest: ProxmoxNode, resume: bool) -> SyncoidOptions:
    return SyncoidOptions(compression=run.compression, ssh_key=REPLICATION_KEY,
                          known_hosts_file=KNOWN_HOSTS, ssh_port=dest.ssh_port,
                          bandwidth_limit=run.bwlimit, resume=resume, recursive=run.recursive)


# -----------------------------------------------------------------------------------------------
# Dry run


def plan_rows(disks: list[ZfsDisk], plans: dict[str, Plan], src: dict, dst: dict,
              run: ZfsRun, name: str) -> list[dict[str, Any]]:
    rows = []
    for disk in disks:
        new = planned_snapshot(name, src[disk.source].snapshots)
        rows.append({"disk": disk.key, "source": disk.source,
                     "destination": disk.target, "plan": snapplan.describe(plans[disk.key]),
                     "size": human_bytes(src[disk.source].referenced),
                     "retention (source)": ", ".join(
                         prune_list(src[disk.source], run, name, new)) or "nothing",
                     "retention (destination)": ", ".join(
                         prune_list(dst[disk.target], run, name, new)) or "nothing"})
    return rows


async def publish_plan(job: ReplicaJob, rows: list[dict[str, Any]], name: str,
                       guest: SourceGuest) -> None:
    facts = {"guest": f"{job.source}/{job.guest}", "destination":
             f"{job.destination}/{job.target_vmid}"}
    notes = [registration_note(job, guest)] if job.register_vm else []
    await publish_run_plan(guest_run(job), facts, rows, name, notes)


async def publish_run_plan(run: ZfsRun, facts: dict[str, Any], rows: list[dict[str, Any]],
                           name: str, notes: list[str] | None = None) -> None:
    """The dry-run artifact: ``facts`` about the job, then the run's common facts and rows."""
    facts = facts | {"snapshot to take": name, "versions kept": run.keep,
                     "compression": run.compression, "bandwidth limit": run.bwlimit or "none"}
    await publish_markdown(artifact_key("replica-plan", run.source, run.key, run.destination),
                           plan_markdown(f"Replication plan: {run.subject}", facts, rows,
                                         ["dry run: nothing was changed", *(notes or [])]),
                           "dapx replication plan (dry run)")


# -----------------------------------------------------------------------------------------------
# Transfer


async def prepare_target(dest: ProxmoxNode, disk: ZfsDisk, plan: Plan) -> None:
    """Carry out what a forced plan asks of the target before the send."""
    if isinstance(plan, FullSend) and plan.replace_target:
        await zfs.destroy_dataset(dest, disk.target)
    elif getattr(plan, "rollback_to", None) is not None:
        await zfs.rollback(dest, disk.target, plan.rollback_to.name)


def direct_pipe(run: ZfsRun, dest: ProxmoxNode, disk: ZfsDisk, plan: Plan) -> list[str]:
    """The send pipeline for nodes where syncoid cannot list remote snapshots."""
    base = plan.base.name if isinstance(plan, snapplan.Incremental) else None
    return zfs.pipe_argv(disk.source, base, plan.to.name, dest.host, disk.target,
                         key=REPLICATION_KEY, known_hosts=KNOWN_HOSTS, port=dest.ssh_port,
                         rate=run.bwlimit)


async def send_disk(run: ZfsRun, source: ProxmoxNode, dest: ProxmoxNode, disk: ZfsDisk,
                    plan: Plan, options: SyncoidOptions | None, progress: "TransferProgress",
                    result: DiskResult) -> None:
    """Prepare the target, send (syncoid, or the direct pipe when ``options`` is None) on the
    source node, mark the target ours."""
    await prepare_target(dest, disk, plan)
    if options is not None:
        sync = await run_syncoid(source, disk.source, dest.host, disk.target, options,
                                 on_bytes=progress.on_bytes)
    else:
        sync = await run_pipe(source, direct_pipe(run, dest, disk, plan),
                              f"zfs send {disk.source} -> {dest.name}:{disk.target}",
                              on_bytes=progress.on_bytes)
    result.bytes_sent, result.seconds = sync.bytes_sent, round(sync.seconds, 3)
    await zfs.mark_owned(dest, disk.target, run.owner)


class TransferProgress:
    """Feeds the progress artifact from pv's byte counts (called on the SSH I/O thread)."""

    def __init__(self, progress: Progress, total_disks: int) -> None:
        self.progress, self.total = progress, max(total_disks, 1)
        self.done, self.expected, self.bytes = 0, 0, 0

    def on_bytes(self, count: int) -> None:
        self.bytes = count

    def start_disk(self, expected: int) -> None:
        self.expected, self.bytes = expected, 0

    @property
    def percent(self) -> float:
        part = min(self.bytes / self.expected, 0.99) if self.expected else 0.0
        return 100.0 * (self.done + part) / self.total

    async def follow(self) -> None:
        """Update the artifact every second until cancelled."""
        while True:
            await self.progress.update(self.percent)
            await asyncio.sleep(1.0)


async def choose_transport(run: ZfsRun, source: ProxmoxNode, dest: ProxmoxNode,
                           disks: list[ZfsDisk]) -> SyncoidOptions | None:
    """syncoid options, or None for the direct pipe where syncoid 2.1 cannot work."""
    usable = await asyncio.gather(zfs.syncoid_can_list(source, disks[0].source.split("/")[0]),
                                  zfs.syncoid_can_list(dest, run.dest_pool))
    if not all(usable):
        return None
    return syncoid_options(run, dest, await zfs.supports_resume(dest, run.dest_pool))


async def transfer_all(run: ZfsRun, source: ProxmoxNode, dest: ProxmoxNode,
                       disks: list[ZfsDisk], plans: dict[str, Plan], src: dict,
                       results: dict[str, DiskResult], options: SyncoidOptions | None) -> None:
    """Send every disk in turn (syncoid with ``options``, else the direct pipe); a failing
    disk is recorded and the next one still runs. With ``options.recursive`` one syncoid
    run sends the first dataset and its children (``disks`` lists them, parent first)."""
    progress = Progress(artifact_key("replica-progress", run.source, run.key, run.destination),
                        f"{run.subject}: {run.source} -> {run.destination}")
    await progress.start()
    tracker = TransferProgress(progress, len(disks))
    follower = asyncio.create_task(tracker.follow())
    try:
        if options is not None and options.recursive:
            await send_recursive(run, source, dest, disks, plans, src, results, options, tracker)
        else:
            for disk in disks:
                full = isinstance(plans[disk.key], FullSend)
                tracker.start_disk(src[disk.source].referenced if full else 0)
                try:
                    await send_disk(run, source, dest, disk, plans[disk.key], options, tracker,
                                    results[disk.key])
                except DapxError as exc:
                    results[disk.key].error = str(exc)
                tracker.done += 1
    finally:
        follower.cancel()
    await progress.update(100.0, force=True)


async def send_recursive(run: ZfsRun, source: ProxmoxNode, dest: ProxmoxNode,
                         disks: list[ZfsDisk], plans: dict[str, Plan], src: dict,
                         results: dict[str, DiskResult], options: SyncoidOptions,
                         tracker: TransferProgress) -> None:
    """``syncoid --recursive`` for ``disks[0]`` and its children: prepare every target, one
    transfer (its bytes are reported on the first row), mark every target ours. A failure
    is recorded on every dataset: syncoid does not say which child it stopped at."""
    root = disks[0]
    tracker.start_disk(sum(src[d.source].referenced for d in disks
                           if isinstance(plans[d.key], FullSend)))
    try:
        for disk in disks:
            await prepare_target(dest, disk, plans[disk.key])
        sync = await run_syncoid(source, root.source, dest.host, root.target, options,
                                 on_bytes=tracker.on_bytes)
        results[root.key].bytes_sent = sync.bytes_sent
        results[root.key].seconds = round(sync.seconds, 3)
        for disk in disks:
            await zfs.mark_owned(dest, disk.target, run.owner)
    except DapxError as exc:
        for disk in disks:
            results[disk.key].error = str(exc)
    tracker.done = len(disks)


async def retention(run: ZfsRun, source: ProxmoxNode, dest: ProxmoxNode,
                    disks: list[ZfsDisk], results: dict[str, DiskResult], name: str) -> None:
    """Prune both sides of the disks that made it; never the snapshot now common."""
    ok = [d for d in disks if not results[d.key].error]
    if not ok:
        return
    src, dst = await asyncio.gather(zfs.dataset_states(source, [d.source for d in ok]),
                                    zfs.dataset_states(dest, [d.target for d in ok]))
    for disk in ok:
        result = results[disk.key]
        common = snapplan.newest_common(src[disk.source].snapshots, dst[disk.target].snapshots)
        if common is None or common.name != name:
            result.error = f"after the transfer {disk.target} does not hold {name}"
            continue
        result.common = common.name
        result.pruned_source = await zfs.destroy_snapshots(
            source, disk.source, prune_list(src[disk.source], run, name))
        result.pruned_dest = await zfs.destroy_snapshots(
            dest, disk.target, prune_list(dst[disk.target], run, name))


# -----------------------------------------------------------------------------------------------
# The flow (the shared ZFS steps, then the guest-specific ones)


@dataclass
class ZfsPlan:
    """Everything read and planned before anything changes."""

    disks: list[ZfsDisk]
    src: dict[str, zfs.DatasetState]
    dst: dict[str, zfs.DatasetState]
    plans: dict[str, Plan]
    options: SyncoidOptions | None

    def results(self) -> dict[str, DiskResult]:
        return {d.key: DiskResult(disk=d.key, source_dataset=d.source, dest_dataset=d.target,
                                  plan=snapplan.describe(self.plans[d.key])) for d in self.disks}


async def read_and_plan(run: ZfsRun, source: ProxmoxNode, dest: ProxmoxNode,
                        disks: list[ZfsDisk], name: str, *, force: bool,
                        checks: tuple = ()) -> ZfsPlan:
    """Both sides' states, the transport, node trust and the caller's ``checks`` (awaitables)
    at once (each is a round trip), then the plans. Raises PermanentError for a missing
    source dataset, ConflictError naming every conflict, and whatever a check raises."""
    src, dst, options, *_ = await asyncio.gather(
        zfs.dataset_states(source, [d.source for d in disks]),
        zfs.dataset_states(dest, [d.target for d in disks]),
        choose_transport(run, source, dest, disks), check_trust(source, dest), *checks)
    missing = [d.source for d in disks if not src[d.source].exists]
    if missing:
        raise PermanentError(f"source datasets missing on {run.source}: {', '.join(missing)}")
    plans = plan_all(disks, src, dst, name, force=force, destination=run.destination)
    return ZfsPlan(disks, src, dst, plans, options)


async def replicate_datasets(run: ZfsRun, source: ProxmoxNode, dest: ProxmoxNode,
                             plan: ZfsPlan, results: dict[str, DiskResult], name: str,
                             parent: str | None) -> None:
    """Snapshot every source dataset atomically (creating ``parent`` on the destination
    meanwhile, unless None: a pool), transfer, prune both sides. Failures are recorded in
    ``results``."""
    steps = [zfs.take_snapshots(source, [d.source for d in plan.disks], name)]
    if parent:
        steps.append(zfs.create_parents(dest, parent))
    await asyncio.gather(*steps)
    await transfer_all(run, source, dest, plan.disks, plan.plans, plan.src, results,
                       plan.options)
    await retention(run, source, dest, plan.disks, results, name)


async def _replicate(job: ReplicaJob, source: ProxmoxNode, dest: ProxmoxNode, dry_run: bool,
                     force: bool, result: ReplicaResult) -> None:
    name, run = result.snapshot, guest_run(job)
    guest = await read_guest(source, job.guest)
    disks = zfs_disks(guest, job)
    checks = (check_vmid_available(job, source, dest, guest.kind),) if job.register_vm else ()
    plan = await read_and_plan(run, source, dest, disks, name, force=force, checks=checks)
    results = plan.results()
    result.disks = list(results.values())
    if dry_run:
        await publish_plan(job, plan_rows(disks, plan.plans, plan.src, plan.dst, run, name),
                           name, guest)
        return
    parent = destination_dataset(job.dest_pool, job.subfolder, "x").rsplit("/", 1)[0]
    await replicate_datasets(run, source, dest, plan, results, name, parent)
    if job.register_vm and not result.failures:
        result.registration = str(await register_guest(job, source, dest, "zfs", guest=guest))


async def run_guest_replica(job: ReplicaJob, dry_run: bool, force: bool, lock_wait: float,
                            replicate: Callable[..., Awaitable[None]]) -> ReplicaResult:
    """What both guest replica flows do around ``replicate(job, source, dest, dry_run, force,
    result)``: load the nodes, hold the source guest's lock (not for a dry run), publish
    the result table, and fail at the end naming every disk that failed."""
    started = time.monotonic()
    source, dest = await aload_nodes(job.source, job.destination)
    result = ReplicaResult(source=job.source, guest=job.guest, destination=job.destination,
                           dest_vmid=job.target_vmid, dry_run=dry_run,
                           snapshot=new_snapshot_name(job_tag(job), datetime.now(timezone.utc)))
    await run_exclusively(guest_lock_name(job.source, job.guest),
                          f"replicating guest {job.guest} from {job.source} to {job.destination}",
                          lock_wait, dry_run,
                          lambda plan_only: replicate(job, source, dest, plan_only, force, result))
    result.seconds = round(time.monotonic() - started, 3)
    if not dry_run:
        await publish_result(result)
    if result.failures:
        raise PermanentError(f"replication of guest {job.guest} to {job.destination} failed "
                             f"for {len(result.failures)} disk(s): {'; '.join(result.failures)}")
    return result


@flow(name="zfs-replica", log_prints=False, **KEPT_RESULTS)
async def zfs_replica(job: ReplicaJob, dry_run: bool = False, force: bool = False,
                      lock_wait: float = DEFAULT_WAIT) -> ReplicaResult:
    """Replicate guest ``job.guest`` from ``job.source`` to ``job.destination`` with syncoid.

    ``dry_run`` publishes the plan and changes nothing; ``force`` lets the plan roll back a
    diverged target or replace one that shares nothing with the source; ``lock_wait`` is how
    long to wait for another run of the same guest and destination. Raises InputError for bad
    input, ConflictError for a conflict, LockTimeout, PermanentError naming failed disks.
    """
    return await run_guest_replica(job, dry_run, force, lock_wait, _replicate)


def result_rows(disks: list[DiskResult], registration: str = "") -> list[dict[str, Any]]:
    """The result table's rows, one per disk (or dataset)."""
    return [{"disk": d.disk, "destination": d.dest_dataset, "plan": d.plan,
             "bytes sent": d.bytes_sent, "size": human_bytes(d.bytes_sent),
             "seconds": d.seconds, "common snapshot": d.common or "-",
             "pruned": len(d.pruned_source) + len(d.pruned_dest),
             "registration": registration or "-", "error": d.error or "-"} for d in disks]


async def publish_result(result: ReplicaResult) -> None:
    rows = result_rows(result.disks, result.registration)
    await publish_table(artifact_key("replica-result", result.source, result.guest,
                                     result.destination), rows,
                        f"guest {result.guest}: {result.source} -> {result.destination}/"
                        f"{result.dest_vmid} in {result.seconds:g} s")
