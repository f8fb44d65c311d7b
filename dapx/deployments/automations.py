"""The Prefect automations the product needs, created by `dapx up` and `dapx init`.

Runs without heartbeats are Crashed: a flow run sends a heartbeat event every
``HEARTBEAT_SECONDS`` (the `dapx` work pool sets PREFECT_FLOWS_HEARTBEAT_FREQUENCY for every
run). When a run's heartbeats stop for ``ZOMBIE_AFTER_SECONDS`` without a final state (the
host rebooted, the OOM killer took worker and flow together), this automation marks it
Crashed, so the run history, the locks it held and every notification see the crash.
Creating the automations again updates them in place (idempotent).
"""

from __future__ import annotations

from datetime import timedelta

HEARTBEAT_SECONDS = 30
"""How often a flow run sends a heartbeat (Prefect's minimum is 30 s)."""

ZOMBIE_AFTER_SECONDS = 90
"""Silence after which a running flow run is marked Crashed (three missed heartbeats)."""

ZOMBIE_AUTOMATION = "dapx-crash-runs-without-heartbeats"
FINAL_EVENTS = {"prefect.flow-run.heartbeat", "prefect.flow-run.Completed",
                "prefect.flow-run.Failed", "prefect.flow-run.Cancelled",
                "prefect.flow-run.Crashed"}


def zombie_automation(after_seconds: float = ZOMBIE_AFTER_SECONDS):  # noqa: ANN201
    """The automation marking runs Crashed when heartbeats stop for ``after_seconds``."""
    from prefect.automations import Automation
    from prefect.client.schemas.objects import StateType
    from prefect.events.actions import ChangeFlowRunState
    from prefect.events.schemas.automations import EventTrigger, Posture

    return Automation(
        name=ZOMBIE_AUTOMATION,
        description=("DAPX: a flow run whose heartbeats stopped without a final state died with "
                     "its process (host reboot, OOM, kill): mark it Crashed."),
        trigger=EventTrigger(
            after={"prefect.flow-run.heartbeat"}, expect=FINAL_EVENTS,
            match={"prefect.resource.id": ["prefect.flow-run.*"]},
            for_each={"prefect.resource.id"}, posture=Posture.Proactive, threshold=1,
            within=timedelta(seconds=after_seconds)),
        actions=[ChangeFlowRunState(
            state=StateType.CRASHED,
            message=(f"no heartbeat for {after_seconds:g} s: the flow run's process died "
                     "(host reboot, out of memory, killed)"))],
    )


def ensure_automations(zombie_after: float = ZOMBIE_AFTER_SECONDS) -> list[str]:
    """Create or update the product's automations; return their names."""
    wanted = zombie_automation(zombie_after)
    try:
        existing = type(wanted).read(name=wanted.name)
    except ValueError:  # none with that name yet
        existing = None
    if existing is None:
        wanted.create()
    else:
        wanted.id = existing.id
        wanted.update()
    return [wanted.name]
