"""``zfs-replica`` and ``btrfs-replica``: copy a guest's disks to another node (R1, R2).

Shape of a run (flows -> tasks -> core): load the node blocks; check node trust (from the start)
while reading the guest config and the source's storage.cfg in one round trip; map disks to
datasets; check that the destination VMID is free; read both sides' snapshots (one round trip
per node; the destination's also refuses a receive still running into a target) and what was
written into each target since its newest snapshot; plan every disk with ``core.snapshots`` (any
conflict stops the run before anything changes: a diverged or written target, a target of
another job; ``force`` is explicit); a dry run publishes the plan and stops. Otherwise, under
the source guest's global concurrency limit (its migrations, backups and other replicas wait):
one atomic snapshot of all disks, named when taken, syncoid per disk ON THE SOURCE node pushing
to the destination (tied to the SSH channel: it dies with the run), a forced full resend
received beside the old replica and swapped in only when every disk arrived
(``dapx.flows.resend``); then side by side: retention on both sides for the disks that made it
(one round trip per node, each target seen holding the new snapshot first), disks the guest no
longer has reported (or removed when the job says so), registration and the protection record; a
result table. A failing disk does not hide the others (a forced resend stops at the first): the
run fails at the end naming every failure, and a registration that failed after the copy.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator, Awaitable, Callable, TypeVar

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
from dapx.errors import ConflictError, DapxError, InputError, PermanentError, TransientError
from dapx.flows import dropped, resend
from dapx.flows.hooks import job_hooks, record_protection
from dapx.flows.register import (check_not_failed_over, check_vmid_available, register_guest,
                                 registration_note)
from dapx.flows.trust import KNOWN_HOSTS, REPLICATION_KEY, check_trust
from dapx.tasks import zfs
from dapx.tasks.guests import SourceGuest, read_guest
from dapx.tasks.locks import DEFAULT_WAIT, guest_lock_name, run_exclusively
from dapx.tasks.ssh import connect_ahead
from dapx.tasks.syncoid import run_pipe, run_syncoid
from dapx.ui_extensions.artifacts import (
    Progress,
    artifact_key,
    human_bytes,
    plan_markdown,
    publish_markdown,
    publish_table,
)

T = TypeVar("T")

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
    snapshot: str = Field(default="", description="Snapshot this run took (planned, for a "
                          "dry run), named when the run holds its lock.")
    dry_run: bool = False
    disks: list[DiskResult] = Field(default_factory=list)
    registration: str = ""
    registration_error: str = Field(default="", description="Why registration failed after "
                                    "the copy (the next run registers).")
    dropped: list[str] = Field(default_factory=list, description="Replicas and snapshots of "
                               "disks the guest no longer has: reported, or removed.")
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


def with_planned(source: zfs.DatasetState, name: str) -> list[Snapshot]:
    """The source's snapshots and the one this run will take."""
    return source.snapshots + [planned_snapshot(name, source.snapshots)]


def plan_disk(disk: ZfsDisk, source: zfs.DatasetState, target: zfs.DatasetState, name: str,
              *, force: bool, destination: str, owner: str | None = None) -> Plan:
    """The plan for one disk, as if ``name`` had been taken; ``owner`` is this job's owner
    mark (a target marked by another job is refused). Raises ConflictError."""
    other = target.owner if owner and target.owner not in (None, owner) else None
    return snapplan.plan_incremental(
        with_planned(source, name), target.snapshots if target.exists else None,
        target_written=target.written_bytes, target_owned=target_owned(target),
        other_owner=other, force=force, dataset=f"{destination}:{disk.target}")


def plan_all(disks: list[ZfsDisk], src: dict, dst: dict, name: str, *, force: bool,
             destination: str, owner: str | None = None) -> dict[str, Plan]:
    """Plans for every disk; raises one ConflictError naming every conflicting disk."""
    plans, conflicts = {}, []
    for disk in disks:
        try:
            plans[disk.key] = plan_disk(disk, src[disk.source], dst[disk.target], name,
                                        force=force, destination=destination, owner=owner)
        except ConflictError as exc:
            conflicts.append(f"{disk.key}: {exc}")
    if conflicts:
        raise ConflictError("; ".join(conflicts))
    return plans


def prune_list(state: zfs.DatasetState, run: ZfsRun, protect: str,
               extra: Snapshot | None = None) -> list[str]:
    """Names retention destroys on one dataset (never ``protect``, only this job's own)."""
    return victims(state.snapshots + ([extra] if extra else []), run, protect)


