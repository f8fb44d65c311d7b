"""``snapshot-retention``: each replica job's ``keep`` applied on both sides (S4, X3).

Shape of a run: the replica jobs (deployments tagged ``dapx-job``: zfs-, btrfs- and
dataset-replica) and ONE listing per node involved, all at once; for every disk of every job
a pure plan (``dapx.core.replica_retention``): only that job's own ``dapx_<tag>_`` snapshots
are candidates, the newest snapshot both sides share (by GUID) always stays, and of the rest
the newest ``keep`` stay on each side. A dry run publishes the plan (what would go and why)
and stops. Otherwise, per job, holding the job's replication lock (no replica of that guest
runs meanwhile), both sides are read again, planned again and pruned. A failing job does not
stop the others; the run fails at the end naming each failure. Scheduled as the built-in
``snapshot-retention/default`` deployment.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Literal, Optional

from prefect import flow
from pydantic import BaseModel, Field

from dapx.flows import KEPT_RESULTS
from dapx.blocks.manage import aload_nodes
from dapx.blocks.node import ProxmoxNode
from dapx.core.btrfs_argv import snapshots_of
from dapx.core.jobspec import DatasetJob, NotifyMode, ReplicaJob
from dapx.core.replica_retention import RetentionPlan, plan_retention
from dapx.core.snapnames import job_prefix
from dapx.core.snapshots import Snapshot
from dapx.core.snapview import BtrfsMount, NodeListing, ZfsSnap
from dapx.errors import DapxError, InputError, PermanentError
from dapx.flows.btrfs_replica import btrfs_disks, btrfs_storage
from dapx.flows.dataset import dataset_pairs, dataset_tag
from dapx.flows.replica import job_tag, zfs_disks
from dapx.flows.hooks import job_hooks
from dapx.tasks import btrfs, zfs
from dapx.tasks.guests import SourceGuest
from dapx.tasks.jobs import JobRef, replica_jobs
from dapx.tasks.locks import DEFAULT_WAIT, dataset_lock_name, exclusive, guest_lock_name
from dapx.tasks.snaplist import list_node_snapshots
from dapx.tasks.ssh import node_sessions
from dapx.ui_extensions.artifacts import artifact_key, publish_table


class SideResult(BaseModel):
    """Retention on one side of one disk of one job."""

    job: str
    disk: str
    side: Literal["source", "destination"]
    node: str
    where: str = Field(description="Dataset, or BTRFS subvolume path.")
    common: Optional[str] = Field(default=None, description="Newest snapshot both sides share.")
    removed: list[str] = Field(default_factory=list, description="Deleted (or, for a dry "
                               "run, to delete).")
    kept: list[str] = Field(default_factory=list, description="The job's snapshots kept.")
    reasons: dict[str, str] = Field(default_factory=dict, description="Why, per snapshot.")
    foreign: int = Field(default=0, description="Snapshots not made by this job (untouched).")


class RetentionResult(BaseModel):
    """What a snapshot-retention run did (or would do)."""

    dry_run: bool = False
    jobs: list[str] = Field(default_factory=list, description="Jobs looked at.")
    sides: list[SideResult] = Field(default_factory=list)
    failures: list[str] = Field(default_factory=list)
    notes: list[str] = Field(default_factory=list)

    @property
    def removed(self) -> int:
        return sum(len(s.removed) for s in self.sides)

    @property
    def kept(self) -> int:
        return sum(len(s.kept) for s in self.sides)

    def __str__(self) -> str:
        verb = "would remove" if self.dry_run else "removed"
        lines = [f"snapshot retention over {len(self.jobs)} job(s): {verb} {self.removed}, "
                 f"kept {self.kept}"]
        for s in self.sides:
            for name in s.removed:
                lines.append(f"  {verb} {s.node}:{s.where}@{name} ({s.job}: {s.reasons[name]})")
        return "\n".join(lines + [f"  failed: {f}" for f in self.failures]
                         + [f"  note: {n}" for n in self.notes])

    def rows(self) -> list[dict]:
        return [{"job": s.job, "disk": s.disk, "side": s.side, "node": s.node,
                 "where": s.where, "common": s.common or "-",
                 "removed": ", ".join(s.removed) or "-", "kept": ", ".join(s.kept) or "-",
                 "not ours": s.foreign} for s in self.sides]


# -----------------------------------------------------------------------------------------------
# Where each job's snapshots are (pure)


@dataclass(frozen=True)
class Place:
    """One side of one disk: a ZFS dataset, or a BTRFS subvolume (mount + relative path)."""

    node: str
    kind: Literal["zfs", "btrfs"]
    where: str
    mount: str = ""
    received: bool = False

    def snapshots(self, listing: NodeListing) -> list[Snapshot]:
        if self.kind == "zfs":
            return [s.snapshot() for s in listing.zfs.get(self.where, [])]
        mount = next((m for m in listing.btrfs if m.mount == self.mount), None)
        return snapshots_of(mount.subvolumes, self.where, received=self.received) if mount \
            else []

    def path(self, name: str) -> str:
        return f"{self.mount}/{self.where}@{name}"


@dataclass(frozen=True)
class JobDisks:
    """A job's disks (key, source place, destination place), prefix, keep and lock."""

    ref: JobRef
    prefix: str
    pairs: list[tuple[str, Place, Place]]
    lock: str


