"""``failover``: start a replica job's copy on its destination as the live guest (X5).

When a node dies, or before planned work on it, the administrator fails a replica job over
(`dapx failover JOB`, or the ``failover/default`` deployment from the UI):

1. The job is read from its deployment (a zfs-replica or btrfs-replica job).
2. The source's API is asked whether the guest runs anywhere in its cluster:
   - it runs: refused. Two copies would run, with the same addresses, each writing its own
     disks. Shut it down first (a planned failover), or fail over once its node is down.
   - it is stopped: a planned failover. The job runs once more (a last replica run copies
     every change since the last one), then the replica starts.
   - the node or its API does not answer, or the guest is not there: refused unless
     ``source_down`` says the node is down. Then the replica starts from its newest
     snapshot, and what the guest wrote after that is on the source alone.
3. The job's schedule is paused: no later run writes into the live copy.
4. Holding the guest's lock (so no replica run of it is in flight), the replica's config on
   the destination gets the failed-over mark as its first line (``#dapx-failed-over-from:
   pve1/100 <when>``). A replica run refuses that VMID from then on, even if someone resumes
   the schedule. A job that does not register its replica has it registered first, while the
   source can still be read.
5. The guest starts on the destination through its API, unless it runs already. The
   protection state records the failover: `dapx status` lists the started copy as a guest of
   its own (unprotected until a job covers it) and says where the source guest went.

Nothing is destroyed or rolled back; the source's disks and snapshots stay as they are.
Running it again finds each step done and goes on (a start that failed is tried again).
Failing back (the live copy replicated to the repaired node) is ``dapx.flows.failback``.
"""

from __future__ import annotations

import time
from datetime import datetime, timezone

from prefect import flow
from pydantic import BaseModel, Field

from dapx.blocks.manage import aload_nodes
from dapx.core.jobspec import NotifyMode, ReplicaJob
from dapx.core.registration import failed_over_from
from dapx.errors import ConflictError, InputError
from dapx.flows import KEPT_RESULTS
from dapx.flows.hooks import job_hooks, record_protection
from dapx.flows.register import register_guest, vmid_configs
from dapx.tasks.guests import mark_failed_over
from dapx.tasks.jobs import JobRef, pause_job, replica_jobs
from dapx.tasks.locks import DEFAULT_WAIT, guest_lock_name, run_exclusively
from dapx.tasks.pve_guests import guest_state, start_guest
from dapx.tasks.ssh import node_sessions
from dapx.ui_extensions.artifacts import artifact_key, publish_table

GUEST_FLOWS = ("zfs-replica", "btrfs-replica")


class FailoverResult(BaseModel):
    """What one failover did (returned by the flow, shown as a table)."""

    job: str = Field(description="The replica job failed over.", examples=["vm100-to-pve3"])
    source: str = Field(description="Node the guest ran on.", examples=["pve1"])
    guest: int = Field(description="The guest's VMID on the source.", examples=[100])
    destination: str = Field(description="Node the replica runs on now.", examples=["pve3"])
    dest_vmid: int = Field(description="The replica's VMID.", examples=[9100])
    source_state: str = Field(description="What the source's API said of the guest.",
                              examples=["stopped on pve1"])
    last_copy: str = Field(description="The last replica run, or why there was none.",
                           examples=["4.0 MiB in 3.1 s"])
    schedule: str = Field(description="What became of the job's schedule.",
                          examples=["paused"])
    config: str = Field(description="What became of the replica's config.",
                        examples=["marked failed over"])
    started: str = Field(description="Started now, or running already.", examples=["started"])
    seconds: float = 0.0


async def find_guest_job(name: str, action: str = "a failover starts") -> JobRef:
    """The replica job ``name`` of one guest (zfs-replica or btrfs-replica); InputError for
    another kind of job or an unknown name, listing the jobs that can (``action``: what the
    caller does with the job's replica, for the message)."""
    jobs, _ = await replica_jobs()
    guest_jobs = [j for j in jobs if j.flow in GUEST_FLOWS]
    found = next((j for j in jobs if j.name == name), None)
    if found is None or found.flow not in GUEST_FLOWS:
        what = f"a {found.flow} job" if found else "not a job"
        names = ", ".join(j.name for j in guest_jobs) or "none"
        raise InputError(f"{name!r} is {what}: {action} the replica of a zfs-replica or "
                         f"btrfs-replica job (those jobs: {names})")
    return found


def refusal(state: str, job: ReplicaJob, source_down: bool) -> str | None:
    """Why the failover must not go on, given the source's ``state`` (from ``guest_state``);
    None when it may."""
    if state.startswith("running"):
        return (f"guest {job.guest} is {state}: starting its replica would run two copies. "
                f"Shut it down first (the failover then copies its last changes), or fail "
                f"over once {job.source} is down")
    if state.startswith("stopped") or source_down:
        return None
    why = f"cannot ask {job.source} whether guest {job.guest} runs ({state.split(': ', 1)[1]})" \
        if state.startswith("unreachable") else f"guest {job.guest} is not on {job.source}"
    return (f"{why}: if {job.source} is down, run again with source_down (dapx failover "
            "--source-down); the replica then starts from its newest snapshot")