def victims(snapshots: list[Snapshot], run: ZfsRun, protect: str) -> list[str]:
    """Names retention destroys among ``snapshots`` (never ``protect``, only this job's own)."""
    return [s.name for s in select_for_deletion(snapshots, keep=run.keep,
                                                prefixes=(job_prefix(run.tag),),
                                                protect={protect})]


def syncoid_options(run: ZfsRun, dest: ProxmoxNode, resume: bool) -> SyncoidOptions:
    """How syncoid runs for ``run``. A tree (recursive) keeps syncoid's rollback: a child's
    mountpoint made in its parent on the destination counts as a write into the parent."""
    return SyncoidOptions(compression=run.compression, ssh_key=REPLICATION_KEY,
                          known_hosts_file=KNOWN_HOSTS, ssh_port=dest.ssh_port,
                          bandwidth_limit=run.bwlimit, resume=resume, recursive=run.recursive,
                          rollback_target=run.recursive)


# -----------------------------------------------------------------------------------------------
# Dry run


def plan_rows(disks: list[ZfsDisk], plan: "ZfsPlan", run: ZfsRun,
              name: str) -> list[dict[str, Any]]:
    rows = []
    for disk in disks:
        src, dst = plan.src[disk.source], plan.dst[disk.target]
        if plan.predictable(disk, run):
            pruning = planned_pruning(disk, src, dst, plan.plans[disk.key], run, name)
            on_source, on_target = pruning.on_source + pruning.once_held, pruning.on_target
        else:
            new = planned_snapshot(name, src.snapshots)
            on_source, on_target = prune_list(src, run, name, new), prune_list(dst, run, name, new)
        rows.append({"disk": disk.key, "source": disk.source,
                     "destination": disk.target, "plan": plan.describe(disk),
                     "size": human_bytes(src.referenced),
                     "retention (source)": ", ".join(on_source) or "nothing",
                     "retention (destination)": ", ".join(on_target) or "nothing"})
    return rows


async def publish_plan(job: ReplicaJob, rows: list[dict[str, Any]], name: str,
                       guest: SourceGuest, dropped_notes: list[str] | None = None) -> None:
    facts = {"guest": f"{job.source}/{job.guest}", "destination":
             f"{job.destination}/{job.target_vmid}"}
    notes = list(dropped_notes or [])
    if job.register_vm:
        notes.append(registration_note(job, guest))
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


async def prepare_target(dest: ProxmoxNode, into: str, plan: Plan) -> None:
    """Carry out what a plan asks of the dataset it receives into before the send: only a
    staged copy is ever replaced (it is dapx's scratch copy); a forced plan rolls back."""
    if isinstance(plan, FullSend) and plan.replace_target:
        await zfs.destroy_existing(dest, [into])
    elif getattr(plan, "rollback_to", None) is not None:
        await zfs.rollback(dest, into, plan.rollback_to.name)


def direct_pipe(run: ZfsRun, dest: ProxmoxNode, source: str, into: str, plan: Plan) -> list[str]:
    """The send pipeline for nodes where syncoid cannot list remote snapshots."""
    base = plan.base.name if isinstance(plan, snapplan.Incremental) else None
    return zfs.pipe_argv(source, base, plan.to.name, dest.host, into,
                         key=REPLICATION_KEY, known_hosts=KNOWN_HOSTS, port=dest.ssh_port,
                         rate=run.bwlimit)


async def send_disk(run: ZfsRun, source: ProxmoxNode, dest: ProxmoxNode, disk: ZfsDisk,
                    into: str, plan: Plan, options: SyncoidOptions | None,
                    progress: "TransferProgress", result: DiskResult,
                    marked: bool = False) -> None:
    """Prepare ``into`` (the target, or its staged copy), send (syncoid, or the direct pipe
    when ``options`` is None) on the source node, mark it ours unless ``marked`` (it carried
    this job's mark before the send: an incremental receive keeps it)."""
    await prepare_target(dest, into, plan)
    if options is not None:
        sync = await run_syncoid(source, disk.source, dest.host, into, options,
                                 on_bytes=progress.on_bytes)
    else:
        sync = await run_pipe(source, direct_pipe(run, dest, disk.source, into, plan),
                              f"zfs send {disk.source} -> {dest.name}:{into}",
                              on_bytes=progress.on_bytes)
    result.bytes_sent, result.seconds = sync.bytes_sent, round(sync.seconds, 3)
    if not marked:
        await zfs.mark_owned(dest, into, run.owner)


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


