"""The fleet's quick round (X7, P6): guests whose every disk is a plain incremental into this
job's own replica are copied with a few batched steps per node, not a replica run each.

A fleet's steady state is many guests each sending a small increment. A replica run per guest
costs the orchestrator about 18 task runs, a flow run, its logs and artifacts; here a guest
costs one syncoid command per disk (no task run: its retry is the guest's own run), and
everything else is one step per node for the whole set.

Only a guest that needs no decision the replica flow makes is taken: on ZFS, every disk's
target exists carrying this guest's owner mark, shares a snapshot with the source and needs
neither rollback nor a forced resend (no scratch copy of one is there), the guest has no
dropped disk's replica left, and (with registration) the destination's config is our replica.
A target written since its newest snapshot is not measured here: syncoid receives without
rollback or -F (``dapx.core.syncoid_argv``), so ZFS itself refuses the stream ("has been
modified since most recent snapshot") and overwrites nothing; the guest then goes to its own
run, which measures and refuses it naming the bytes. Anything else goes to the guest's own
replica run too, as does a guest whose lock another run holds, whose snapshot or transfer
failed here, or whose node could not be read in full: that run decides and says why. Nothing
here destroys anything but this job's own older snapshots.

Shape, per route (source -> destination), all routes at once: hold every guest's lock (one
lease when all are free); read the configs (one round trip on the source); read both sides'
snapshot states, the destination's owner marks and config files, trust and transport at once;
take every guest's snapshot (one command per guest, one round trip); syncoid per disk, senders
taking turns of ``SLOT_TURN`` seconds on the node slots; prune from what was read before (one
round trip per side, each target seen holding its new snapshot first); write registrations
only where the config changed; record protection once for the whole round.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, AsyncIterator, Awaitable, Callable

from dapx.blocks.node import ProxmoxNode
from dapx.core import snapshots as snapplan
from dapx.core.fleet import (FleetGuest, FleetJob, FleetRow, first_line, guest_job,
                             receive_limit_name, send_limit_name)
from dapx.core.jobspec import ReplicaJob
from dapx.core.snapnames import new_snapshot_name
from dapx.core.syncoid_argv import SyncoidOptions
from dapx.core.validate import snapshot_path
from dapx.core.volumes import destination_dataset
from dapx.errors import ConflictError, DapxError
from dapx.flows import resend
from dapx.flows.dropped import leftover_replicas
from dapx.flows.register import (ensure_zfs_storage, our_config, registration_text,
                                 vmid_config_paths, write_registration)
from dapx.flows.replica import (ZfsDisk, ZfsRun, choose_transport, guest_run, job_tag,
                                failed_sides, not_held, plan_disk, planned_pruning,
                                prune_both, zfs_disks)
from dapx.flows.trust import check_trust
from dapx.tasks import zfs
from dapx.tasks.guest_sets import read_configs, read_guests
from dapx.tasks.guests import SourceGuest
from dapx.tasks.locks import guest_lock_name, holding_free
from dapx.tasks.node_limits import node_slots
from dapx.tasks.store import Copy, record_protections
from dapx.tasks.syncoid import syncoid

QUICK_MIN = 2
"""Fewer ZFS guests than this in a run: each goes to its own replica run (nothing to batch)."""

SLOT_TURN = 10.0
"""Seconds of back-to-back transfers a sender does on one hold of its node slots before it
gives them back and waits its turn again: two lease calls per turn, not per guest, and a run
of another job waiting for the node waits at most this long beyond one transfer."""


@dataclass
class Quick:
    """One guest of the quick round, and how it went."""

    guest: FleetGuest
    job: ReplicaJob
    run: ZfsRun
    config: SourceGuest
    disks: list[ZfsDisk]
    snapshot: str
    bytes_sent: int = 0
    seconds: float = 0.0
    protected: bool = False
    """Every disk arrived and was pruned: the guest is protected (a registration that
    failed after that still fails its row, as in the guest's own run)."""
    error: str = ""
    """Why a step after the copy failed (pruning, registration): the guest's row fails."""

    def row(self, fleet_run: str | None) -> FleetRow:
        return FleetRow(guest=self.guest.vmid, node=self.guest.node, method="zfs",
                        destination=self.job.destination, dest_vmid=self.job.target_vmid,
                        outcome="failed" if self.error else "completed",
                        bytes_sent=self.bytes_sent, seconds=round(self.seconds, 3),
                        flow_run=fleet_run or "", error=self.error)


@dataclass
class Pacing:
    """How many guests may transfer at once: per source node, and per destination node."""

    send: dict[str, int]
    receive: dict[str, asyncio.Semaphore]


class Tally:
    """The fleet run's progress artifact: guests finished, of those it runs (quick round and
    own runs alike); updates are throttled by ``Progress``."""

    def __init__(self, job: FleetJob, total: int) -> None:
        from dapx.ui_extensions.artifacts import Progress, artifact_key

        self.progress = Progress(artifact_key("fleet-progress", *sorted(job.routes)),
                                 f"fleet: {total} guest(s) to copy")
        self.total, self.done = max(total, 1), 0

    async def start(self) -> None:
        await self.progress.start()

    async def tick(self) -> None:
        self.done += 1
        await self.progress.update(100.0 * self.done / self.total,
                                   force=self.done >= self.total)


# -----------------------------------------------------------------------------------------------
# Pure: which guests the round may take


@dataclass
class Sides:
    """What one route's reads found: both sides' datasets, the destination's owner marks
    under the replica parent, and its config files (with registration)."""

    src: dict[str, zfs.DatasetState]
    dst: dict[str, zfs.DatasetState]
    owned: dict[str, str]
    configs: dict[str, str]


def dest_config_paths(q: Quick, dest: str) -> tuple[str, str]:
    """(the replica's config path on ``dest``, the other kind's path for the same VMID)."""
    return vmid_config_paths(q.config.kind, q.job.target_vmid, dest)


def quick_plan(q: Quick, disk: ZfsDisk, sides: Sides, dest: str) -> snapplan.Plan:
    """The plan for one disk of ``q`` as ``sides`` found it. Raises ConflictError."""
    return plan_disk(disk, sides.src[disk.source], sides.dst[disk.target], q.snapshot,
                     force=False, destination=dest, owner=q.run.owner)


def refusal(q: Quick, sides: Sides, dest: str, register: bool) -> str:
    """Why ``q`` needs its own replica run ("" when the quick round may copy it)."""
    staging = resend.staging_for([d.target for d in q.disks], False)
    for disk in q.disks:
        source, target = sides.src[disk.source], sides.dst[disk.target]
        if not source.exists or not target.exists:
            return f"{disk.key}: no {'source' if not source.exists else 'replica'} yet"
        if target.owner != q.run.owner:
            return f"{disk.key}: the replica does not carry this guest's mark"
        if any(sides.dst[c].exists for c in (staging.incoming[disk.target],
                                             staging.old[disk.target])):
            return f"{disk.key}: a forced resend's copy is there"
        try:
            plan = quick_plan(q, disk, sides, dest)
        except ConflictError as exc:
            return f"{disk.key}: {exc}"
        if not isinstance(plan, snapplan.Incremental) or plan.rollback_to is not None:
            return f"{disk.key}: {snapplan.describe(plan)}"
    if leftover_replicas(sides.owned, q.run.owner, {d.target for d in q.disks},
                         q.job.target_vmid):
        return "a replica of a disk the guest no longer has"
    if register:
        try:
            ours = our_config(sides.configs, dest_config_paths(q, dest), q.job.source,
                              q.job.guest, q.job.target_vmid, dest)
        except ConflictError:
            ours = None
        if ours is None:
            return "not registered as its replica yet"
    return ""


# -----------------------------------------------------------------------------------------------
# The round


async def quick_round(job: FleetJob, nodes: dict[str, ProxmoxNode],
                      todo: list[tuple[FleetGuest, str]], pacing: Pacing, tally: Tally,
                      fleet_run: str | None) -> tuple[list[FleetRow], list[tuple[FleetGuest, str]]]:
    """Copy what the quick round may; (rows of the guests it took, the guests left to their
    own replica runs). Holds the locks of the guests it took only while it runs."""
    zfs_guests = [g for g, method in todo if method == "zfs"]
    if len(zfs_guests) < QUICK_MIN:
        return [], todo
    locks = {guest_lock_name(g.node, g.vmid): g for g in zfs_guests}
    async with holding_free(list(locks)) as held:
        by_source: dict[str, list[FleetGuest]] = {}
        for name, guest in locks.items():
            if name in held:
                by_source.setdefault(guest.node, []).append(guest)
        # Every route ends before the locks are given back, even when one raised (a bug).
        routes = await asyncio.gather(*(
            route_round(job, nodes[s], nodes[job.routes[s]], guests, pacing, tally, fleet_run)
            for s, guests in by_source.items()), return_exceptions=True)
    for route in routes:
        if isinstance(route, BaseException):
            raise route
    taken = [q for route in routes for q in route]
    if taken:
        await record_protections("replica", [
            Copy(q.job.source, q.job.guest, q.job.destination, q.snapshot, q.bytes_sent,
                 q.seconds) for q in taken if q.protected])
    done = {(q.guest.node, q.guest.vmid) for q in taken}
    left = [(g, m) for g, m in todo if (g.node, g.vmid) not in done]
    return [q.row(fleet_run) for q in taken], left


async def route_round(job: FleetJob, source: ProxmoxNode, dest: ProxmoxNode,
                      guests: list[FleetGuest], pacing: Pacing, tally: Tally,
                      fleet_run: str | None) -> list[Quick]:
    """One route's quick round; the guests it took (copied, or failed after the copy)."""
    quick, why = await candidates(job, source, guests), ""
    sides, options = None, None  # what is read first; unread when a read fails
    try:
        if quick:
            sides, options = await read_sides(job, source, dest, quick)
    except DapxError as exc:  # trust missing, a node down...: the guests' own runs say why
        quick, why = [], f"its nodes could not be read at once ({first_line(str(exc))})"
    if quick and options is None:
        quick, why = [], "syncoid cannot run between these nodes"
    left = {q.guest.vmid: refusal(q, sides, dest.name, job.register_vm) for q in quick}
    quick = [q for q in quick if not left[q.guest.vmid]]
    quick = await snapshot_all(source, quick)
    quick = await send_all(quick, source, dest, options, pacing, tally, fleet_run)
    if quick:
        try:
            await prune_all(source, dest, quick, sides)
        except DapxError as exc:  # the copies stand; the guests' rows fail, as their runs would
            for q in quick:
                q.error = q.error or f"pruning after the copy failed: {first_line(str(exc))}"
        if job.register_vm:
            await register_all(job, dest, [q for q in quick if not q.error], sides.configs)
    _log_route(source.name, dest.name, len(guests), len(quick), why, left)
    return quick


async def candidates(job: FleetJob, source: ProxmoxNode, guests: list[FleetGuest]) -> list[Quick]:
    """The guests whose config reads and maps to ZFS datasets (the others' own runs say
    what is wrong with them)."""
    try:
        configs = await read_guests(source, guests)
    except DapxError:
        return []
    now, found = datetime.now(timezone.utc), []
    for guest in guests:
        if guest.vmid not in configs:
            continue
        try:
            replica = guest_job(job, guest)
            disks = zfs_disks(configs[guest.vmid], replica)
        except DapxError:
            continue
        found.append(Quick(guest, replica, guest_run(replica), configs[guest.vmid], disks,
                           new_snapshot_name(job_tag(replica), now)))
    return found


async def read_sides(job: FleetJob, source: ProxmoxNode, dest: ProxmoxNode,
                     quick: list[Quick]) -> tuple[Sides, SyncoidOptions | None]:
    """Every read the plans need, at once: both sides' datasets (targets and the scratch
    copies a forced resend would use), owner marks, config files, trust, transport, and no
    receive running into a target. Raises what the first failing read raises."""
    staged = resend.staging_for([d.target for q in quick for d in q.disks], False).all_names()
    parent = destination_dataset(job.dest_pool, job.subfolder, "x").rsplit("/", 1)[0]
    paths = [p for q in quick for p in dest_config_paths(q, dest.name)] if job.register_vm else []

    src, dst, owned, configs, options, _ = await asyncio.gather(
        zfs.dataset_states(source, [d.source for q in quick for d in q.disks]),
        zfs.dataset_states(dest, staged, refuse_receiving=staged),
        zfs.owned_children(dest, parent), read_configs(dest, paths),
        choose_transport(quick[0].run, source, dest, quick[0].disks),
        check_trust(source, dest, master=True))
    return Sides(src, dst, owned, configs), options


async def snapshot_all(source: ProxmoxNode, quick: list[Quick]) -> list[Quick]:
    """Take every guest's snapshot (one command per guest, one round trip); those taken."""
    if not quick:
        return []
    groups = {snapshot_path(q.disks[0].source, q.snapshot): q for q in quick}
    try:
        taken = await zfs.snapshot_groups(source, [[snapshot_path(d.source, q.snapshot)
                                                    for d in q.disks] for q in quick])
    except DapxError:  # their own runs try again and say why
        return []
    return [q for first, q in groups.items() if taken.get(first) == ""]


async def send_all(quick: list[Quick], source: ProxmoxNode, dest: ProxmoxNode,
                   options: SyncoidOptions, pacing: Pacing, tally: Tally,
                   fleet_run: str | None) -> list[Quick]:
    """Copy every guest of ``quick`` (syncoid per disk); those whose every disk arrived. At
    most the job's per-source cap of senders, each taking turns of back-to-back transfers on
    one hold of the route's node slots and of a destination permit."""
    if not quick:
        return []
    slots = [send_limit_name(source.name), receive_limit_name(dest.name)]

    @asynccontextmanager
    async def hold() -> AsyncIterator[None]:
        async with pacing.receive[dest.name], node_slots(slots, fleet_run):
            yield

    async def send(q: Quick) -> Quick | None:
        sent = await transfer(q, source, dest, options)
        if sent is not None:
            await tally.tick()
        return sent

    return await in_turns(quick, pacing.send[source.name], hold, send)


async def in_turns(items: list[Any], senders: int, hold: Callable[[], Any],
                   work: Callable[[Any], Awaitable[Any]], turn: float = SLOT_TURN) -> list[Any]:
    """``work`` every item, ``senders`` at once; each sender does back-to-back items on one
    ``hold()`` (at least one) until ``turn`` seconds have passed, then gives
    it back and takes it again. The results that are not None, in no set order. When one
    ``work`` raises, the other senders are stopped (their holds given back) before it is
    raised."""
    queue, done = deque(items), []

    async def sender() -> None:
        while queue:
            async with hold():
                ends = time.monotonic() + turn
                while queue:  # at least one item per hold
                    result = await work(queue.popleft())
                    if result is not None:
                        done.append(result)
                    if time.monotonic() >= ends:
                        break

    running = [asyncio.create_task(sender()) for _ in range(min(senders, len(queue)))]
    try:
        await asyncio.gather(*running)
    except BaseException:  # a bug in one (or a cancelled round): no other sends on after it
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)
        raise
    return done


