"""Jobs are Prefect deployments: a flow, its typed parameters and an optional cron schedule.

``create_job`` validates everything (parameters through the flow's model, the cron line, the
job name, that the nodes exist) before it writes a deployment. Jobs carry the tag ``dapx-job``
so they can be listed apart from the built-in deployments.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel

from dapx.core.cron import validate_cron
from dapx.deployments.builtin import deploy_flow
from dapx.errors import InputError

JOB_TAG = "dapx-job"
JOB_FLOWS = {
    "zfs-replica": "dapx.flows.replica.zfs_replica",
    "btrfs-replica": "dapx.flows.btrfs_replica.btrfs_replica",
    "dataset-replica": "dapx.flows.dataset.dataset_replica",
}
_JOB_NAME = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")


def validate_job_name(name: str) -> str:
    """Job (deployment) names: lower-case letters, digits and dashes; InputError otherwise."""
    if not _JOB_NAME.fullmatch(name or ""):
        raise InputError(f"job name {name!r} must be lower-case letters, digits and dashes "
                         "(e.g. vm100-to-pve3)")
    return name


def create_job(name: str, flow: str, spec: BaseModel, *, schedule: str | None = None,
               paused: bool = False, description: str | None = None) -> str:
    """Create or update job ``name`` running ``flow`` (a key of JOB_FLOWS) with ``spec``.

    Returns ``"<flow>/<name>"``. Raises InputError for a bad name, flow or cron line, for a
    node that has no block, and when the name is taken by a job of another flow.
    """
    validate_job_name(name)
    if flow not in JOB_FLOWS:
        raise InputError(f"unknown job kind {flow!r}; use one of {', '.join(JOB_FLOWS)}")
    cron = validate_cron(schedule) if schedule else None
    _check_nodes_exist(spec)
    for job in list_jobs():
        if job["name"] == name and job["flow"] != flow:
            raise InputError(f"job name {name!r} is used by a {job['flow']} job; pick another")
    return deploy_flow(JOB_FLOWS[flow], name, cron=cron, paused=paused,
                       parameters={"job": spec.model_dump(mode="json")},
                       tags=["dapx", JOB_TAG], description=description)


def _check_nodes_exist(spec: BaseModel) -> None:
    from dapx.blocks.manage import load_node

    for field in ("source", "destination"):
        if hasattr(spec, field):
            load_node(getattr(spec, field))


def list_jobs() -> list[dict[str, Any]]:
    """Every job: name, flow, schedule, paused, parameters."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterTags

    with get_client(sync_client=True) as client:
        deployments = client.read_deployments(
            deployment_filter=DeploymentFilter(tags=DeploymentFilterTags(all_=[JOB_TAG])))
        flows = {f.id: f.name for f in client.read_flows()}
    rows = []
    for dep in deployments:
        crons = [s.schedule.cron for s in dep.schedules if hasattr(s.schedule, "cron")]
        rows.append({"name": dep.name, "flow": flows.get(dep.flow_id, "?"),
                     "schedule": ", ".join(crons) or "-", "paused": dep.paused,
                     "parameters": dep.parameters})
    return sorted(rows, key=lambda r: r["name"])


def _find(name: str) -> dict[str, Any]:
    for job in list_jobs():
        if job["name"] == name:
            return job
    known = ", ".join(j["name"] for j in list_jobs()) or "none"
    raise InputError(f"unknown job {name!r} (jobs: {known})")


def run_job(name: str, *, parameters: dict[str, Any] | None = None) -> str:
    """Start a run of job ``name`` now (R4); return the flow run id. The worker executes it."""
    from prefect.deployments import run_deployment

    job = _find(name)
    flow_run = run_deployment(f"{job['flow']}/{name}", parameters=parameters or {},
                              timeout=0)
    return str(flow_run.id)


def remove_job(name: str) -> None:
    """Delete job ``name``'s deployment (its past runs stay in Prefect's history)."""
    from prefect.client.orchestration import get_client

    job = _find(name)
    with get_client(sync_client=True) as client:
        dep = client.read_deployment_by_name(f"{job['flow']}/{name}")
        client.delete_deployment(dep.id)
