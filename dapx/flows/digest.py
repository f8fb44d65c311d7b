"""``daily-summary`` (A4): one message a day about every job and every guest.

Reads every job's runs of the last 24 hours from Prefect (completed, failed, crashed, late),
the protection state (guests late or unprotected; the table artifact is refreshed too) and
the newest node-check of each node; sends one message to every notification target (jobs in
``daily`` mode are reported only here) and leaves it as a markdown artifact. Scheduled daily
(08:00 by default, in the time zone of the ``Notifications`` block) by `dapx up`.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

from prefect import flow, get_run_logger
from pydantic import BaseModel

from dapx.flows import KEPT_RESULTS
from dapx.blocks.notifications import aload_notifications
from dapx.core.digest import summary
from dapx.core.notify import job_mode
from dapx.flows.protection import compute_protection, publish_protection
from dapx.tasks.notify import log_deliveries, send_notification
from dapx.tasks.runs import read_job_runs, read_jobs, read_node_checks
from dapx.ui_extensions.artifacts import publish_markdown

SUMMARY_ARTIFACT = "dapx-daily-summary"
WINDOW = timedelta(hours=24)


class SummaryResult(BaseModel):
    """What the summary said and where it went."""

    subject: str
    body: str
    sent_to: list[str] = []
    not_sent: dict[str, str] = {}


@flow(name="daily-summary", log_prints=False, **KEPT_RESULTS)
async def daily_summary() -> SummaryResult:
    """A4: the last day's runs of every job, guests late or unprotected, nodes whose last
    check failed; sent to every notification target. Out: the message and who got it."""
    logger = get_run_logger()
    block = await aload_notifications()
    timezone = block.summary_timezone if block else "UTC"
    jobs, checks = await asyncio.gather(read_jobs(), read_node_checks())
    rows, unreachable, now = await compute_protection(jobs)
    runs = await read_job_runs(now - WINDOW, now)
    await publish_protection(rows, unreachable, now)
    modes = {j.name: job_mode(j.parameters) for j in jobs}
    subject, body = summary(modes, runs, rows, checks, now, timezone)
    if unreachable:
        body += "\nNodes that did not answer (their guests may be missing above):\n" + "".join(
            f"  {node}: {why}\n" for node, why in sorted(unreachable.items()))
    await publish_markdown(SUMMARY_ARTIFACT, f"# {subject}\n\n```text\n{body}```\n",
                           "dapx daily summary")
    deliveries = await send_notification(subject, body)
    log_deliveries(logger, "daily summary", deliveries)
    return SummaryResult(subject=subject, body=body,
                         sent_to=[d.target for d in deliveries if d.sent],
                         not_sent={d.target: d.reason for d in deliveries if not d.sent})