async def transfer(q: Quick, source: ProxmoxNode, dest: ProxmoxNode,
                   options: SyncoidOptions) -> Quick | None:
    """syncoid for each disk of ``q``, no task run each (``dapx.tasks.syncoid.syncoid``);
    ``q`` when every disk arrived, None when one failed (the guest's own run, whose
    ``run_syncoid`` retries, tries again and says why)."""
    started = time.monotonic()
    try:
        for disk in q.disks:
            sync = await syncoid(source, disk.source, dest.host, disk.target, options)
            q.bytes_sent += sync.bytes_sent
    except DapxError:
        return None
    q.seconds = time.monotonic() - started
    return q


async def prune_all(source: ProxmoxNode, dest: ProxmoxNode, quick: list[Quick],
                    sides: Sides) -> None:
    """Retention on both sides (this job's own snapshots beyond ``keep``, never the one now
    common), from both sides as read before the round (every disk here was a plain
    incremental): one round trip per side, each target seen holding its new snapshot before
    it loses anything. A busy snapshot is left for the next run; any other failure fails its
    guest's row."""
    prunes, owner = [], {}
    for q in quick:
        for disk in q.disks:
            src, dst = sides.src[disk.source], sides.dst[disk.target]
            prunes.append(planned_pruning(disk, src, dst, quick_plan(q, disk, sides, dest.name),
                                          q.run, q.snapshot))
            owner[disk.target] = q
    done = await prune_both(source, dest, prunes)
    for pruning in prunes:
        q, outcome = owner[pruning.target], done[pruning.target]
        if not outcome.held:
            q.error = q.error or not_held(pruning)
            continue
        for _, node, dataset, _, why in failed_sides(source, dest, pruning, outcome):
            if "busy" in why.lower():
                _logger().warning("pruning %s:%s deferred to the next run (the copy is "
                                  "complete): %s", node.name, dataset, why)
            elif not q.error:
                q.error = f"pruning {node.name}:{dataset} failed: {why}"
    for q in quick:
        q.protected = not q.error


