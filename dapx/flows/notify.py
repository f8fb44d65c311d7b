"""Notifying one finished run of a job (A3, P7), and the ``notify-run`` flow.

``notify_finished_run`` is what both paths do: the flow's own hooks (completion, failure,
crash; see ``dapx.flows.hooks``) and ``notify-run``, which an automation starts for every
Crashed run of a job (a run killed hard never calls its hooks: the worker, or the heartbeat
automation when the worker died too, marks it Crashed). Steps: read the run fresh from
Prefect; skip dry runs and outcomes the job's notify mode does not want; claim the run in the
store (the first claimant sends, the other finds it claimed: exactly one message per run
attempt); compose the message; send it through Apprise; log per target whether it went out,
in the run's own log. Nothing here raises into a flow: a message that cannot be sent is
logged and never changes the run's outcome.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from prefect import flow, get_run_logger
from prefect.logging.loggers import flow_run_logger

from dapx.flows import KEPT_RESULTS
from dapx.blocks.notifications import aload_notifications
from dapx.core.notify import (RunNotice, describe_job, job_mode, run_body, run_subject,
                              should_notify, state_detail)
from dapx.core.protection import EVENT_KINDS
from dapx.tasks.notify import log_deliveries, send_notice
from dapx.tasks.runs import RunFacts, flow_run_url, read_run_facts
from dapx.tasks.store import open_store

_RUN_ID = re.compile(r"(?:prefect\.flow-run\.)?([0-9a-fA-F-]{36})")


def outcome_of(state: Any) -> str | None:
    """``Completed``, ``Failed`` or ``Crashed`` for a final state, else None."""
    if state is None:
        return None
    if state.is_crashed():
        return "Crashed"
    if state.is_failed():
        return "Failed"
    if state.is_completed():
        return "Completed"
    return None


async def notify_finished_run(flow_run_id: Any, state: Any = None,
                              facts: RunFacts | None = None) -> str:
    """Send the notification of one finished run if its job's mode wants one and nobody sent
    it yet. ``state``: the final state (read from the run when None); ``facts``: the run as
    already read, if it was.

    Out: what happened, one phrase (``sent``, ``already notified``, ``mode daily``...).
    Never raises."""
    try:
        facts = facts or await read_run_facts.fn(flow_run_id)
    except Exception as exc:  # no API: nothing to tell, and nothing may fail the run
        logging.getLogger("dapx.notify").warning("cannot read flow run %s to notify it: %s",
                                                 flow_run_id, exc)
        return f"unreadable: {type(exc).__name__}"
    logger = flow_run_logger(facts.flow_run)
    try:
        return await _notify(facts, state or facts.flow_run.state, logger)
    except Exception as exc:  # a notification never changes the outcome
        logger.warning("notification not sent: %s: %s", type(exc).__name__, exc)
        return f"error: {type(exc).__name__}"


async def _notify(facts: RunFacts, state: Any, logger: Any) -> str:
    run = facts.flow_run
    outcome = outcome_of(state)
    parameters = dict(run.parameters or {})
    if outcome is None:
        return "not finished"
    if parameters.get("dry_run"):
        return "dry run"
    mode = job_mode(parameters)
    if not should_notify(mode, outcome):
        return f"mode {mode}"
    block = await aload_notifications()
    if block is None or not block.urls():
        logger.info("no notification targets configured (`dapx notify add`)")
        return "no targets"
    async with open_store() as store:
        if not await store.claim_notification(str(run.id), run.run_count, outcome):
            logger.info("%s run already notified", outcome.lower())
            return "already notified"
        records = await store.for_run(str(run.id))
    notice = build_notice(facts, state, outcome, records)
    deliveries = await send_notice(run_subject(notice), run_body(notice))
    log_deliveries(logger, f"{outcome.lower()} run of {facts.job}", deliveries)
    sent = [d.target for d in deliveries if d.sent]
    return f"sent to {', '.join(sent)}" if sent else "sent to no target"


def build_notice(facts: RunFacts, state: Any, outcome: str, records: list) -> RunNotice:
    """The message's facts: job, guest, nodes, outcome, duration, bytes, link."""
    run = facts.flow_run
    what, nodes = describe_job(run.parameters or {})
    events = [r for r in records if r.kind in EVENT_KINDS]  # no copies: what they moved
    if events:
        records = [r for r in records if r.kind not in EVENT_KINDS]
        what = "; ".join(f"{r.subject} failed over to {r.destination}" if r.kind == "failover"
                         else f"{r.subject} failed back from {r.destination}" for r in events)
    started = run.start_time
    ended = getattr(state, "timestamp", None) or run.end_time
    seconds = (ended - started).total_seconds() if started and ended else None
    return RunNotice(job=facts.job, outcome=outcome, what=what, nodes=nodes,
                     detail=state_detail(getattr(state, "message", "")),
                     started=started, seconds=seconds,
                     bytes_sent=sum(r.bytes_sent for r in records) if records else None,
                     refs=() if events else tuple(r.ref for r in records if r.ref),
                     url=flow_run_url(run.id))


@flow(name="notify-run", log_prints=False, **KEPT_RESULTS)
async def notify_run(flow_run_id: str) -> str:
    """Notify a job's run that ended without running its hooks (Crashed: killed, or marked
    by the worker or the heartbeat automation), per its job's notify mode, unless its hooks
    or an earlier notify-run already did. ``flow_run_id``: the run's id, or its event
    resource id ``prefect.flow-run.<id>``. Out: what happened (``sent to ...``,
    ``already notified``, ``mode daily``, ``not a job``)."""
    logger = get_run_logger()
    match = _RUN_ID.fullmatch(flow_run_id.strip())
    if match is None:
        logger.warning("not a flow run id: %r", flow_run_id[:80])
        return "not a flow run id"
    facts = await read_run_facts(match[1])
    if not facts.is_job:
        logger.info("flow run %s is not a run of a dapx job: nothing to notify", match[1])
        return "not a job"
    result = await notify_finished_run(match[1], facts=facts)
    logger.info("%s (%s): %s", facts.job, match[1], result)
    return result