def job_disks(ref: JobRef, source: NodeListing, dest: NodeListing) -> JobDisks:
    """Where the job's snapshots are on both sides. Raises InputError (from the replica
    flows' own mapping) when the guest or its disks no longer fit the job."""
    job = ref.job
    if isinstance(job, DatasetJob):
        tree = sorted(d for d in source.datasets
                      if d == job.dataset or (job.recursive and d.startswith(job.dataset + "/")))
        if not tree:
            raise InputError(f"dataset {job.dataset} is not on {job.source}")
        pairs = [(d.key, Place(job.source, "zfs", d.source), Place(job.destination, "zfs",
                                                                    d.target))
                 for d in dataset_pairs(job, tree)]
        return JobDisks(ref, job_prefix(dataset_tag(job)), pairs,
                        dataset_lock_name(job.source, job.dataset, job.destination))
    if job.guest not in source.configs:
        raise InputError(f"guest {job.guest} is not on {job.source} any more")
    kind, text = source.configs[job.guest]
    guest = SourceGuest(job.source, job.guest, kind, text, source.storages)  # type: ignore[arg-type]
    lock = guest_lock_name(job.source, job.guest)
    if ref.flow == "btrfs-replica":
        sid = btrfs_storage(dest.storages, job.dest_pool, job.destination)
        pairs = []
        for d in btrfs_disks(guest, job, dest.storages, sid):
            mount = d.source[: -len(d.source_rel) - 1]
            pairs.append((d.key, Place(job.source, "btrfs", d.source_rel, mount),
                          Place(job.destination, "btrfs", d.received_rel, d.dest_mount, True)))
        return JobDisks(ref, job_prefix(job_tag(job)), pairs, lock)
    pairs = [(d.key, Place(job.source, "zfs", d.source), Place(job.destination, "zfs", d.target))
             for d in zfs_disks(guest, job)]
    return JobDisks(ref, job_prefix(job_tag(job)), pairs, lock)


def side_results(disks: JobDisks, key: str, src: Place, dst: Place,
                 plan: RetentionPlan) -> list[SideResult]:
    found = []
    for side, place, part in (("source", src, plan.source), ("destination", dst, plan.target)):
        found.append(SideResult(job=disks.ref.name, disk=key, side=side, node=place.node,
                                where=place.where if place.kind == "zfs"
                                else f"{place.mount}/{place.where}",
                                common=plan.common, removed=part.delete, kept=part.kept,
                                reasons={d.name: d.reason for d in part.decisions},
                                foreign=part.foreign))
    return found


def disk_plans(disks: JobDisks, listings: dict[str, NodeListing]
               ) -> list[tuple[str, Place, Place, RetentionPlan]]:
    """The plan of every disk of one job, from the listings."""
    job: ReplicaJob | DatasetJob = disks.ref.job
    return [(key, src, dst, plan_retention(src.snapshots(listings[src.node]),
                                           dst.snapshots(listings[dst.node]),
                                           keep=job.keep, prefix=disks.prefix))
            for key, src, dst in disks.pairs]


def plan_job(disks: JobDisks, listings: dict[str, NodeListing]) -> list[SideResult]:
    """Both sides of every disk of one job, planned from the listings."""
    return [side for key, src, dst, plan in disk_plans(disks, listings)
            for side in side_results(disks, key, src, dst, plan)]


# -----------------------------------------------------------------------------------------------
# Carrying it out


async def fresh_listing(node: ProxmoxNode, places: list[Place]) -> NodeListing:
    """The snapshots of ``places`` on ``node`` read again (one command per kind)."""
    listing = NodeListing()
    datasets = sorted({p.where for p in places if p.kind == "zfs"})
    if datasets:
        for name, state in (await zfs.dataset_states(node, datasets)).items():
            listing.zfs[name] = [ZfsSnap(s.name, s.guid, s.createtxg, s.creation)
                                 for s in state.snapshots]
    for mount in sorted({p.mount for p in places if p.kind == "btrfs"}):
        listing.btrfs.append(BtrfsMount(mount, await btrfs.list_subvolumes(node, mount)))
    return listing