FEATURES_KEPT = 300.0
"""Seconds a process keeps what it found out about two nodes' ZFS (a fleet run's guests then
probe each pair of nodes once, not once per guest)."""
_features: dict[tuple[str, ...], tuple[float, bool]] = {}
"""(source, destination, pools) of a pair syncoid works between -> (when found, resumable
receive on the destination)"""


async def choose_transport(run: ZfsRun, source: ProxmoxNode, dest: ProxmoxNode,
                           disks: list[ZfsDisk]) -> SyncoidOptions | None:
    """syncoid options, or None for the direct pipe where syncoid 2.1 cannot work."""
    # What ZFS can do is a property of its version: ask each side's pool (the destination's
    # dataset may not exist yet). Only a pair found able is kept: a probe that failed for
    # another reason (busy...) must not pin the direct pipe.
    source_pool, dest_pool = disks[0].source.split("/")[0], run.dest_pool.split("/")[0]
    key = (source.name, source.host, source_pool, dest.name, dest.host, dest_pool)
    seen = _features.get(key)
    if seen is not None and time.monotonic() - seen[0] <= FEATURES_KEPT:
        return syncoid_options(run, dest, seen[1])
    source_lists, dest_lists, resume = await asyncio.gather(
        zfs.syncoid_can_list(source, source_pool), zfs.syncoid_can_list(dest, dest_pool),
        zfs.supports_resume(dest, dest_pool))
    if not (source_lists and dest_lists):
        return None
    _features[key] = (time.monotonic(), resume)
    return syncoid_options(run, dest, resume)


async def transfer_all(run: ZfsRun, source: ProxmoxNode, dest: ProxmoxNode, plan: "ZfsPlan",
                       results: dict[str, DiskResult]) -> None:
    """Send every disk in turn (syncoid with ``plan.options``, else the direct pipe) into its
    target, or into its staged copy when a forced resend replaces the target. A failing disk
    is recorded and the next one still runs, except in a resend, which stops at the first.
    With ``options.recursive`` one syncoid run sends the first dataset and its children."""
    progress = Progress(artifact_key("replica-progress", run.source, run.key, run.destination),
                        f"{run.subject}: {run.source} -> {run.destination}")
    await progress.start()
    tracker = TransferProgress(progress, len(plan.disks))
    follower = asyncio.create_task(tracker.follow())
    try:
        if plan.options is not None and plan.options.recursive:
            await send_recursive(run, source, dest, plan, results, tracker)
        else:
            await send_each(run, source, dest, plan, results, tracker)
    finally:
        follower.cancel()
    await progress.update(100.0, force=True)


async def send_each(run: ZfsRun, source: ProxmoxNode, dest: ProxmoxNode, plan: "ZfsPlan",
                    results: dict[str, DiskResult], tracker: "TransferProgress") -> None:
    """One transfer per disk, parents first."""
    failed = ""
    for disk in plan.disks:
        if failed and plan.staged:
            results[disk.key].error = (f"not sent: {failed} failed first (a forced resend "
                                       "stops at the first failing disk)")
            continue
        disk_plan = plan.transfer_plan(disk)
        full = isinstance(disk_plan, FullSend)
        tracker.start_disk(plan.src[disk.source].referenced if full
                           else plan.send_bytes.get(disk.source, 0))
        try:
            await send_disk(run, source, dest, disk, plan.into(disk), disk_plan, plan.options,
                            tracker, results[disk.key], marked=plan.marked(disk, run.owner))
        except DapxError as exc:
            results[disk.key].error = str(exc)
            failed = failed or disk.key
        tracker.done += 1


async def send_recursive(run: ZfsRun, source: ProxmoxNode, dest: ProxmoxNode, plan: "ZfsPlan",
                         results: dict[str, DiskResult], tracker: "TransferProgress") -> None:
    """``syncoid --recursive`` for ``disks[0]`` and its children: prepare every target (or
    staged copy), one transfer (its bytes are reported on the first row), mark every one
    ours. A failure is recorded on every dataset: syncoid does not say which child it
    stopped at."""
    disks, root = plan.disks, plan.disks[0]
    tracker.start_disk(sum(plan.src[d.source].referenced for d in disks
                           if isinstance(plan.transfer_plan(d), FullSend)))
    try:
        for disk in disks:
            await prepare_target(dest, plan.into(disk), plan.transfer_plan(disk))
        sync = await run_syncoid(source, root.source, dest.host, plan.into(root), plan.options,
                                 on_bytes=tracker.on_bytes)
        results[root.key].bytes_sent = sync.bytes_sent
        results[root.key].seconds = round(sync.seconds, 3)
        for disk in disks:
            await zfs.mark_owned(dest, plan.into(disk), run.owner)
    except DapxError as exc:
        for disk in disks:
            results[disk.key].error = str(exc)
    tracker.done = len(disks)


