"""prefect.yaml declares the notification deployments as `dapx up` creates them: notify-run
with the trigger for crashed job runs, the daily summary at 08:00, protection-status hourly."""

from __future__ import annotations

from pathlib import Path

import yaml

from dapx.core.notify import daily_cron
from dapx.deployments.jobs import JOB_TAG
from dapx.deployments.notify import (NOTIFY_RUN_FLOW, PROTECTION_CRON, PROTECTION_FLOW,
                                     SUMMARY_FLOW, crashed_job_trigger)
from dapx.tasks import runs

ROOT = Path(__file__).resolve().parents[2]


def _deployments() -> dict[str, dict]:
    spec = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    return {d["entrypoint"]: d for d in spec["deployments"]}


def test_prefect_yaml_trigger_matches_dapx_up() -> None:
    (trigger,) = _deployments()[NOTIFY_RUN_FLOW]["triggers"]
    ours = crashed_job_trigger()
    assert set(trigger["expect"]) == ours.expect == {"prefect.flow-run.Crashed"}
    assert trigger["match_related"] == ours.match_related.model_dump()
    assert trigger["match"] == ours.match.model_dump()
    assert set(trigger["for_each"]) == ours.for_each
    assert trigger["parameters"] == ours.parameters == {"flow_run_id": "{{ event.resource.id }}"}
    assert trigger["posture"] == ours.posture and trigger["threshold"] == ours.threshold


def test_prefect_yaml_schedules_match_dapx_up() -> None:
    deployments = _deployments()
    assert deployments[SUMMARY_FLOW]["schedules"] == [{"cron": daily_cron("08:00"),
                                                       "timezone": "UTC"}]
    assert deployments[PROTECTION_FLOW]["schedules"] == [{"cron": PROTECTION_CRON}]


def test_the_job_tag_is_the_same_everywhere() -> None:
    assert runs.JOB_TAG == JOB_TAG
    assert crashed_job_trigger().match_related.model_dump()["prefect.resource.id"] == \
        f"prefect.tag.{JOB_TAG}"


def test_every_job_flow_takes_part_in_notifications() -> None:
    """A flow whose ``job`` parameter has a notify mode carries the notify hooks on completion,
    failure and crash (a job kind added without them would never notify)."""
    import inspect

    from dapx.deployments.builtin import BUILTIN_FLOWS, load_flow
    from dapx.flows.hooks import notify_hook

    job_flows = []
    for path in BUILTIN_FLOWS:
        flow = load_flow(path)
        job = inspect.signature(flow.fn).parameters.get("job")
        model = getattr(job, "annotation", None) if job else None
        if isinstance(model, str):
            model = flow.fn.__globals__.get(model)
        if model is None or "notify" not in getattr(model, "model_fields", {}) or \
                flow.name == "register-vm":  # registers a replica job's copy; not a job itself
            continue
        job_flows.append(flow.name)
        for hooks in (flow.on_completion_hooks, flow.on_failure_hooks, flow.on_crashed_hooks):
            assert notify_hook in hooks, f"{flow.name} does not notify"
    assert {"zfs-replica", "btrfs-replica", "dataset-replica", "pbs-backup",
            "pbs-recovery", "vm-migration", "fleet-replica"} <= set(job_flows)