async def delete(node: ProxmoxNode, place: Place, names: list[str]) -> None:
    if not names:
        return
    if place.kind == "zfs":
        await zfs.destroy_snapshots(node, place.where, names)
    else:
        await btrfs.delete_subvolumes(node, [place.path(n) for n in names])


async def prune_job(disks: JobDisks, blocks: dict[str, ProxmoxNode],
                    lock_wait: float) -> list[SideResult]:
    """Under the job's lock: read both sides again, plan again, delete. Returns the sides."""
    job = disks.ref.job
    async with exclusive(disks.lock, f"replicating or pruning {disks.ref.name}", lock_wait):
        fresh = dict(zip((job.source, job.destination), await asyncio.gather(
            fresh_listing(blocks[job.source], [p[1] for p in disks.pairs]),
            fresh_listing(blocks[job.destination], [p[2] for p in disks.pairs]))))
        sides = []
        for key, src, dst, plan in disk_plans(disks, fresh):
            await delete(blocks[src.node], src, plan.source.delete)
            await delete(blocks[dst.node], dst, plan.target.delete)
            sides += side_results(disks, key, src, dst, plan)
    return sides


async def _read(names: Optional[list[str]]) -> tuple[list[JobRef], list[str]]:
    refs, notes = await replica_jobs()
    if names:
        known = {r.name for r in refs}
        unknown = [n for n in names if n not in known]
        if unknown:
            raise InputError(f"unknown replica job(s): {', '.join(unknown)} (jobs: "
                             f"{', '.join(sorted(known)) or 'none'})")
        refs = [r for r in refs if r.name in names]
    return refs, notes


@flow(name="snapshot-retention", log_prints=False, **KEPT_RESULTS, **job_hooks())
async def snapshot_retention(dry_run: bool = False, jobs: Optional[list[str]] = None,
                             lock_wait: float = DEFAULT_WAIT,
                             notify: NotifyMode = "failure") -> RetentionResult:
    """S4/X3: apply every replica job's ``keep`` (or only ``jobs``) to the snapshots the
    product made, on the source and the destination. ``dry_run`` lists what would be deleted
    and why. Never deletes the newest snapshot both sides share, nor any snapshot another
    job, sanoid, syncoid, Proxmox or a person made. ``notify`` is the job's notification mode.

    Raises InputError for an unknown job name; PermanentError at the end naming each job
    that failed (the others are still pruned).
    """
    refs, notes = await _read(jobs)
    result = RetentionResult(dry_run=dry_run, jobs=[r.name for r in refs], notes=notes)
    wanted = sorted({r.job.source for r in refs} | {r.job.destination for r in refs})
    blocks = {b.name: b for b in await aload_nodes(*wanted)} if wanted else {}
    async with node_sessions():
        listed = await asyncio.gather(*(list_node_snapshots(blocks[n]) for n in wanted),
                                      return_exceptions=True)
        listings = {n: found for n, found in zip(wanted, listed)
                    if not isinstance(found, BaseException)}
        for ref in refs:
            await _one_job(ref, listings, blocks, result, dry_run, lock_wait)
    await publish_table(artifact_key("snapshot-retention", "plan" if dry_run else "result"),
                        result.rows() or [{"job": "none"}], str(result).splitlines()[0])
    if result.failures:
        raise PermanentError(f"snapshot retention failed for {len(result.failures)} job(s): "
                             f"{'; '.join(result.failures)}")
    return result


async def _one_job(ref: JobRef, listings: dict[str, NodeListing],
                   blocks: dict[str, ProxmoxNode], result: RetentionResult, dry_run: bool,
                   lock_wait: float) -> None:
    """Plan (and unless ``dry_run`` carry out) one job; a failure is recorded, not raised."""
    job = ref.job
    missing = [n for n in (job.source, job.destination) if n not in listings]
    if missing:
        result.failures.append(f"{ref.name}: cannot read {', '.join(missing)}")
        return
    try:
        disks = job_disks(ref, listings[job.source], listings[job.destination])
        if dry_run:
            result.sides += plan_job(disks, listings)
        elif any(s.removed for s in plan_job(disks, listings)):
            result.sides += await prune_job(disks, blocks, lock_wait)
        else:
            result.sides += plan_job(disks, listings)
    except DapxError as exc:
        result.failures.append(f"{ref.name}: {exc}")