@flow(name="failover", log_prints=False, **KEPT_RESULTS, **job_hooks())
async def failover(job_name: str, source_down: bool = False, notify: NotifyMode = "always",
                   lock_wait: float = DEFAULT_WAIT) -> FailoverResult:
    """Start replica job ``job_name``'s copy on its destination as the live guest, and pause
    the job (see the module's text for the steps).

    ``source_down``: the administrator says the source node is down (or that its guest's
    last changes are not wanted): go on without asking it, and without a last copy.
    ``notify``: when to send a notification (``always`` by default: a failover is news).
    Raises InputError for an unknown job or another kind of job, ConflictError when the guest
    still runs on its source, when the source cannot be asked and ``source_down`` is not
    given, or when the destination VMID holds another guest; the last replica run's own
    errors when it fails (nothing is started then).
    """
    started = time.monotonic()
    ref = await find_guest_job(job_name)
    job = ref.job
    assert isinstance(job, ReplicaJob)  # GUEST_FLOWS take ReplicaJob
    source, dest = await aload_nodes(job.source, job.destination)
    state = await guest_state(source, job.guest)
    why = refusal(state, job, source_down)
    if why:
        raise ConflictError(why)
    can_read_source = state.startswith("stopped")
    async with node_sessions():
        earlier = await failed_over_already(dest, job)
    if earlier:
        last_copy = f"skipped: failed over already ({earlier})"
    elif not can_read_source:
        last_copy = "skipped: the source is down (source_down)"
    else:
        last_copy = await last_replica_run(ref)
    paused = await pause_job(ref)
    result = FailoverResult(job=ref.name, source=job.source, guest=job.guest,
                            destination=job.destination, dest_vmid=job.target_vmid,
                            source_state=state, last_copy=last_copy,
                            schedule="paused" if paused else "paused already",
                            config="", started="")

    async def bring_up(_: bool) -> None:
        if can_read_source:  # asked again, just before: started there meanwhile, it stays so
            now = await guest_state(source, job.guest)
            if now.startswith("running"):
                raise ConflictError(refusal(now, job, source_down) + "; nothing was started")
        path, kind, registered = await replica_config(ref, source, dest, can_read_source)
        when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")
        marked = await mark_failed_over(dest, path, job.source, job.guest, when)
        result.config = registered + ("marked failed over" if marked else "marked already")
        ran = await start_guest(dest, dest.name, kind, job.target_vmid)
        result.started = "started" if ran else "running already"
        # `dapx status` lists the started copy as a guest of its own from now on; recorded by
        # a repeat too (a run cut after the start recorded nothing), with the mark's time
        await record_protection("failover", job.source, job.guest,
                                f"{job.destination}/{job.target_vmid}",
                                ref=when if marked else earlier or when)

    await run_exclusively(guest_lock_name(job.source, job.guest),
                          f"failing guest {job.guest} of {job.source} over to {job.destination}",
                          lock_wait, False, bring_up)
    result.seconds = round(time.monotonic() - started, 3)
    await publish_table(artifact_key("failover", job.source, job.guest, job.destination),
                        [{"step": k.replace("_", " "), "outcome": str(v)}
                         for k, v in result.model_dump().items()],
                        f"guest {job.guest} of {job.source} runs on {job.destination} as "
                        f"{job.target_vmid}")
    return result


async def failed_over_already(dest, job: ReplicaJob) -> str | None:  # noqa: ANN001
    """When an earlier failover of ``job`` marked its replica config: ``<when>``; else None."""
    marks = [failed_over_from(text) or "" for text in
             (await vmid_configs(dest, job.target_vmid))[1].values()]
    ours = [m.split(" ", 1)[1] for m in marks if m.startswith(f"{job.source}/{job.guest} ")]
    return ours[0] if ours else None


async def last_replica_run(ref: JobRef, force: bool = False) -> str:
    """Run the job once more, as a subflow of this run (its errors stop the failover);
    ``force`` as the replica flows take it."""
    from dapx.core.units import human_bytes

    if ref.flow == "zfs-replica":
        from dapx.flows.replica import zfs_replica as replica
    else:
        from dapx.flows.btrfs_replica import btrfs_replica as replica
    copied = await replica(job=ref.job, force=force)
    return f"{human_bytes(copied.bytes_sent)} in {copied.seconds:g} s"


async def replica_config(ref: JobRef, source, dest, can_read_source: bool  # noqa: ANN001
                         ) -> tuple[str, str, str]:
    """(the replica's config path on the destination, its kind, "registered now; " or "").
    A job that does not register has its replica registered here, from the source's config.
    Raises ConflictError when the VMID holds another guest's config, or when the replica is
    not registered and the source cannot be read."""
    job = ref.job
    paths, files = await vmid_configs(dest, job.target_vmid)
    found = [(p, k) for p, k in zip(paths, ("qemu", "lxc")) if p in files]
    if found:
        return found[0][0], found[0][1], ""
    if not can_read_source:
        raise ConflictError(f"the replica of {job.source}/{job.guest} is not registered on "
                            f"{job.destination} as VMID {job.target_vmid} (the job does not "
                            f"register it) and {job.source} is down, so its config cannot "
                            "be read: nothing was started")
    kind = "btrfs" if ref.flow == "btrfs-replica" else "zfs"
    registration = await register_guest(job, source, dest, kind)
    path = paths[0] if registration.kind == "qemu" else paths[1]
    return path, registration.kind, "registered now; "
