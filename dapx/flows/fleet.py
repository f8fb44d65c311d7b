"""``fleet-replica``: one job protecting a set of guests, each guest its own replica run (X7).

Shape of a run: load the job's node blocks; ask each source node's API which guests it holds
(``/cluster/resources``: new guests are found by the next run, gone ones are no longer
asked for) and keep those the job's filters name (a list, a PVE pool, a tag); read their
configs over SSH, one round trip per node, to tell ZFS guests from BTRFS ones (guests on
other storage are skipped, or fail when listed by VMID). Then the quick round
(``dapx.flows.fleet_round``) copies, in a few batched steps per node, every ZFS guest whose
disks are plain incrementals into this job's own replicas (a fleet's steady state); every
other guest is one subflow run of ``zfs-replica`` or ``btrfs-replica``, which takes the
guest's own lock as always (a dry or forced run has no quick round). At most
``job_slots`` guests run at once per source node and per destination node, and across jobs
and workers the node limits (``dapx.tasks.node_limits``) hold. A failing guest is recorded
and the others carry on; the run publishes one table row per guest and fails at the end
naming every guest that failed and why.

Memory is bounded by the guests in flight, not the fleet: what a guest's run leaves behind is
one ``FleetRow``.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import Any

from prefect import flow
from pydantic import BaseModel, Field

from dapx.blocks.manage import aload_nodes
from dapx.blocks.node import ProxmoxNode
from dapx.core.fleet import (DEFAULT_NODE_SLOTS, FleetGuest, FleetJob, FleetRow,
                             failure_message, first_line,
                             guest_job, job_slots, receive_limit_name, send_limit_name,
                             wanted_method)
from dapx.errors import DapxError, PermanentError
from dapx.flows import KEPT_RESULTS
from dapx.flows.hooks import job_hooks
from dapx.flows.btrfs_replica import btrfs_replica
from dapx.flows.fleet_round import Pacing, Tally, quick_round
from dapx.flows.replica import zfs_replica
from dapx.tasks.guest_sets import list_guests, replica_methods
from dapx.tasks.locks import DEFAULT_WAIT, current_flow_run, shared_lock_client
from dapx.tasks.node_limits import node_limits, node_slots
from dapx.tasks.ssh import node_sessions, shared_sessions
from dapx.ui_extensions.artifacts import artifact_key, human_bytes, publish_table

REPLICA_FLOWS = {"zfs": zfs_replica, "btrfs": btrfs_replica}


class FleetResult(BaseModel):
    """What a fleet run did: one row per guest it found."""

    rows: list[FleetRow] = Field(default_factory=list)
    dry_run: bool = False
    seconds: float = 0.0
    peak_rss_mib: float = Field(default=0.0, description="Peak memory of the process that "
                                "ran the fleet (every guest's run is in it).")

    def count(self, outcome: str) -> int:
        return sum(r.outcome == outcome for r in self.rows)


# -----------------------------------------------------------------------------------------------
# Which guests, and how each is copied


async def resolve(job: FleetJob, nodes: dict[str, ProxmoxNode]) -> tuple[list[tuple[
        FleetGuest, str]], list[FleetRow]]:
    """The guests to run now with their method, and the rows of those that are not run:
    skipped by the storage filter, listed by VMID and not found or not replicable, or on a
    source node that could not be read (its guests fail; other nodes' guests still run)."""
    from dapx.core.fleet import select_guests

    sources = list(job.routes)
    listings = await asyncio.gather(*(list_guests(nodes[s]) for s in sources),
                                    return_exceptions=True)
    rows = [node_failure(s, "cannot list its guests", e)
            for s, e in zip(sources, listings) if isinstance(e, BaseException)]
    guests, missing = select_guests(
        (row for rows_ in listings if not isinstance(rows_, BaseException) for row in rows_),
        job)
    unread = {r.node for r in rows}
    rows += [FleetRow(guest=v, node="-", outcome="failed",
                      error="on none of the job's source nodes") for v in missing
             if not unread]  # with a node unread, a listed guest may just be there
    by_node: dict[str, list[FleetGuest]] = {}
    for guest in guests:
        by_node.setdefault(guest.node, []).append(guest)
    found = await asyncio.gather(*(replica_methods(nodes[n], gs) for n, gs in by_node.items()),
                                 return_exceptions=True)
    methods: dict[int, str] = {}
    for (node, node_guests), part in zip(by_node.items(), found):
        if isinstance(part, BaseException):
            rows += [node_failure(node, "cannot read its guests' configs", part, g.vmid)
                     for g in node_guests]
        else:
            methods.update(part)
    todo = []
    for guest in (g for g in guests if g.vmid in methods):
        method = methods[guest.vmid]
        if wanted_method(method, job):
            todo.append((guest, method))
        elif guest.vmid in job.vmids and method not in ("zfs", "btrfs"):
            rows.append(FleetRow(guest=guest.vmid, node=guest.node, outcome="failed",
                                 error=f"not replicated: {method}"))
        else:
            reason = method if method not in ("zfs", "btrfs") else f"on {method} storage"
            rows.append(FleetRow(guest=guest.vmid, node=guest.node, method=method,
                                 outcome="skipped", error=f"left out: {reason}"))
    return todo, rows


def node_failure(node: str, what: str, exc: BaseException, vmid: int = 0) -> FleetRow:
    """A failed row for a node (or one of its guests) that could not be read. Only DAPX's
    own errors are expected; anything else is a bug and is raised."""
    if not isinstance(exc, DapxError):
        raise exc
    return FleetRow(guest=vmid, node=node, outcome="failed",
                    error=f"{what}: {first_line(str(exc))}")


# -----------------------------------------------------------------------------------------------
# One guest


async def run_guest(job: FleetJob, guest: FleetGuest, method: str, *, dry_run: bool,
                    force: bool, lock_wait: float, fleet_run: str | None) -> FleetRow:
    """One guest's replica as a subflow run, holding its nodes' slots (not for a dry run);
    its outcome as a row. Never raises for the guest's own failure."""
    started = time.monotonic()
    row = FleetRow(guest=guest.vmid, node=guest.node, method=method,
                   destination=job.routes[guest.node])
    try:
        replica = guest_job(job, guest)
    except DapxError as exc:
        return row.model_copy(update={"outcome": "failed", "error": str(exc)})
    row.dest_vmid = replica.target_vmid
    subflow = REPLICA_FLOWS[method].with_options(
        flow_run_name=f"{guest.node}-{guest.vmid}-to-{replica.destination}")
    call = subflow(job=replica, dry_run=dry_run, force=force, lock_wait=lock_wait,
                   return_state=True)
    if dry_run:
        state = await call
    else:
        async with node_slots([send_limit_name(guest.node),
                               receive_limit_name(replica.destination)], fleet_run):
            state = await call
    return await outcome_row(row, state, started)


async def outcome_row(row: FleetRow, state: Any, started: float) -> FleetRow:
    """Fill ``row`` from a subflow's final state: bytes for a success, the first line of the
    error for a failure. Only the row is kept (the state and its result are dropped)."""
    row.seconds = round(time.monotonic() - started, 3)
    row.flow_run = str(state.state_details.flow_run_id or "")
    if state.is_completed():
        result = await state.aresult(raise_on_failure=False)
        row.bytes_sent = int(getattr(result, "bytes_sent", 0) or 0)
        return row
    row.outcome = "failed"
    row.error = first_line(state.message or state.name or "failed").removeprefix(
        "Flow run encountered an exception: ")
    return row


# -----------------------------------------------------------------------------------------------
# Every guest, bounded per node


async def pacing(job: FleetJob, dry_run: bool) -> Pacing:
    """How many of this job's guests run at once per source node and per destination node:
    the node limits (created when missing), or the job's own caps when lower."""
    names = ([send_limit_name(s) for s in job.routes]
             + [receive_limit_name(d) for d in set(job.routes.values())])
    # A dry run changes nothing on the nodes: it takes no slots, but keeps the same pace.
    limits = dict.fromkeys(names, DEFAULT_NODE_SLOTS) if dry_run else await node_limits(names)
    return Pacing(send={s: job_slots(limits[send_limit_name(s)], job.per_source)
                        for s in job.routes},
                  receive={d: asyncio.Semaphore(job_slots(limits[receive_limit_name(d)],
                                                          job.per_destination))
                           for d in set(job.routes.values())})


async def run_all(job: FleetJob, todo: list[tuple[FleetGuest, str]], pace: Pacing,
                  tally: Tally, *, dry_run: bool, force: bool, lock_wait: float,
                  fleet_run: str | None) -> list[FleetRow]:
    """Run every guest: per source node ``pace.send`` runners take its guests in turn; a
    destination semaphore bounds the runs each destination receives from this job."""
    queues: dict[str, deque] = {s: deque() for s in job.routes}
    for guest, method in todo:
        queues[guest.node].append((guest, method))
    rows: list[FleetRow] = []

    async def runner(queue: deque) -> None:
        while queue:
            guest, method = queue.popleft()
            async with pace.receive[job.routes[guest.node]]:
                rows.append(await run_guest(job, guest, method, dry_run=dry_run, force=force,
                                            lock_wait=lock_wait, fleet_run=fleet_run))
            await tally.tick()

    await asyncio.gather(*(runner(queues[s]) for s in job.routes
                           for _ in range(min(pace.send[s], len(queues[s])))))
    return rows


# -----------------------------------------------------------------------------------------------
# The flow


def table_rows(rows: list[FleetRow]) -> list[dict[str, Any]]:
    """The result table, failures first, then by node and guest."""
    order = {"failed": 0, "completed": 1, "skipped": 2}
    return [{"guest": r.label, "destination":
             f"{r.destination}/{r.dest_vmid}" if r.destination else "-", "method": r.method,
             "outcome": r.outcome, "sent": human_bytes(r.bytes_sent), "seconds": r.seconds,
             "flow run": r.flow_run or "-", "error": r.error or "-"}
            for r in sorted(rows, key=lambda r: (order[r.outcome], r.node, r.guest))]


async def publish_fleet(job: FleetJob, result: FleetResult) -> None:
    title = (f"fleet of {len(result.rows)} guest(s) in {result.seconds:g} s: "
             f"{result.count('completed')} completed, {result.count('failed')} failed, "
             f"{result.count('skipped')} skipped; peak memory {result.peak_rss_mib:g} MiB"
             + (" (dry run)" if result.dry_run else ""))
    key = artifact_key("fleet-result", *sorted(job.routes))
    await publish_table(key, table_rows(result.rows), title)


def peak_rss_mib() -> float:
    """This process's peak resident memory so far, in MiB (Linux reports KiB)."""
    import resource

    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


@flow(name="fleet-replica", log_prints=False, **KEPT_RESULTS, **job_hooks())
async def fleet_replica(job: FleetJob, dry_run: bool = False, force: bool = False,
                        lock_wait: float = DEFAULT_WAIT) -> FleetResult:
    """Replicate every guest of the set ``job`` names, each guest its own subflow run.

    ``dry_run`` runs every guest's plan only; ``force`` and ``lock_wait`` pass to each
    guest's run. Returns one row per guest. Raises InputError for an unknown node,
    PermanentError naming every guest that failed (after all the others ran).
    """
    started = time.monotonic()
    names = job.nodes()
    nodes = dict(zip(names, await aload_nodes(*names)))
    fleet_run = current_flow_run()
    async with shared_sessions() if job.share_connections else node_sessions(), \
            shared_lock_client():
        todo, rows = await resolve(job, nodes)
        pace, tally = await pacing(job, dry_run), Tally(job, len(todo))
        await tally.start()
        if not (dry_run or force):  # the steady state, batched; the rest in their own runs
            quick, todo = await quick_round(job, nodes, todo, pace, tally, fleet_run)
            rows += quick
        rows += await run_all(job, todo, pace, tally, dry_run=dry_run, force=force,
                              lock_wait=lock_wait, fleet_run=fleet_run)
    result = FleetResult(rows=rows, dry_run=dry_run, seconds=round(time.monotonic() - started, 3),
                         peak_rss_mib=peak_rss_mib())
    await publish_fleet(job, result)
    if result.count("failed"):
        raise PermanentError(failure_message(rows))
    return result