async def finish_resend(dest: ProxmoxNode, plan: "ZfsPlan",
                        results: dict[str, DiskResult]) -> None:
    """Swap the staged copies in when every disk arrived; otherwise say why they wait."""
    staged = [d for d in plan.disks if d.key in plan.staged]
    failed = [d.key for d in plan.disks if results[d.key].error]
    why = ""
    if failed:
        why = (f"received beside the old copy but not swapped in: {failed[0]} failed (the old "
               "copy stays in use; the next forced run reuses this one)")
    else:
        roots = [t for t in plan.staging.roots if t in {d.target for d in staged}]
        why = await resend.swap_all(dest, plan.staging, roots)
    for disk in staged:
        if why and not results[disk.key].error:
            results[disk.key].error = why


async def retention(run: ZfsRun, source: ProxmoxNode, dest: ProxmoxNode, plan: "ZfsPlan",
                    results: dict[str, DiskResult], name: str) -> None:
    """Prune both sides of the disks that made it; never the snapshot now common. A plain
    incremental's victims follow from what was read before the transfer (what the target
    holds after it is known); any other disk's (a full send, a resend, a tree) from both
    sides read again. Each target is seen holding ``name`` before anything goes."""
    ok = [d for d in plan.disks if not results[d.key].error]
    known = [d for d in ok if plan.predictable(d, run)]
    prunes = {d.key: planned_pruning(d, plan.src[d.source], plan.dst[d.target],
                                     plan.plans[d.key], run, name) for d in known}
    reread = [d for d in ok if d.key not in prunes]
    if reread:
        src, dst = await asyncio.gather(zfs.dataset_states(source, [d.source for d in reread]),
                                        zfs.dataset_states(dest, [d.target for d in reread]))
        for disk in reread:
            found = retention_victims(disk, src[disk.source], dst[disk.target], run, name)
            if isinstance(found, str):
                results[disk.key].error = found
            else:
                prunes[disk.key] = Pruning(disk.source, disk.target, name, *found)
    if not prunes:
        return
    done = await prune_both(source, dest, list(prunes.values()))
    for key, pruning in prunes.items():
        await record_pruned(source, dest, pruning, done[pruning.target], results[key])


@dataclass(frozen=True)
class Pruning:
    """What retention destroys after one disk's copy."""

    source: str
    target: str
    holds: str
    """The snapshot just sent: the target must hold it before it loses anything."""
    on_source: list[str]
    on_target: list[str]
    once_held: list[str] = field(default_factory=list)
    """Source snapshots destroyed only once the target is seen holding ``holds``: the
    previous common one (``keep`` 1), the only base left should the copy not have landed."""


@dataclass
class Pruned:
    """What ``prune_both`` did for one disk: why each side failed ("" when it did not)."""

    source_why: str = ""
    target_why: str = ""
    on_source: list[str] = field(default_factory=list)
    on_target: list[str] = field(default_factory=list)

    @property
    def held(self) -> bool:
        return not self.target_why.startswith(zfs.NOT_HELD)


def planned_pruning(disk: ZfsDisk, src: zfs.DatasetState, dst: zfs.DatasetState,
                    plan: snapplan.Incremental, run: ZfsRun, name: str) -> Pruning:
    """Retention after a plain incremental, from both sides as read before it: the source's
    snapshots and ``name``; the target's up to the base and what ``zfs send -I`` carried."""
    source_after = with_planned(src, name)
    on_source = victims(source_after, run, name)
    on_target = victims(snapplan.after_receive(source_after, dst.snapshots, plan), run, name)
    base = next(s.name for s in source_after if s.guid == plan.base.guid)
    return Pruning(disk.source, disk.target, name, [n for n in on_source if n != base],
                   on_target, [base] if base in on_source else [])


async def prune_both(source: ProxmoxNode, dest: ProxmoxNode,
                     prunes: list[Pruning]) -> dict[str, Pruned]:
    """Carry out ``prunes``, one round trip per side, side by side (each target only once it
    is seen holding its new snapshot); then, where the previous common snapshot goes, a
    second round trip on the source for the targets seen holding the new one. Out: {target:
    Pruned}."""
    async def on(node: ProxmoxNode, names: dict[str, list[str]],
                 holding: dict[str, str] | None = None) -> dict[str, str]:
        if not any(names.values()) and not holding:
            return {}
        return await zfs.destroy_snapshot_sets(node, names, holding)

    by_source = {p.source: p for p in prunes}
    src_out, dst_out = await asyncio.gather(
        on(source, {p.source: p.on_source for p in prunes}),
        on(dest, {p.target: p.on_target for p in prunes}, {p.target: p.holds for p in prunes}))
    done = {p.target: Pruned(src_out.get(p.source, ""), dst_out.get(p.target, ""))
            for p in prunes}
    later = {p.source: p.once_held for p in prunes
             if p.once_held and done[p.target].held and not done[p.target].source_why}
    for ds, why in (await on(source, later)).items():
        done[by_source[ds].target].source_why = why
    for p in prunes:
        result = done[p.target]
        if not result.source_why:
            result.on_source = p.on_source + (p.once_held if p.source in later else [])
        if not result.target_why:
            result.on_target = p.on_target
    return done


