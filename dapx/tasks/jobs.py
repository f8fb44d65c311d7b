"""Replica jobs as the Prefect API holds them: deployments tagged ``dapx-job`` of the replica
flows, with their parameters parsed into the job models (for the snapshot view and the
retention flow, which act on every job)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Union

from pydantic import ValidationError

from dapx.core.jobspec import DatasetJob, ReplicaJob
from dapx.tasks.base import dapx_task

JOB_TAG = "dapx-job"
"""The tag ``dapx.deployments.jobs`` puts on every job (a test keeps the two equal)."""
JOB_MODELS = {"zfs-replica": ReplicaJob, "btrfs-replica": ReplicaJob,
              "dataset-replica": DatasetJob}


@dataclass(frozen=True)
class JobRef:
    """One replica job: its deployment name, flow and parsed parameters."""

    name: str
    flow: str
    job: Union[ReplicaJob, DatasetJob]


@dapx_task(name="read-replica-jobs")
async def replica_jobs() -> tuple[list[JobRef], list[str]]:
    """(every replica job, notes on jobs whose parameters no longer parse), by name."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterTags

    async with get_client() as client:
        deployments = await client.read_deployments(
            deployment_filter=DeploymentFilter(tags=DeploymentFilterTags(all_=[JOB_TAG])))
        flows = {f.id: f.name for f in await client.read_flows()}
    jobs, notes = [], []
    for dep in deployments:
        flow = flows.get(dep.flow_id, "")
        model = JOB_MODELS.get(flow)
        if model is None:
            continue
        try:
            jobs.append(JobRef(dep.name, flow, model(**dep.parameters.get("job", {}))))
        except (ValidationError, TypeError) as exc:
            notes.append(f"job {dep.name}: parameters do not parse ({exc.__class__.__name__})")
    return sorted(jobs, key=lambda j: j.name), notes


def is_paused(deployment: Any) -> bool:
    """A job is paused when its deployment is, or when every cron schedule it has is (as
    `prefect deployment schedule pause` leaves it)."""
    crons = [s for s in deployment.schedules if hasattr(s.schedule, "cron")]
    return bool(deployment.paused or (crons and not any(s.active for s in crons)))


def set_paused(deployment_name: str, paused: bool) -> bool:
    """Pause deployment ``<flow>/<name>``, or resume it with every schedule it has active
    again; False when it was so already. The one body of `dapx job pause/resume` and of the
    failover's pause."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name(deployment_name)
        if is_paused(deployment) == paused:
            return False
        if paused:
            client.pause_deployment(deployment.id)
            return True
        client.resume_deployment(deployment.id)
        for schedule in deployment.schedules:
            if not schedule.active:
                client.update_deployment_schedule(deployment.id, schedule.id, active=True)
    return True


@dapx_task(name="pause-job")
async def pause_job(ref: JobRef) -> bool:
    """Pause job ``ref``'s schedule (its deployment); False when it was paused already."""
    import asyncio

    return await asyncio.to_thread(set_paused, f"{ref.flow}/{ref.name}", True)
