"""Reading Prefect's own API: jobs (deployments tagged ``dapx-job``), their runs, the newest
node-check per node, one flow run with its job's name. Run history lives in Prefect; DAPX
keeps no copy of it.

Each reader is a task for flows; hooks (which run after their flow ended) call the plain
coroutine through the task's ``.fn``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from uuid import UUID

from dapx.core.digest import JobRun, NodeCheck
from dapx.core.notify import run_url, state_detail, ui_url_from_api
from dapx.tasks.base import dapx_task

JOB_TAG = "dapx-job"
"""Tag of job deployments (the same as ``dapx.deployments.jobs.JOB_TAG``)."""
NODE_CHECK_FLOW = "node-check"
_PAGE = 200


@dataclass(frozen=True)
class JobInfo:
    """One job deployment."""

    name: str
    """``<flow>/<deployment>``."""
    flow: str
    crons: tuple[str, ...] = ()
    paused: bool = False
    parameters: dict[str, Any] = field(default_factory=dict)
    created: datetime | None = None


def ui_url() -> str | None:
    """The Prefect UI's address for links: PREFECT_UI_URL, else derived from the API URL."""
    from prefect.settings import PREFECT_API_URL, PREFECT_UI_URL

    return PREFECT_UI_URL.value() or ui_url_from_api(PREFECT_API_URL.value())


def flow_run_url(flow_run_id: object) -> str:
    return run_url(ui_url(), flow_run_id)


@dapx_task(name="read-jobs")
async def read_jobs() -> list[JobInfo]:
    """Every job deployment with its cron schedules (paused ones too)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterTags

    async with get_client() as client:
        deployments = await client.read_deployments(
            deployment_filter=DeploymentFilter(tags=DeploymentFilterTags(all_=[JOB_TAG])))
        flows = {f.id: f.name for f in await client.read_flows()}
    jobs = []
    for dep in deployments:
        flow = flows.get(dep.flow_id, "?")
        schedules = [s for s in dep.schedules if getattr(s.schedule, "cron", None)]
        # A paused job keeps its interval: it is late once it should have run (X4).
        paused = bool(dep.paused) or any(not s.active for s in schedules)
        jobs.append(JobInfo(name=f"{flow}/{dep.name}", flow=flow,
                            crons=tuple(s.schedule.cron for s in schedules), paused=paused,
                            parameters=dict(dep.parameters or {}), created=dep.created))
    return sorted(jobs, key=lambda j: j.name)


@dapx_task(name="read-job-runs")
async def read_job_runs(since: datetime, until: datetime) -> list[JobRun]:
    """Every run of a job deployment expected to start between ``since`` and ``until``."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (DeploymentFilter, DeploymentFilterId,
                                                DeploymentFilterTags, FlowRunFilter,
                                                FlowRunFilterExpectedStartTime)
    from prefect.client.schemas.sorting import FlowRunSort

    runs: list[JobRun] = []
    async with get_client() as client:
        deployments = await client.read_deployments(
            deployment_filter=DeploymentFilter(tags=DeploymentFilterTags(all_=[JOB_TAG])))
        flows = {f.id: f.name for f in await client.read_flows()}
        names = {d.id: f"{flows.get(d.flow_id, '?')}/{d.name}" for d in deployments}
        if not names:
            return []
        run_filter = FlowRunFilter(expected_start_time=FlowRunFilterExpectedStartTime(
            after_=since, before_=until))
        offset = 0
        while True:
            page = await client.read_flow_runs(
                flow_run_filter=run_filter,
                deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=list(names))),
                sort=FlowRunSort.EXPECTED_START_TIME_ASC, limit=_PAGE, offset=offset)
            runs += [_job_run(names.get(r.deployment_id, "?"), r) for r in page]
            if len(page) < _PAGE:
                return runs
            offset += _PAGE


def _job_run(job: str, run: Any) -> JobRun:
    state = run.state
    return JobRun(job=job, state_type=state.type.value if state else "",
                  state_name=state.name if state else "",
                  at=run.start_time or run.expected_start_time,
                  detail=state_detail(state.message if state else "", 300),
                  url=flow_run_url(run.id))


@dapx_task(name="read-node-checks")
async def read_node_checks(limit: int = 200) -> list[NodeCheck]:
    """The newest finished node-check run of each node (of the last ``limit`` runs; the
    API returns 200 at most)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (FlowFilter, FlowFilterName, FlowRunFilter,
                                                FlowRunFilterState, FlowRunFilterStateType)
    from prefect.client.schemas.objects import StateType
    from prefect.client.schemas.sorting import FlowRunSort

    final = [StateType.COMPLETED, StateType.FAILED, StateType.CRASHED]
    async with get_client() as client:
        runs = await client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=[NODE_CHECK_FLOW])),
            flow_run_filter=FlowRunFilter(state=FlowRunFilterState(
                type=FlowRunFilterStateType(any_=final))),
            sort=FlowRunSort.END_TIME_DESC, limit=limit)
    newest: dict[str, NodeCheck] = {}
    for run in runs:
        node = (run.parameters or {}).get("node")
        if isinstance(node, str) and node not in newest:
            newest[node] = NodeCheck(node=node, ok=run.state.is_completed(),
                                     at=run.end_time or run.start_time,
                                     detail=state_detail(run.state.message, 300),
                                     url=flow_run_url(run.id))
    return sorted(newest.values(), key=lambda c: c.node)


@dataclass(frozen=True)
class RunFacts:
    """One flow run as the notification needs it."""

    flow_run: Any
    """Prefect's FlowRun, read fresh."""
    job: str
    """``<flow>/<deployment>``, or ``<flow> run <name>`` outside a job."""
    is_job: bool


@dapx_task(name="read-flow-run")
async def read_run_facts(flow_run_id: UUID | str) -> RunFacts:
    """The flow run (fresh from the API), its job's name and whether it is a job's run."""
    from prefect.client.orchestration import get_client

    async with get_client() as client:
        run = await client.read_flow_run(UUID(str(flow_run_id)))
        flow = await client.read_flow(run.flow_id)
        deployment = None
        if run.deployment_id is not None:
            from prefect.exceptions import ObjectNotFound

            try:
                deployment = await client.read_deployment(run.deployment_id)
            except ObjectNotFound:  # the job was removed since
                pass
    if deployment is None:
        return RunFacts(run, f"{flow.name} run {run.name}", JOB_TAG in (run.tags or []))
    return RunFacts(run, f"{flow.name}/{deployment.name}",
                    JOB_TAG in (deployment.tags or []) or JOB_TAG in (run.tags or []))

