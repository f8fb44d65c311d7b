"""The built-in deployments: every DAPX flow, unscheduled, on the `dapx` work pool.

They make each operation runnable from the Prefect UI ("Run" with a parameter form) and from
`prefect deployment run '<flow>/default' -p node=pve1`. Scheduled jobs are separate deployments
(see ``dapx.deployments.jobs``). ``prefect.yaml`` lists the same deployments for `prefect deploy`.
"""

from __future__ import annotations

import contextlib
import importlib
import io

from dapx.deployments.server import WORK_POOL

DEFAULT_DEPLOYMENT = "default"

# Module paths of the flows; the worker imports them from the installed package.
BUILTIN_FLOWS = (
    "dapx.flows.nodes.node_check",
    "dapx.flows.nodes.node_inventory",
    "dapx.flows.nodes.install_sanoid",
    "dapx.flows.trust.trust_nodes",
    "dapx.flows.register.register_vm",
    "dapx.flows.replica.zfs_replica",
    "dapx.flows.btrfs_replica.btrfs_replica",
    "dapx.flows.dataset.dataset_replica",
    "dapx.flows.guest_snapshot.guest_snapshot",
    "dapx.flows.snapshot_view.snapshot_view",
    "dapx.flows.snapshot_policy.snapshot_policy",
    "dapx.flows.snapshot_retention.snapshot_retention",
    "dapx.flows.backup.pbs_backup",
    "dapx.flows.restore.pbs_backup_list",
    "dapx.flows.restore.pbs_restore",
    "dapx.flows.recovery.pbs_recovery",
    "dapx.flows.migration.vm_migration",
    "dapx.flows.fleet.fleet_replica",
    "dapx.flows.failover.failover",
    "dapx.flows.failback.failback",
)

BUILTIN_SCHEDULES = {
    # Every job's retention, hourly (each replica run also prunes its own job after a copy).
    "dapx.flows.snapshot_retention.snapshot_retention": "17 * * * *",
}


def load_flow(path: str):  # noqa: ANN201 - returns a prefect Flow
    """Import the flow object at module path ``path`` (``package.module.attr``)."""
    module, _, attr = path.rpartition(".")
    return getattr(importlib.import_module(module), attr)


def deploy_flow(path: str, name: str = DEFAULT_DEPLOYMENT, *, cron: str | None = None,
                timezone: str | None = None, parameters: dict | None = None,
                tags: list[str] | None = None, description: str | None = None,
                paused: bool = False, triggers: list | None = None,
                work_queue: str | None = None, concurrency_limit: object = None) -> str:
    """Create or update the deployment ``<flow>/<name>`` for the flow at ``path``, with the
    cron schedule ``cron`` in ``timezone`` (IANA name; UTC when None) if given, on the pool's
    ``work_queue`` (default: the pool's default queue; made when missing), with a deployment
    ``concurrency_limit`` (a ``ConcurrencyLimitConfig``) when given.

    The entrypoint is the module path, so a process worker with DAPX installed runs it without
    fetching code. ``triggers`` are Prefect deployment triggers (Prefect replaces their
    automations on every deploy, so this stays idempotent). Returns ``"<flow-name>/<name>"``.
    """
    from prefect.deployments.runner import EntrypointType, deploy
    from prefect.schedules import Cron

    flow = load_flow(path)
    schedules = [Cron(cron, timezone=timezone, active=not paused)] if cron else None
    deployment = flow.to_deployment(
        name=name, schedules=schedules, parameters=parameters or {}, tags=tags or ["dapx"],
        description=description, paused=paused, triggers=triggers,
        entrypoint_type=EntrypointType.MODULE_PATH, work_queue_name=work_queue,
        concurrency_limit=concurrency_limit,
    )
    with contextlib.redirect_stdout(io.StringIO()):  # deploy() prints a table per call
        deploy(deployment, work_pool_name=WORK_POOL, build=False, push=False,
               print_next_steps_message=False, ignore_warnings=True)
    return f"{flow.name}/{name}"


BUILTIN_PARAMETERS = {
    # A run of a deployment holds the parameters given, not the flow's defaults, and the
    # notification hook reads the mode from the run: a failover is news, say so there too.
    "dapx.flows.failover.failover": {"notify": "always"},
    "dapx.flows.failback.failback": {"notify": "always"},
}


def deploy_builtin() -> list[str]:
    """Create or update every built-in deployment; return their names."""
    return [deploy_flow(path, cron=BUILTIN_SCHEDULES.get(path),
                        parameters=BUILTIN_PARAMETERS.get(path)) for path in BUILTIN_FLOWS]
