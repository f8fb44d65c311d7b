"""Jobs are Prefect deployments: a flow, its typed parameters and an optional cron schedule.

``create_job`` validates everything (parameters through the flow's model, the cron line, the
job name, that the nodes exist) before it writes a deployment. Jobs carry the tag ``dapx-job``
so they can be listed apart from the built-in deployments.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel

from dapx.core.cron import validate_cron, validate_timezone
from dapx.deployments.builtin import deploy_flow
from dapx.errors import InputError

JOB_TAG = "dapx-job"
JOB_FLOWS = {
    "zfs-replica": "dapx.flows.replica.zfs_replica",
    "btrfs-replica": "dapx.flows.btrfs_replica.btrfs_replica",
    "dataset-replica": "dapx.flows.dataset.dataset_replica",
    "pbs-backup": "dapx.flows.backup.pbs_backup",
    "pbs-recovery": "dapx.flows.recovery.pbs_recovery",
    "vm-migration": "dapx.flows.migration.vm_migration",
    "fleet-replica": "dapx.flows.fleet.fleet_replica",
}
_JOB_NAME = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")


def validate_job_name(name: str) -> str:
    """Job (deployment) names: lower-case letters, digits and dashes; InputError otherwise."""
    if not _JOB_NAME.fullmatch(name or ""):
        raise InputError(f"job name {name!r} must be lower-case letters, digits and dashes "
                         "(e.g. vm100-to-pve3)")
    return name


def job_concurrency() -> Any:
    """One run of a job at a time; a run due while another is in flight is cancelled, not
    queued (it would find nothing new to copy). So a backlog of scheduled runs left late by a
    worker's downtime runs the job once, and never starts its runs all at once."""
    from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy

    return ConcurrencyLimitConfig(limit=1, collision_strategy=ConcurrencyLimitStrategy.CANCEL_NEW)


def validate_site(site: str) -> str:
    """A site (work queue) name: as a job name; InputError otherwise."""
    if not _JOB_NAME.fullmatch(site or ""):
        raise InputError(f"site {site!r} must be lower-case letters, digits and dashes "
                         "(e.g. site-a): it names the work queue of that site's workers")
    return site


def create_job(name: str, flow: str, spec: BaseModel, *, schedule: str | None = None,
               timezone: str | None = None, paused: bool = False,
               description: str | None = None, replace: bool = False,
               site: str | None = None) -> str:
    """Create job ``name`` running ``flow`` (a key of JOB_FLOWS) with ``spec``, on the cron
    ``schedule`` in ``timezone`` (default: this machine's zone); or, with ``replace``, replace
    an existing job's options (a paused schedule stays paused). The job runs on the work
    queue ``site`` of the dapx pool (that site's workers; default: the pool's default
    queue), one run at a time (``job_concurrency``).

    Returns ``"<flow>/<name>"``. Raises InputError for a bad name, site, flow, cron line or
    time zone, for a node that has no block, for an existing job without ``replace``, and
    when the name is taken by a job of another flow.
    """
    cron, zone = check_job_options(name, schedule, timezone, site)
    if flow not in JOB_FLOWS:
        raise InputError(f"unknown job kind {flow!r}; use one of {', '.join(JOB_FLOWS)}")
    _check_nodes_exist(spec)
    existing = next((job for job in list_jobs() if job["name"] == name), None)
    if existing is not None:
        if existing["flow"] != flow:
            raise InputError(f"job name {name!r} is used by a {existing['flow']} job; pick "
                             "another")
        if not replace:
            raise InputError(f"job {name!r} exists ({existing['flow']}, schedule "
                             f"{existing['schedule']}); pass --replace to replace its options")
        paused = paused or existing["paused"]
    from dapx.deployments.server import ensure_work_pool

    ensure_work_pool()  # the product's own pool: a job made before `dapx up` still has one
    return deploy_flow(JOB_FLOWS[flow], name, cron=cron, timezone=zone, paused=paused,
                       parameters={"job": spec.model_dump(mode="json")},
                       tags=["dapx", JOB_TAG], description=description, work_queue=site,
                       concurrency_limit=job_concurrency())


def check_job_options(name: str | None, schedule: str | None, timezone: str | None,
                      site: str | None) -> tuple[str | None, str]:
    """Check what a job is called and when and where it runs, before anything is read or
    written: ``name`` (None: a default, made valid), the cron ``schedule``, ``timezone`` and
    ``site`` (None: not given). Out: (the cron line or None, the time zone to use: this
    machine's when none is given). Raises InputError naming the first bad one."""
    if name is not None:
        validate_job_name(name)
    if site is not None:
        validate_site(site)
    cron = validate_cron(schedule) if schedule else None
    return cron, validate_timezone(timezone) if timezone else local_timezone()