async def record_pruned(source: ProxmoxNode, dest: ProxmoxNode, pruning: Pruning,
                        done: Pruned, result: DiskResult) -> None:
    """Put what ``prune_both`` did for one disk into its result. A side zfs found busy is
    tried again with retries, then left to the next run (the copy is complete); another
    failure fails the disk."""
    if not done.held:
        result.error = not_held(pruning)
        return
    result.common = pruning.holds
    result.pruned_source, result.pruned_dest = done.on_source, done.on_target
    for side, node, dataset, names, why in failed_sides(source, dest, pruning, done):
        if "busy" not in why.lower():
            result.error = f"pruning {node.name}:{dataset} failed: {why}"
            continue
        try:
            setattr(result, side, await zfs.destroy_snapshots(node, dataset, names))
        except TransientError as exc:  # still busy after the retries: the copy stands
            _log_prune_deferred(result.disk, exc)


def not_held(pruning: Pruning) -> str:
    """Why nothing of a disk was pruned: its target does not hold the snapshot just sent."""
    return f"after the transfer {pruning.target} does not hold {pruning.holds}"


def failed_sides(source: ProxmoxNode, dest: ProxmoxNode, pruning: Pruning,
                 done: Pruned) -> list[tuple[str, ProxmoxNode, str, list[str], str]]:
    """Each side of one disk whose pruning failed: (its result field, node, dataset, the
    names it was to destroy, zfs's last line)."""
    sides = (("pruned_source", source, pruning.source, pruning.on_source + pruning.once_held,
              done.source_why),
             ("pruned_dest", dest, pruning.target, pruning.on_target, done.target_why))
    return [side for side in sides if side[4]]


def retention_victims(disk: ZfsDisk, src: zfs.DatasetState, dst: zfs.DatasetState,
                      run: ZfsRun, name: str) -> tuple[list[str], list[str]] | str:
    """(what retention destroys on the source, on the destination) once ``name`` is the
    newest snapshot both sides hold; else why nothing may be pruned (never the snapshot now
    common, only this job's own)."""
    common = snapplan.newest_common(src.snapshots, dst.snapshots)
    if common is None or common.name != name:
        return f"after the transfer {disk.target} does not hold {name}"
    return prune_list(src, run, name), prune_list(dst, run, name)


def _log_prune_deferred(disk: str, exc: Exception) -> None:
    from prefect.logging import get_run_logger

    get_run_logger().warning("pruning %s deferred to the next run (the copy is complete): %s",
                             disk, exc)


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
    staging: resend.Staging
    staged: dict[str, Plan] = field(default_factory=dict)
    """disk key -> the transfer into its staged copy (disks a forced resend replaces)"""
    send_bytes: dict[str, int] = field(default_factory=dict)
    """source dataset -> what its incremental send carries (progress; OpenZFS only)"""

    def unused_copies(self) -> list[str]:
        """Scratch copies a cut resend left that this run does not resend into (the target
        shares a snapshot with the source again): dapx's own, removed by a real run."""
        staged = {self.staging.incoming[d.target] for d in self.disks if d.key in self.staged}
        return [c for c in self.staging.incoming.values()
                if c not in staged and self.dst[c].exists]

    def into(self, disk: ZfsDisk) -> str:
        """The dataset this run receives the disk into: its target or its staged copy."""
        return self.staging.incoming[disk.target] if disk.key in self.staged else disk.target

    def marked(self, disk: ZfsDisk, owner: str) -> bool:
        """The dataset this run receives into already carries ``owner``'s mark (an
        incremental into this job's target: no need to mark it again)."""
        into = self.into(disk)
        return (into == disk.target and isinstance(self.transfer_plan(disk), snapplan.Incremental)
                and self.dst[into].owner == owner)

    def transfer_plan(self, disk: ZfsDisk) -> Plan:
        return self.staged.get(disk.key, self.plans[disk.key])

    def holds_under(self, parent: str) -> bool:
        """A target of this run exists below ``parent`` (so ``parent`` exists)."""
        return any(self.dst[d.target].exists and d.target.startswith(parent + "/")
                   for d in self.disks)

    def predictable(self, disk: ZfsDisk, run: ZfsRun) -> bool:
        """The disk's target after the transfer follows from what was read before it: an
        incremental into the target itself (not a full send, a resend's copy, or a tree)."""
        return (disk.key not in self.staged and not run.recursive
                and isinstance(self.plans[disk.key], snapplan.Incremental))

    def describe(self, disk: ZfsDisk) -> str:
        text = snapplan.describe(self.plans[disk.key])
        staged = self.staged.get(disk.key)
        if isinstance(staged, snapplan.Incremental):
            text += f" (resuming the copy a cut run left, from {staged.base.name})"
        return text

    def results(self) -> dict[str, DiskResult]:
        return {d.key: DiskResult(disk=d.key, source_dataset=d.source, dest_dataset=d.target,
                                  plan=self.describe(d)) for d in self.disks}


