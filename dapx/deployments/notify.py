"""The deployments behind notifications and the protection state (A3, A4, X4, P7).

- ``notify-run/default`` with a deployment trigger: every ``prefect.flow-run.Crashed`` event
  of a run tagged ``dapx-job`` runs it with that run's id. A run killed hard never calls its
  own hooks; when its worker survives the worker marks it Crashed, when both die the heartbeat
  automation does; either way this sends the job's notification (once: see
  ``dapx.flows.notify``).
- ``daily-summary/default``: daily at the ``Notifications`` block's time and time zone
  (08:00 UTC by default).
- ``protection-status/default``: hourly, so the ``dapx-protection`` table stays current.

``deploy_notifications`` creates or updates all three; Prefect replaces a deployment's
trigger automations on every deploy, so running it again (every `dapx up`) changes nothing.
"""

from __future__ import annotations

from dapx.core.notify import daily_cron
from dapx.deployments.builtin import deploy_flow

NOTIFY_RUN_FLOW = "dapx.flows.notify.notify_run"
SUMMARY_FLOW = "dapx.flows.digest.daily_summary"
PROTECTION_FLOW = "dapx.flows.protection.protection_status"
NOTIFY_FLOWS = (NOTIFY_RUN_FLOW, SUMMARY_FLOW, PROTECTION_FLOW)
PROTECTION_CRON = "7 * * * *"
CRASHED_EVENT = "prefect.flow-run.Crashed"
JOB_TAG_RESOURCE = "prefect.tag.dapx-job"
"""The related resource every event of a job's run carries (its tag ``dapx-job``)."""


def crashed_job_trigger():  # noqa: ANN201 - a DeploymentEventTrigger
    """Fire once per Crashed event of a run tagged ``dapx-job``, passing its resource id."""
    from prefect.events.schemas.deployment_triggers import DeploymentEventTrigger

    return DeploymentEventTrigger(
        name="dapx: notify crashed job runs",
        description="A job's run crashed (killed, worker lost): send its notification.",
        expect={CRASHED_EVENT},
        match={"prefect.resource.id": "prefect.flow-run.*"},
        match_related={"prefect.resource.role": "tag",
                       "prefect.resource.id": JOB_TAG_RESOURCE},
        for_each={"prefect.resource.id"},
        posture="Reactive", threshold=1,
        parameters={"flow_run_id": "{{ event.resource.id }}"},
    )


def summary_schedule() -> tuple[str, str]:
    """(cron line, time zone) of the daily summary, from the Notifications block."""
    from dapx.blocks.notifications import load_notifications

    block = load_notifications()
    if block is None:
        return daily_cron("08:00"), "UTC"
    return daily_cron(block.summary_time), block.summary_timezone


def deploy_summary() -> str:
    """Create or update ``daily-summary/default`` on the block's schedule."""
    cron, zone = summary_schedule()
    return deploy_flow(SUMMARY_FLOW, cron=cron, timezone=zone,
                       description="Daily summary (A4): runs of every job, late or "
                       "unprotected guests, failing nodes; sent to every notification target.")


def deploy_notifications() -> list[str]:
    """Create or update the three deployments (and the Crashed trigger); their names."""
    return [
        deploy_flow(NOTIFY_RUN_FLOW, triggers=[crashed_job_trigger()],
                    description="Notify a job's crashed run (started by its automation)."),
        deploy_summary(),
        deploy_flow(PROTECTION_FLOW, cron=PROTECTION_CRON,
                    description="Protection state of every guest (X4) as the table "
                    "artifact dapx-protection."),
    ]