async def register_all(job: FleetJob, dest: ProxmoxNode, quick: list[Quick],
                       configs: dict[str, str]) -> None:
    """Write each guest's config on the destination where it changed (registration checks
    the VMID again as it writes); a failure fails that guest's row, the copy stands."""
    if not quick:
        return
    try:
        storage, _ = await ensure_zfs_storage(dest, job.dest_pool, job.subfolder)
    except DapxError as exc:
        for q in quick:
            q.error = not_registered(q, exc)
        return
    changed = []
    for q in quick:
        text, _ = registration_text(q.job, q.config, storage)
        if configs.get(dest_config_paths(q, dest.name)[0]) != text:
            changed.append((q, text))
    written = await asyncio.gather(*(write_registration(dest, q.config, q.job.target_vmid, text)
                                     for q, text in changed), return_exceptions=True)
    for (q, _), outcome in zip(changed, written):
        if isinstance(outcome, DapxError):
            q.error = not_registered(q, outcome)
        elif isinstance(outcome, BaseException):
            raise outcome


def not_registered(q: Quick, exc: Exception) -> str:
    return (f"copied to {q.job.destination} (every disk) but not registered as VMID "
            f"{q.job.target_vmid}: {first_line(str(exc))}. The next run registers it")


def _log_route(source: str, dest: str, guests: int, taken: int, why: str,
               left: dict[int, str]) -> None:
    reasons: dict[str, int] = {}
    for reason in left.values():
        if reason:
            kind = reason.split(": ", 1)[-1]
            reasons[kind] = reasons.get(kind, 0) + 1
    detail = "; ".join(f"{n} {r}" for r, n in sorted(reasons.items())) or why or "none"
    _logger().info("quick round %s -> %s: %d of %d guest(s) copied here; the others go to "
                   "their own runs (%s)", source, dest, taken, guests, detail)


def _logger() -> Any:
    from dapx.tasks.base import run_logger

    return run_logger("dapx.fleet")
