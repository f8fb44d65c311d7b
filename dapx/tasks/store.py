"""The protection store from flows: where it is, and the task job flows call on success.

Location: ``DAPX_STORE_URL`` (any SQLAlchemy URL: ``postgresql://user:pass@db/dapx`` when
workers run on several hosts), else SQLite at ``$PREFECT_HOME/dapx/protection.db`` beside
Prefect's own database. Every process that runs flows, and `dapx status`, must see the same
store: the same PREFECT_HOME on one host, or the same DAPX_STORE_URL.

``record_protection`` is how a job flow takes part in the protection state (X4); see
``dapx.flows.hooks`` for the whole API other flows use.
"""

from __future__ import annotations

import os
from datetime import datetime, timezone
from pathlib import Path
from typing import NamedTuple

from dapx.core.protection import RECORD_KINDS, Record, dataset_subject, guest_subject
from dapx.errors import InputError
from dapx.tasks.base import dapx_task
from dapx.tasks.base import run_logger
from dapx.transports.store import ProtectionStore

STORE_URL_ENV = "DAPX_STORE_URL"


def store_url() -> str:
    """The configured store URL (see the module docstring)."""
    url = os.environ.get(STORE_URL_ENV, "").strip()
    if url:
        return url
    from prefect.settings import PREFECT_HOME

    # The environment first, as Prefect reads it: a process's settings are loaded once, and
    # a PREFECT_HOME exported later (a test, a wrapper script) must still name one store.
    home = os.environ.get("PREFECT_HOME") or str(PREFECT_HOME.value())
    return f"sqlite:///{Path(home).expanduser() / 'dapx' / 'protection.db'}"


def open_store() -> ProtectionStore:
    """The store, to use as ``async with open_store() as store``."""
    return ProtectionStore(store_url())


_JOB_NAMES: dict[str, str] = {}
"""Deployment id -> its job name ``<flow>/<deployment>``, read once per process."""


async def _run_identity() -> tuple[str, str]:
    """(flow run id, job name ``<flow>/<deployment>`` or "") of the current run, from its
    context: the job is the deployment that started the run, also in a subflow run (a fleet
    job's guest). ``prefect.runtime``'s getters fetch the flow run and the deployment each
    time, each through a new client (~50 ms of CPU to build here), blocking the event loop:
    12% of a replica run's CPU (measured with py-spy)."""
    from prefect import context as prefect_context
    from prefect.client.orchestration import get_client

    context = prefect_context.FlowRunContext.get()
    if context is None or context.flow_run is None:
        return "", ""
    # The top-level run's deployment, which subflow runs inherit (where prefect.runtime
    # reads it first); the run's own when the variable is not there.
    inherited = getattr(prefect_context, "_deployment_id", None)
    deployment_id = (inherited.get() if inherited is not None else None) or \
        context.flow_run.deployment_id
    if deployment_id is None:
        return str(context.flow_run.id), ""
    key = str(deployment_id)
    if key not in _JOB_NAMES:
        async with get_client() as client:  # the run's own client
            deployment = await client.read_deployment(deployment_id)
            flow = await client.read_flow(deployment.flow_id)
        _JOB_NAMES[key] = f"{flow.name}/{deployment.name}"
    return str(context.flow_run.id), _JOB_NAMES[key]


def subject_of(source: str, guest: int | str) -> str:
    """``pve1/100`` for a VMID, ``pve1:rpool/data/share`` for a dataset name."""
    if isinstance(guest, int) or (isinstance(guest, str) and guest.isdigit()):
        return guest_subject(source, int(guest))
    return dataset_subject(source, guest)


@dapx_task(name="record-protection", retries=0)
async def record_protection(kind: str, source: str, guest: int | str, destination: str, *,
                            ref: str = "", bytes_sent: int = 0, seconds: float = 0.0) -> bool:
    """Record one successful ``kind`` (``replica``, ``backup`` or ``recovery``) of ``guest``
    (a VMID, or a dataset name) on node ``source``, copied to ``destination`` (a node, or
    ``pbs1:store`` for a backup), with the snapshot or backup id ``ref``, bytes moved and
    seconds taken. The flow run and its job are read from the run context.

    Out: True when stored. A store that cannot be written is logged and returns False: the
    copy succeeded, and recording it must not turn the run into a failure.
    Raises InputError for an unknown ``kind`` (a programming error in the calling flow).
    """
    return await _store(kind, [Copy(source, guest, destination, ref, bytes_sent, seconds)]) == 1


class Copy(NamedTuple):
    """One successful copy to record (``record_protections``)."""

    source: str
    guest: int | str
    destination: str
    ref: str = ""
    bytes_sent: int = 0
    seconds: float = 0.0


@dapx_task(name="record-protections", retries=0)
async def record_protections(kind: str, copies: list[Copy]) -> int:
    """``record_protection`` for many copies in one store session (a fleet's quick round).
    Out: how many were stored (0 when the store cannot be written: logged, never raised)."""
    return await _store(kind, copies)


async def _store(kind: str, copies: list[Copy]) -> int:
    if kind not in RECORD_KINDS:
        raise InputError(f"protection kind {kind!r} must be one of {', '.join(RECORD_KINDS)}")
    run_id, job = await _run_identity()
    now = datetime.now(timezone.utc)
    records = [Record(subject=subject_of(c.source, c.guest), kind=kind,
                      destination=c.destination, at=now, job=job, ref=c.ref,
                      bytes_sent=int(c.bytes_sent), seconds=float(c.seconds), flow_run_id=run_id)
               for c in copies]
    try:
        async with open_store() as store:
            for record in records:
                await store.add(record)
    except Exception as exc:  # the store must never fail a good copy
        run_logger("dapx.store").error("could not record the %s of %s in the protection store (%s): %s",
                            kind, ", ".join(r.subject for r in records),
                            type(exc).__name__, exc)
        return 0
    return len(records)


@dapx_task(name="read-protection-records")
async def latest_records() -> list[Record]:
    """The newest record of every subject, kind, destination and job."""
    async with open_store() as store:
        return await store.latest()