def _check_nodes_exist(spec: BaseModel) -> None:
    from dapx.blocks.manage import load_node

    for field in ("source", "destination", "node", "pbs_node"):
        if getattr(spec, field, None):
            load_node(getattr(spec, field))
    for node in spec.nodes() if hasattr(spec, "nodes") else ():  # fleet jobs
        load_node(node)


def list_jobs() -> list[dict[str, Any]]:
    """Every job: name, flow, schedule (cron and time zone), paused, parameters. A job is
    paused when its deployment is, or when every schedule it has is paused (as
    `prefect deployment schedule pause` leaves it)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterTags

    from dapx.tasks.jobs import is_paused

    with get_client(sync_client=True) as client:
        deployments = client.read_deployments(
            deployment_filter=DeploymentFilter(tags=DeploymentFilterTags(all_=[JOB_TAG])))
        flows = {f.id: f.name for f in client.read_flows()}
    rows = []
    for dep in deployments:
        crons = [s for s in dep.schedules if hasattr(s.schedule, "cron")]
        schedule = ", ".join(f"{s.schedule.cron} ({s.schedule.timezone or 'UTC'})"
                             for s in crons) or "-"
        rows.append({"name": dep.name, "flow": flows.get(dep.flow_id, "?"),
                     "schedule": schedule, "paused": is_paused(dep),
                     "parameters": dep.parameters,
                     "site": dep.work_queue_name or "default"})
    return sorted(rows, key=lambda r: r["name"])


def local_timezone() -> str:
    """This machine's IANA time zone (from /etc/timezone or /etc/localtime), else UTC."""
    from pathlib import Path

    try:
        text = Path("/etc/timezone").read_text().strip()
        if text:
            return validate_timezone(text)
    except (OSError, InputError):
        pass
    target = str(Path("/etc/localtime").resolve())
    if "/zoneinfo/" in target:
        try:
            return validate_timezone(target.split("/zoneinfo/", 1)[1])
        except InputError:
            pass
    return "UTC"


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


PICKUP_TIMEOUT = 60.0
"""Seconds a waiting `dapx job run` gives a worker to take the run before saying none did."""


def wait_for_run(run_id: str, *, pickup_timeout: float = PICKUP_TIMEOUT) -> Any:
    """Poll run ``run_id`` until it ends; return its final state. Raises InputError when no
    worker takes it within ``pickup_timeout`` seconds (the run stays scheduled)."""
    import time
    from uuid import UUID

    from prefect.client.orchestration import get_client

    deadline = time.monotonic() + pickup_timeout
    with get_client(sync_client=True) as client:
        while True:
            state = client.read_flow_run(UUID(run_id)).state
            if state is not None and state.is_final():
                return state
            if (state is None or state.is_scheduled()) and time.monotonic() > deadline:
                raise InputError(f"no worker took flow run {run_id} within "
                                 f"{pickup_timeout:g} s (it stays scheduled): is `dapx up` "
                                 "running, or a worker on the dapx pool?")
            time.sleep(0.5)


def run_artifacts(run_id: str, kind: str) -> list[Any]:
    """The artifacts of type ``kind`` (markdown, table) a run left, oldest first."""
    from uuid import UUID

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (ArtifactFilter, ArtifactFilterFlowRunId,
                                                ArtifactFilterType)
    from prefect.client.schemas.sorting import ArtifactSort

    with get_client(sync_client=True) as client:
        return client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(
                any_=[UUID(run_id)]), type=ArtifactFilterType(any_=[kind])),
            sort=ArtifactSort.CREATED_DESC)[::-1]


def set_job_paused(name: str, paused: bool) -> bool:
    """Pause job ``name`` (no scheduled runs; a run by hand still runs), or resume it: the
    deployment and every schedule it has active again, however it was paused (the UI's
    toggle, `prefect deployment schedule pause`, a replace of a paused job, or a failover).
    Returns False when it was so already. Raises InputError for an unknown job."""
    from dapx.tasks.jobs import set_paused

    return set_paused(f"{_find(name)['flow']}/{name}", paused)


def remove_job(name: str) -> None:
    """Delete job ``name``'s deployment (its past runs stay in Prefect's history)."""
    from prefect.client.orchestration import get_client

    job = _find(name)
    with get_client(sync_client=True) as client:
        dep = client.read_deployment_by_name(f"{job['flow']}/{name}")
        client.delete_deployment(dep.id)