async def read_and_plan(run: ZfsRun, source: ProxmoxNode, dest: ProxmoxNode,
                        disks: list[ZfsDisk], name: str, *, force: bool, dry_run: bool,
                        checks: tuple = (), trust: Awaitable[None] | None = None) -> ZfsPlan:
    """Both sides' states (targets and their scratch copies), the transport, node trust (the
    caller's ``trust`` when it started the check already), no receive still running into a
    target, and the caller's ``checks`` (awaitables) at once (each is a round trip); then
    what a swap cut by a dead run left is settled (a dry run only pretends), what was written
    into each target measured, and the plans made.
    Raises PermanentError for a missing source dataset, ConflictError naming every conflict
    or a running receive, and whatever a check raises."""
    tree = run.recursive
    staging = resend.staging_for([d.target for d in disks], tree)

    async def dest_side() -> dict[str, zfs.DatasetState]:
        # Read with the check that no receive runs into a target (and what was written, where
        # ZFS can tell at once); then settle a cut swap and measure what is left to measure
        # (without waiting for the source side and the checks).
        found = await zfs.dataset_states(
            dest, staging.all_names(), written=True,
            refuse_receiving=list(staging.incoming) + list(staging.incoming.values()))
        found = await resend.settle_swaps(dest, staging, found, dry_run=dry_run)
        await measure_written(dest, [found[d.target] for d in disks])
        return found

    src, dst, options, *_ = await asyncio.gather(
        zfs.dataset_states(source, [d.source for d in disks], written=True), dest_side(),
        choose_transport(run, source, dest, disks),
        check_trust(source, dest, master=True) if trust is None else trust, *checks)
    missing = [d.source for d in disks if not src[d.source].exists]
    if missing:
        raise PermanentError(f"source datasets missing on {run.source}: {', '.join(missing)}")
    plans = plan_all(disks, src, dst, name, force=force, destination=run.destination,
                     owner=run.owner)
    staged = resend.staged_plans(plans, {d.key: with_planned(src[d.source], name) for d in disks},
                                 staging, dst, {d.key: d.target for d in disks}, tree)
    return ZfsPlan(disks, src, dst, plans, options, staging, staged)


async def measure_written(dest: ProxmoxNode, targets: list[zfs.DatasetState]) -> None:
    """Fill in ``written`` for every target that has a snapshot and was not measured with the
    states (ZFS without the property, or states read again): the probe, one round trip."""
    heads = {t.name: t.snapshots[-1].name for t in targets
             if t.exists and t.snapshots and t.written is None}
    if not heads:
        return
    written = await zfs.head_written(dest, heads, probe=True)
    for target in targets:
        if target.name in heads:
            target.written = written.get(target.name)


async def measure_sends(source: ProxmoxNode, plan: ZfsPlan) -> None:
    """Fill ``plan.send_bytes`` for the incremental disks, where the node can tell (its ZFS
    has ``written``: the states were read with it)."""
    bases = {d.source: p.base.name for d in plan.disks
             if isinstance(p := plan.transfer_plan(d), snapplan.Incremental)}
    if bases and all(plan.src[d].written is not None for d in bases):
        plan.send_bytes = await zfs.send_sizes(source, bases)


