"""How a job flow takes part in notifications (A3, P7) and the protection state (X4).

Every job flow does two things:

1. Attach the hooks::

       from dapx.flows.hooks import job_hooks, record_protection

       @flow(name="pbs-backup", log_prints=False, **job_hooks())
       async def pbs_backup(job: BackupJob, dry_run: bool = False) -> BackupResult: ...

   The flow's parameter ``job`` is a model with a ``notify`` field (``NotifyMode`` in
   ``dapx.core.jobspec``); the hooks read it from the run's parameters and send per mode:
   ``always`` every finished run, ``failure`` failed and crashed runs, ``daily`` and
   ``never`` none (``daily`` runs appear in the daily summary). Dry runs (``dry_run=True``)
   are never notified. Crashed runs whose process died before its hooks ran are notified by
   the ``notify-run`` deployment, which an automation starts (``dapx up`` creates both);
   either way a run attempt is notified once.

2. Record each success, once the copy is complete, in the same run::

       await record_protection("backup", job.source, job.guest, f"{job.pbs}:{job.datastore}",
                               ref=backup_id, bytes_sent=size, seconds=elapsed)

   ``kind``: ``replica``, ``backup`` or ``recovery`` (a replica through PBS, counted as a
   replica); ``guest``: a VMID or a dataset name; ``destination``: where the copy went. The
   bytes and the id appear in the run's notification; the record feeds `dapx status`, the
   ``protection-status`` table and the daily summary. A store that cannot be written is
   logged and never fails the run.

For the protection state to know which guests a job covers and how often it must succeed,
the job's deployment is tagged ``dapx-job`` (``dapx.deployments.jobs.create_job`` does it),
its flow's name contains ``replica``, ``recovery`` or ``backup``, and its ``job`` parameter
names ``source`` (or ``node``) and ``guest`` (or ``guests``, a list, or ``dataset``), with
``destination`` (or ``pbs``). The job's cron schedule gives its interval: a guest is late when
its newest success is older than twice that.
"""

from __future__ import annotations

from typing import Any, Callable

from dapx.core.notify import job_mode, should_notify
from dapx.flows.notify import notify_finished_run, outcome_of
from dapx.tasks.store import record_protection

__all__ = ["job_hooks", "notify_hook", "record_protection"]


async def notify_hook(flow: Any, flow_run: Any, state: Any) -> None:
    """Prefect state hook (completion, failure, crash): notify per the job's mode. Checks the
    mode against the outcome first, so a run that wants no message costs no API call."""
    parameters = dict(getattr(flow_run, "parameters", None) or {})
    outcome = outcome_of(state)
    if outcome is None or parameters.get("dry_run") or \
            not should_notify(job_mode(parameters), outcome):
        return
    await notify_finished_run(flow_run.id, state)


def job_hooks() -> dict[str, list[Callable[..., Any]]]:
    """The hooks every job flow carries: ``@flow(name=..., **job_hooks())``."""
    return {"on_completion": [notify_hook], "on_failure": [notify_hook],
            "on_crashed": [notify_hook]}
