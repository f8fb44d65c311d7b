"""``dataset-replica``: plain dataset mode of R1, ``pool/ds`` on one node to ``pool/ds`` on
another, with its children when ``recursive``.

The same steps as ``zfs-replica`` (``dapx.flows.replica``: read both sides, plan every
dataset, dry run, lock, one atomic snapshot, transfer on the source node, retention, result
table); only what is a guest's (config, disks, registration) is replaced by the dataset and,
when recursive, its descendants as listed on the source (a descendant with a name dapx
refuses stops the run before anything changes). Recursive transfers are one
``syncoid --recursive``; on nodes where syncoid cannot run, one direct pipe per dataset,
parents first.
"""

from __future__ import annotations

import hashlib
import re
import time
from datetime import datetime, timezone

from prefect import flow
from pydantic import BaseModel, Field

from dapx.flows import KEPT_RESULTS
from dapx.blocks.manage import aload_nodes
from dapx.blocks.node import ProxmoxNode
from dapx.core.jobspec import DatasetJob
from dapx.core.snapnames import new_snapshot_name
from dapx.errors import PermanentError
from dapx.flows.hooks import job_hooks, record_protection
from dapx.flows.replica import (
    DiskResult,
    ZfsDisk,
    ZfsRun,
    plan_rows,
    publish_run_plan,
    read_and_plan,
    replicate_datasets,
    result_rows,
)
from dapx.tasks import zfs
from dapx.tasks.locks import DEFAULT_WAIT, dataset_lock_name, run_exclusively
from dapx.ui_extensions.artifacts import artifact_key, publish_table

_TAG_MAX = 63


class DatasetResult(BaseModel):
    """What one dataset replication run did (returned by the flow, shown as a table)."""

    source: str
    dataset: str
    destination: str
    dest_dataset: str
    snapshot: str = Field(default="", description="Snapshot this run took (planned, for a "
                          "dry run), named when the run holds its lock.")
    dry_run: bool = False
    datasets: list[DiskResult] = Field(default_factory=list,
                                       description="One row per dataset, parents first.")
    seconds: float = 0.0

    @property
    def bytes_sent(self) -> int:
        return sum(d.bytes_sent for d in self.datasets)

    @property
    def failures(self) -> list[str]:
        return [f"{d.disk}: {d.error}" for d in self.datasets if d.error]


def dataset_tag(job: DatasetJob) -> str:
    """Snapshot tag: ``pve3-rpool-backup-share`` (destination and target dataset, folded to
    the tag's characters; a hash of the exact names when that would be too long)."""
    tag = re.sub(r"[^A-Za-z0-9.-]+", "-", f"{job.destination}-{job.dest_dataset}")
    if len(tag) <= _TAG_MAX:
        return tag
    digest = hashlib.sha256(f"{job.destination}\0{job.dest_dataset}".encode()).hexdigest()[:8]
    return f"{tag[:_TAG_MAX - 9].rstrip('-')}-{digest}"


def dataset_run(job: DatasetJob) -> ZfsRun:
    """The shared-step view of a dataset job."""
    return ZfsRun(source=job.source, destination=job.destination,
                  subject=f"dataset {job.dataset}", key=job.dataset,
                  owner=f"{job.source}/{job.dataset}", tag=dataset_tag(job), keep=job.keep,
                  compression=job.compression, bwlimit=job.bwlimit,
                  dest_pool=job.dest_dataset.split("/")[0], recursive=job.recursive)


def dataset_pairs(job: DatasetJob, tree: list[str]) -> list[ZfsDisk]:
    """Each source dataset (``tree``, the job's dataset first) with its destination name."""
    return [ZfsDisk(key=name, volid=name, source=name,
                    target=job.dest_dataset + name[len(job.dataset):]) for name in tree]


async def _replicate(job: DatasetJob, source: ProxmoxNode, dest: ProxmoxNode, dry_run: bool,
                     force: bool, result: DatasetResult) -> None:
    result.snapshot = new_snapshot_name(dataset_tag(job), datetime.now(timezone.utc))
    name, run = result.snapshot, dataset_run(job)
    tree = await zfs.dataset_tree(source, job.dataset) if job.recursive else [job.dataset]
    disks = dataset_pairs(job, tree)
    plan = await read_and_plan(run, source, dest, disks, name, force=force, dry_run=dry_run)
    results = plan.results()
    result.datasets = list(results.values())
    if dry_run:
        facts = {"dataset": f"{job.source}:{job.dataset}", "recursive": job.recursive,
                 "destination": f"{job.destination}:{job.dest_dataset}"}
        await publish_run_plan(run, facts, plan_rows(disks, plan, run, name), name)
        return
    parent = job.dest_dataset.rsplit("/", 1)[0]
    await replicate_datasets(run, source, dest, plan, results, name,
                             parent if "/" in parent else None)


@flow(name="dataset-replica", log_prints=False, **KEPT_RESULTS, **job_hooks())
async def dataset_replica(job: DatasetJob, dry_run: bool = False, force: bool = False,
                          lock_wait: float = DEFAULT_WAIT) -> DatasetResult:
    """Replicate ``job.dataset`` (and its children when ``job.recursive``) from
    ``job.source`` to ``job.dest_dataset`` on ``job.destination`` with syncoid.

    ``dry_run`` publishes the plan and changes nothing; ``force`` lets the plan roll back a
    diverged or written target or send again in full one that shares nothing with the source
    (received beside it, then swapped in; never one dapx did not create or another job owns);
    ``lock_wait`` is how long to wait for another run of the same dataset and
    destination. Raises InputError for bad input (a missing dataset, a child whose name dapx
    refuses), ConflictError for a conflict, LockTimeout, PermanentError naming failed datasets.
    """
    started = time.monotonic()
    source, dest = await aload_nodes(job.source, job.destination)
    result = DatasetResult(source=job.source, dataset=job.dataset, destination=job.destination,
                           dest_dataset=job.dest_dataset, dry_run=dry_run)
    await run_exclusively(dataset_lock_name(job.source, job.dataset, job.destination),
                          f"replicating dataset {job.dataset} from {job.source} to "
                          f"{job.destination}", lock_wait, dry_run,
                          lambda plan_only: _replicate(job, source, dest, plan_only, force, result))
    result.seconds = round(time.monotonic() - started, 3)
    if not dry_run:
        await publish_table(artifact_key("replica-result", job.source, job.dataset,
                                         job.destination), result_rows(result.datasets),
                            f"dataset {job.dataset}: {job.source} -> {job.destination}:"
                            f"{job.dest_dataset} in {result.seconds:g} s")
    if result.failures:
        raise PermanentError(f"replication of dataset {job.dataset} to {job.destination} "
                             f"failed for {len(result.failures)} dataset(s): "
                             f"{'; '.join(result.failures)}")
    if not dry_run:
        await record_protection("replica", job.source, job.dataset, job.destination,
                                ref=result.snapshot, bytes_sent=result.bytes_sent,
                                seconds=result.seconds)
    return result