async def replicate_datasets(run: ZfsRun, source: ProxmoxNode, dest: ProxmoxNode,
                             plan: ZfsPlan, results: dict[str, DiskResult], name: str,
                             parent: str | None,
                             then: Callable[[], Awaitable[None]] | None = None) -> None:
    """Snapshot every source dataset atomically (meanwhile, on the destination: create
    ``parent`` unless None or a target is there already, and the scratch parent of a resend;
    remove scratch copies no longer needed), transfer, swap a resend in, prune both sides.
    Failures are recorded in ``results``. ``then()`` (what follows a complete copy:
    registration...) runs beside the pruning when every disk arrived."""
    steps = [zfs.take_snapshots(source, [d.source for d in plan.disks], name),
             measure_sends(source, plan)]
    parents = ([parent] if parent and not plan.holds_under(parent) else []) + (
        plan.staging.parents() if plan.staged else [])
    steps += [zfs.create_parents(dest, p) for p in parents]
    if plan.unused_copies():
        steps.append(zfs.destroy_existing(dest, plan.unused_copies()))
    await asyncio.gather(*steps)
    await transfer_all(run, source, dest, plan, results)
    if plan.staged:
        await finish_resend(dest, plan, results)
    arrived = not any(r.error for r in results.values())
    await gather_all(retention(run, source, dest, plan, results, name),
                     *([then()] if then is not None and arrived else []))


async def _replicate(job: ReplicaJob, source: ProxmoxNode, dest: ProxmoxNode, dry_run: bool,
                     force: bool, result: ReplicaResult,
                     protect: Callable[[], Awaitable[None]]) -> None:
    result.snapshot = new_snapshot_name(job_tag(job), datetime.now(timezone.utc))
    name, run = result.snapshot, guest_run(job)
    checked_at: float | None = None  # when the VMID check last reached the cluster's API

    async def check_vmid() -> None:
        nonlocal checked_at
        if not await check_vmid_available(job, source, dest, guest.kind, api_optional=True):
            checked_at = time.monotonic()

    # The trust check needs no guest: it starts first, and its login stays for syncoid.
    async with started(check_trust(source, dest, master=True)) as trust:
        guest, _ = await asyncio.gather(read_guest(source, job.guest), connect_ahead(dest))
        disks = zfs_disks(guest, job)
        plan = await read_and_plan(run, source, dest, disks, name, force=force,
                                   dry_run=dry_run, trust=trust,
                                   checks=(check_vmid(),) if job.register_vm else
                                   (check_not_failed_over(job, dest),))
    results = plan.results()
    result.disks = list(results.values())
    parent = destination_dataset(job.dest_pool, job.subfolder, "x").rsplit("/", 1)[0]
    if dry_run:
        result.dropped = await dropped.dropped_disks(job, run, source, dest, disks, parent,
                                                     remove=False)
        await publish_plan(job, plan_rows(disks, plan, run, name), name, guest, result.dropped)
        return

    async def after_copy() -> None:
        # A cluster check made moments ago (a small increment) need not be made again.
        fresh = checked_at is not None and time.monotonic() - checked_at < FRESH_CHECK
        found, *_ = await gather_all(
            dropped.dropped_disks(job, run, source, dest, disks, parent,
                                  remove=job.remove_dropped_disks),
            register_after_copy(job, source, dest, result, "zfs", guest=guest,
                                cluster_checked=fresh), protect())
        result.dropped = found

    await replicate_datasets(run, source, dest, plan, results, name, parent, then=after_copy)


@asynccontextmanager
async def started(step: Awaitable[T]) -> AsyncIterator["asyncio.Future[T]"]:
    """``step`` running from here on, beside what the block does, which awaits it. Leaving
    the block first cancels it (a failure it had then goes unreported: the block's counts)."""
    future = asyncio.ensure_future(step)
    try:
        yield future
    finally:
        if not future.done():
            future.cancel()
        elif not future.cancelled():
            future.exception()


FRESH_CHECK = 60.0
"""Seconds a pre-copy cluster VMID check stands for registration (a longer copy checks
again: another guest may have taken the VMID meanwhile)."""


async def gather_all(*steps: Awaitable[Any]) -> list[Any]:
    """Run ``steps`` side by side to the end; then raise the first failure, if any."""
    done = await asyncio.gather(*steps, return_exceptions=True)
    for outcome in done:
        if isinstance(outcome, BaseException):
            raise outcome
    return done


async def register_after_copy(job: ReplicaJob, source: ProxmoxNode, dest: ProxmoxNode,
                              result: ReplicaResult, kind: str, storage: str | None = None,
                              guest: SourceGuest | None = None,
                              cluster_checked: bool = False) -> None:
    """Register the copy when the job says so and every disk made it. A registration that
    fails (the API is down...) does not undo the copy: it is recorded for the run to fail
    naming it, and the next run registers. ``cluster_checked``: the cluster's VMID check
    passed moments ago (the destination's own files are checked again in any case)."""
    if not job.register_vm or result.failures:
        return
    try:
        result.registration = str(await register_guest(job, source, dest, kind, storage,
                                                       guest=guest,
                                                       cluster_checked=cluster_checked))
    except DapxError as exc:
        result.registration, result.registration_error = "failed", str(exc)


