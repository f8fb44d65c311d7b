"""``protection-status``: every guest's protection state (X4) as a table artifact.

Reads the jobs (deployments tagged ``dapx-job``, with their cron schedules), the store's
newest records and each PVE node's guests (in parallel; a node that does not answer is named,
its guests still appear through the jobs covering them), then computes the rows with
``dapx.core.protection`` and publishes them under the fixed key ``dapx-protection``, so the
Prefect UI's artifact page always shows the newest table. `dapx status` runs this flow.
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timezone

from prefect import flow
from pydantic import BaseModel, Field

from dapx.flows import KEPT_RESULTS
from dapx.blocks.manage import aload_nodes, list_nodes
from dapx.core.cron import longest_gap
from dapx.core.protection import Cover, Guest, Protection, covers_of_job, protection_rows
from dapx.core.protection import table_rows
from dapx.errors import DapxError
from dapx.tasks.inventory import node_guests
from dapx.tasks.runs import JobInfo, read_jobs
from dapx.tasks.store import latest_records
from dapx.ui_extensions.artifacts import publish_table

PROTECTION_ARTIFACT = "dapx-protection"


class ProtectionReport(BaseModel):
    """The protection state at one moment."""

    at: datetime
    rows: list[dict[str, str]] = Field(description="One per guest: guest, name, state, "
                                       "replica age, backup age, jobs, why.")
    unreachable: dict[str, str] = Field(default_factory=dict,
                                        description="Node -> why its guests are unknown.")
    problems: int = Field(0, description="Guests late or unprotected.")


def job_covers(jobs: list[JobInfo]) -> list[Cover]:
    """What every job covers, with its schedule's interval (the longest of its crons)."""
    covers = []
    for job in jobs:
        gaps = [g for g in (_gap(c) for c in job.crons) if g is not None]
        covers += covers_of_job(job.name, job.flow, job.parameters, max(gaps, default=None),
                                created=job.created, paused=job.paused)
    return covers


def _gap(cron: str):  # noqa: ANN202 - timedelta | None
    try:
        return longest_gap(cron)
    except DapxError:  # a schedule made outside dapx with a form we do not read
        return None


async def all_guests() -> tuple[list[Guest], dict[str, str]]:
    """(guests of every PVE node, node -> error for those that did not answer)."""
    names = [n["name"] for n in await asyncio.to_thread(list_nodes) if n["kind"] == "pve"]
    loaded = await asyncio.gather(*(aload_nodes(n) for n in names), return_exceptions=True)
    guests, unreachable, nodes = [], {}, []
    for name, result in zip(names, loaded):  # a block made invalid does not hide the others
        if isinstance(result, BaseException):
            unreachable[name] = f"{type(result).__name__}: {result}"[:300]
        else:
            nodes += result
    found = await asyncio.gather(*(node_guests(n) for n in nodes), return_exceptions=True)
    for node, result in zip(nodes, found):
        if isinstance(result, BaseException):
            unreachable[node.name] = f"{type(result).__name__}: {result}"[:300]
        else:
            guests += result
    return guests, unreachable


async def compute_protection(jobs: list[JobInfo] | None = None,
                             ) -> tuple[list[Protection], dict[str, str], datetime]:
    """(rows, unreachable nodes, the moment) — shared by this flow and the daily summary,
    which passes the ``jobs`` it read already."""
    (guests, unreachable), records = await asyncio.gather(all_guests(), latest_records())
    if jobs is None:
        jobs = await read_jobs()
    now = datetime.now(timezone.utc)
    return protection_rows(guests, job_covers(jobs), records, now), unreachable, now


async def publish_protection(rows: list[Protection], unreachable: dict[str, str],
                             now: datetime) -> ProtectionReport:
    table = table_rows(rows, now)
    problems = sum(1 for r in rows if r.problem)
    notes = "".join(f"; {node} did not answer" for node in unreachable)
    await publish_table(PROTECTION_ARTIFACT, table or [{"guest": "no guests"}],
                        f"protection state at {now:%Y-%m-%d %H:%M} UTC: {len(rows)} guests, "
                        f"{problems} late or unprotected{notes}")
    return ProtectionReport(at=now, rows=table, unreachable=unreachable, problems=problems)


@flow(name="protection-status", log_prints=False, **KEPT_RESULTS)
async def protection_status() -> ProtectionReport:
    """X4: every guest's newest replica and backup, late and unprotected guests, as the table
    artifact ``dapx-protection``. Out: the same rows."""
    rows, unreachable, now = await compute_protection()
    return await publish_protection(rows, unreachable, now)


def run_protection_status() -> ProtectionReport:
    """Run the flow to completion from sync code (`dapx status`)."""
    return asyncio.run(protection_status())