async def run_guest_replica(job: ReplicaJob, dry_run: bool, force: bool, lock_wait: float,
                            replicate: Callable[..., Awaitable[None]]) -> ReplicaResult:
    """What both guest replica flows do around ``replicate(job, source, dest, dry_run, force,
    result, protect)``: load the nodes, hold the source guest's lock (not for a dry run),
    publish the result table, and fail at the end naming every disk that failed, or the
    registration that failed after the copy. ``replicate`` awaits ``protect()`` once every
    disk arrived (the guest's data is protected then, whatever follows the copy)."""
    started = time.monotonic()
    source, dest = await aload_nodes(job.source, job.destination)
    result = ReplicaResult(source=job.source, guest=job.guest, destination=job.destination,
                           dest_vmid=job.target_vmid, dry_run=dry_run)

    async def protect() -> None:
        await record_protection("replica", job.source, job.guest, job.destination,
                                ref=result.snapshot, bytes_sent=result.bytes_sent,
                                seconds=round(time.monotonic() - started, 3))

    await run_exclusively(guest_lock_name(job.source, job.guest),
                          f"replicating guest {job.guest} from {job.source} to {job.destination}",
                          lock_wait, dry_run,
                          lambda plan_only: replicate(job, source, dest, plan_only, force, result,
                                                      protect))
    result.seconds = round(time.monotonic() - started, 3)
    if not dry_run:
        await publish_result(result)
    if result.failures:
        raise PermanentError(f"replication of guest {job.guest} to {job.destination} failed "
                             f"for {len(result.failures)} disk(s): {'; '.join(result.failures)}")
    if result.registration_error:
        raise PermanentError(f"guest {job.guest} was copied to {job.destination} (every disk) "
                             f"but not registered as VMID {job.target_vmid}: "
                             f"{result.registration_error}. The next run registers it")
    return result


@flow(name="zfs-replica", log_prints=False, **KEPT_RESULTS, **job_hooks())
async def zfs_replica(job: ReplicaJob, dry_run: bool = False, force: bool = False,
                      lock_wait: float = DEFAULT_WAIT) -> ReplicaResult:
    """Replicate guest ``job.guest`` from ``job.source`` to ``job.destination`` with syncoid.

    ``dry_run`` publishes the plan and changes nothing; ``force`` lets the plan roll back a
    diverged or written target (discarding what was written) or send again in full one that
    shares nothing with the source (received beside it, swapped in when every disk arrived);
    never a target of another job. ``lock_wait`` is how long to wait for another run of the
    same guest and destination. Raises InputError for bad input, ConflictError for a conflict
    or a receive still running into a target, LockTimeout, PermanentError naming failed disks
    (or a registration that failed after the copy).
    """
    return await run_guest_replica(job, dry_run, force, lock_wait, _replicate)


def result_rows(disks: list[DiskResult]) -> list[dict[str, Any]]:
    """The result table's rows, one per disk (or dataset); run-level facts (registration) go
    in the table's description, once."""
    return [{"disk": d.disk, "destination": d.dest_dataset, "plan": d.plan,
             "sent": human_bytes(d.bytes_sent), "seconds": d.seconds,
             "common snapshot": d.common or "-",
             "pruned": len(d.pruned_source) + len(d.pruned_dest), "error": d.error or "-"}
            for d in disks]


def dropped_rows(notes: list[str]) -> list[dict[str, Any]]:
    """Result-table rows for disks the guest no longer has (what was kept or removed)."""
    return [{"disk": "(dropped)", "destination": note, "plan": "-", "sent": "-", "seconds": 0,
             "common snapshot": "-", "pruned": 0, "error": "-"} for note in notes]


async def publish_result(result: ReplicaResult) -> None:
    registration = result.registration + (f": {result.registration_error}"
                                          if result.registration_error else "")
    rows = result_rows(result.disks) + dropped_rows(result.dropped)
    await publish_table(artifact_key("replica-result", result.source, result.guest,
                                     result.destination), rows,
                        f"guest {result.guest}: {result.source} -> {result.destination}/"
                        f"{result.dest_vmid}, {human_bytes(result.bytes_sent)} sent in "
                        f"{result.seconds:g} s; registration: {registration or '-'}")
