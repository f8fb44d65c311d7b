"""``failback``: bring a failed-over guest home to its repaired node (X5's second half).

After `dapx failover JOB` the guest runs on the job's destination as its replica (pve3/9400,
its config's first line ``#dapx-failed-over-from: pve1/100 <when>``). Once pve1 is back,
`dapx failback JOB` (or the ``failback/default`` deployment) reverses the replication:

1. Checks, before anything changes: the copy on the destination is the job's failed-over
   copy; pve1's API answers; guest 100 does not run anywhere in pve1's cluster (its original
   was started again: two copies would run); the storage for the disks is known (the
   original's, or ``storage`` when the original is gone).
2. Copy while the live copy runs: the live copy is replicated to pve1 under a free VMID
   beside the original (the replica steps: node to node, registered there, first line
   ``#dapx-replica-of: pve3/9400``). The original is not touched.
3. Holding the guest's lock: the live copy is shut down, and a second replica run copies
   what it wrote meanwhile (seconds). Then the copy takes VMID 100: the original is
   renumbered aside under a free VMID (kept, marked ``#dapx-stale-original-of: ...``, its
   ``onboot`` taken away so it never starts beside the guest that replaced it), the copy
   renumbered into place. Its config gets ``#dapx-failed-back-from: pve3/9400 <when>`` as its
   first line, and the original's ``onboot`` and node-bound keys (hookscript, hostpciN ...)
   back. It starts on pve1.
4. The live copy, stopped, becomes the job's replica again (its first line our replica mark),
   the job is resumed and runs once: the shared snapshots make that run incremental (ZFS;
   on BTRFS the guest at home shares no snapshot the job can send from, so that run sends it
   whole, received beside the replica and swapped in), and `dapx status` shows the guest
   protected again.
5. The snapshots the failback's own copies made, on both sides, are removed: the job's run
   made a newer one both sides share (``core.failback`` says which are the failback's).

Nothing is destroyed: the original waits aside until the administrator removes it, the live
copy becomes the replica. Each step finds itself done when run again (a failback cut half
way is run again): a copy beside is found by its mark, a swapped copy by its config's first
line, a failed-back guest by its mark.
"""

from __future__ import annotations

import asyncio
import time
from datetime import datetime, timezone

from prefect import flow
from pydantic import BaseModel, Field

from dapx.blocks.manage import aload_nodes
from dapx.blocks.node import ProxmoxNode
from dapx.core.failback import btrfs_home_scratch, btrfs_live_scratch, zfs_scratch
from dapx.core.guestconfig import list_disks, parse_guest_config
from dapx.core.jobspec import NotifyMode, ReplicaJob
from dapx.core.migration_rules import free_vmid
from dapx.core.registration import (FAILED_BACK_MARK, REPLICA_MARK, STALE_MARK,
                                    failed_over_from)
from dapx.core.units import human_bytes
from dapx.core.volumes import btrfs_subvolume
from dapx.errors import ConflictError, InputError
from dapx.flows import KEPT_RESULTS
from dapx.flows.failover import find_guest_job, last_replica_run
from dapx.flows.hooks import job_hooks, record_protection
from dapx.flows.migration_copy import storage_place
from dapx.flows.register import vmid_configs
from dapx.flows.replica import zfs_disks
from dapx.flows.swap import swap_into_place
from dapx.tasks import btrfs, zfs
from dapx.tasks.guests import (mark_failed_back, mark_replica_again, mark_stale_original,
                               marked_configs, read_guest)
from dapx.tasks.jobs import JobRef, set_paused
from dapx.tasks.locks import DEFAULT_WAIT, guest_lock_name, run_exclusively
from dapx.tasks.pve_guests import (guest_state, read_cluster_guests, shut_down_guest,
                                   start_guest)
from dapx.tasks.renumber import check_renumber, renumber_guest
from dapx.tasks.ssh import node_sessions
from dapx.ui_extensions.artifacts import artifact_key, publish_table


class FailbackResult(BaseModel):
    """What one failback did (returned by the flow, shown as a table)."""

    job: str = Field(description="The replica job failed back.", examples=["vm100-to-pve3"])
    source: str = Field(description="The guest's home node.", examples=["pve1"])
    guest: int = Field(description="The guest's VMID there.", examples=[100])
    destination: str = Field(description="Node the guest ran on while failed over.",
                             examples=["pve3"])
    dest_vmid: int = Field(description="Its VMID there (the job's replica).", examples=[9100])
    copies: str = Field(default="", description="The copies home, or why there were none.",
                      examples=["32.0 MiB in 4.1 s; then 1.0 MiB in 1.9 s, stopped"])
    original: str = Field(default="", description="What became of the original guest.",
                          examples=["kept aside as VMID 102 (stopped, no onboot)"])
    started: str = Field(default="", description="The guest at home: started now, or "
                         "running already.", examples=["started"])
    live_copy: str = Field(default="", description="What became of the live copy.",
                           examples=["stopped; the job's replica again"])
    schedule: str = Field(default="", description="The job's schedule.", examples=["resumed"])
    replica: str = Field(default="", description="The job's run after the failback.",
                         examples=["1.0 MiB in 1.2 s"])
    scratch: str = Field(default="", description="The failback's own snapshots, removed once "
                         "the job's run made a newer one both sides share.",
                         examples=["2 snapshots removed"])
    seconds: float = 0.0


def _vmid(path: str) -> int:
    return int(path.rsplit("/", 1)[1].split(".", 1)[0])


def _kind(path: str) -> str:
    return "lxc" if "/lxc/" in path else "qemu"


def _first(files: dict[str, str]) -> tuple[str, str] | None:
    """(path, text) of the one config a VMID has, or None."""
    return next(iter(files.items()), None)


class Home:
    """What pve1 holds of the guest, read once: its config at the guest's VMID, the marked
    configs (a copy beside, an original aside) and the cluster's VMIDs."""

    def __init__(self, configs: dict[str, str], marked: dict[str, str], used: set[int],
                 live: str, home: str) -> None:
        self.config = _first(configs)
        self.used = used
        self.beside = next((p for p, line in sorted(marked.items())
                            if line == REPLICA_MARK + live and _vmid(p) != _vmid_of(home)), None)
        asides = [p for p, line in marked.items()
                  if line.startswith(f"{STALE_MARK}{home} before its failback from {live} ")]
        self.aside = max(asides, key=marked.get, default=None)  # the newest (by its <when>)

    @property
    def first_line(self) -> str:
        return self.config[1].split("\n", 1)[0].rstrip("\r") if self.config else ""


def _vmid_of(guest: str) -> int:
    return int(guest.split("/", 1)[1])


async def read_home(source: ProxmoxNode, job: ReplicaJob, live: str, home: str) -> Home:
    _, configs = await vmid_configs(source, job.guest)
    marked = await marked_configs(source)
    used = set(read_cluster_guests(source))
    return Home(configs, marked, used, live, home)


def failback_job(job: ReplicaJob, staged: int, place: dict[str, str]) -> ReplicaJob:
    """The replica job that copies the live copy home as ``staged``, beside the original."""
    return ReplicaJob(source=job.destination, guest=job.target_vmid, destination=job.source,
                      dest_vmid=staged, compression=job.compression, keep=1, register_vm=True,
                      bridge_map={new: old for old, new in job.bridge_map.items()},
                      carry_keys=job.carry_keys, bwlimit=job.bwlimit, notify="never", **place)


async def copy_home(ref: JobRef, rjob: ReplicaJob, lock_wait: float) -> str:
    """One replica run of the live copy home (its steps run in this flow); what it moved."""
    if ref.flow == "zfs-replica":
        from dapx.flows.replica import zfs_replica as replica
    else:
        from dapx.flows.btrfs_replica import btrfs_replica as replica
    copied = await replica.fn(job=rjob, lock_wait=lock_wait)
    return f"{human_bytes(copied.bytes_sent)} in {copied.seconds:g} s"


def storage_of(home: Home, storage: str, job: ReplicaJob) -> str:
    """The storage the guest's disks go to at home: ``storage`` if given, else the one the
    original's first disk is on. InputError when neither is known."""
    if storage:
        return storage
    if home.config:
        disks = list_disks(parse_guest_config(home.config[1], _kind(home.config[0])))
        if disks and disks[0].storage:
            return disks[0].storage
    raise InputError(f"guest {job.guest} is not on {job.source} any more: name the storage "
                     f"its disks go to there (dapx failback --storage local-zfs)")


@flow(name="failback", log_prints=False, **KEPT_RESULTS, **job_hooks())
async def failback(job_name: str, storage: str = "", notify: NotifyMode = "always",
                   lock_wait: float = DEFAULT_WAIT) -> FailbackResult:
    """Bring replica job ``job_name``'s failed-over guest home to the job's source node, keep
    the original aside, make the live copy the job's replica again and resume the job (see
    the module's text for the steps).

    ``storage``: the PVE storage at home for the disks (default: the original's). ``notify``:
    when to send a notification (``always`` by default). Raises InputError for an unknown job
    or another kind of job, or an unknown storage; ConflictError when the job's copy is not
    failed over, when the source cannot be asked, or when the guest runs at home already;
    the replica runs' own errors (the original untouched then).
    """
    started = time.monotonic()
    ref = await find_guest_job(job_name, "a failback brings home")
    job = ref.job
    assert isinstance(job, ReplicaJob)  # GUEST_FLOWS take ReplicaJob
    source, dest = await aload_nodes(job.source, job.destination)
    live, home_name = f"{job.destination}/{job.target_vmid}", f"{job.source}/{job.guest}"
    result = FailbackResult(job=ref.name, source=job.source, guest=job.guest,
                            destination=job.destination, dest_vmid=job.target_vmid)
    state = await guest_state(source, job.guest)
    if state.startswith("unreachable"):
        raise ConflictError(f"cannot ask {job.source} about guest {job.guest} "
                            f"({state.split(': ', 1)[1]}): a failback needs {job.source} up")
    async with node_sessions():
        home = await read_home(source, job, live, home_name)
        live_paths, live_files = await vmid_configs(dest, job.target_vmid)
    live_text = _first(live_files)
    marked_live = bool(live_text and (failed_over_from(live_text[1]) or "").startswith(
        home_name + " "))
    # The live copy's mark decides first: a guest at home failed back in an earlier round
    # keeps its failed-back mark through the next failover.
    stage = ("swapped" if home.first_line == REPLICA_MARK + live else
             "copy" if marked_live else
             "home" if home.first_line.startswith(f"{FAILED_BACK_MARK}{live} ") else "")
    if not stage:
        raise ConflictError(f"guest {job.target_vmid} on {job.destination} is not a "
                            f"failed-over copy of {home_name}: nothing to fail back (dapx "
                            "failover starts one)")
    if stage == "copy" and not state.startswith(("absent", f"stopped on {job.source}")):
        raise ConflictError(f"guest {job.guest} is {state}: "
                            + ("starting the failed-back copy would run two copies; shut it "
                               "down first (the failback keeps it aside)"
                               if state.startswith("running") else
                               f"a failback brings it home to {job.source} only"))
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")
    if stage == "copy":
        place = storage_place(source, storage_of(home, storage, job),
                              "zfs" if ref.flow == "zfs-replica" else "btrfs")
        staged = _vmid(home.beside) if home.beside else free_vmid(home.used, job.guest)
        rjob = failback_job(job, staged, place)
        result.copies = await copy_home(ref, rjob, lock_wait)
    else:
        result.copies = f"skipped: copied home already ({stage})"

    async def bring_home(_: bool) -> None:
        nonlocal stage
        original = home.config[1] if home.config and stage == "copy" else None
        if stage == "copy":
            await shut_down_guest(dest, dest.name, _kind(live_text[0]), job.target_vmid)
            result.copies += f"; then {await copy_home(ref, rjob, lock_wait)}, stopped"
            result.original = await swap_home(source, job, home, staged, live, home_name, when)
        if stage in ("copy", "swapped"):
            found = (await vmid_configs(source, job.guest))[1]
            path, _ = _first(found)
            if original is None and home.aside:
                original = (await vmid_configs(source, _vmid(home.aside)))[1].get(home.aside)
            await mark_failed_back(source, path, _kind(path), live, original, when,
                                   job.cpu_host)
            result.original = result.original or (
                f"kept aside as VMID {_vmid(home.aside)}" if home.aside else
                "not found by its mark (a run cut during the swap leaves it aside unmarked)")
            ran = await start_guest(source, source.name, _kind(path), job.guest)
            result.started = "started" if ran else "running already"
            stage = "home"
            # `dapx status` says what the original aside is; the notification what came home
            aside = f"{job.source}/{_vmid(home.aside)}" if home.aside else ""
            await record_protection("failback", job.source, job.guest, live, ref=aside)
        else:
            result.original = "kept aside earlier" if home.aside else "none kept"
            result.started = "started earlier"
        again = await mark_replica_again(dest, live_text[0], job.source, job.guest) \
            if live_text else False
        result.live_copy = ("stopped; the job's replica again" if again else
                            "the job's replica already")

    await run_exclusively(guest_lock_name(job.source, job.guest),
                          f"failing guest {job.guest} back from {live} to {job.source}",
                          lock_wait, False, bring_home)
    resumed = await asyncio.to_thread(set_paused, f"{ref.flow}/{ref.name}", False)
    result.schedule = "resumed" if resumed else "active already"
    # BTRFS: the guest at home is a received copy, which shares no snapshot the job can send
    # from with the replica, so the job sends it whole (received beside the old replica and
    # swapped in when complete; nothing in the stopped replica is newer than the guest home)
    full = ref.flow == "btrfs-replica"
    result.replica = await last_replica_run(ref, force=full) + (" (whole: BTRFS)" if full
                                                                 else "")
    async with node_sessions():
        result.scratch = await drop_scratch(ref, job, source, dest)
    result.seconds = round(time.monotonic() - started, 3)
    await publish_table(artifact_key("failback", job.source, job.guest, job.destination),
                        [{"step": k.replace("_", " "), "outcome": str(v)}
                         for k, v in result.model_dump().items()],
                        f"guest {job.guest} runs on {job.source} again (from {live})")
    return result


async def swap_home(source: ProxmoxNode, job: ReplicaJob, home: Home, staged: int, live: str,
                    home_name: str, when: str) -> str:
    """Put the copy beside (``staged``) in guest ``job.guest``'s place; the original, if
    there, renumbered aside and kept (marked, no onboot). What became of the original."""
    new_kind = "lxc" if home.beside and "/lxc/" in home.beside else None
    if new_kind is None:
        _, files = await vmid_configs(source, staged)
        new_kind = _kind(next(iter(files)))
    if not home.config:
        await check_renumber(source, new_kind, staged, job.guest)
        await renumber_guest(source, new_kind, staged, job.guest)
        return "none: the guest was not on the node"
    old_kind = _kind(home.config[0])
    aside = free_vmid(home.used | {staged}, staged)
    await swap_into_place(source, new_kind=new_kind, staged=staged, old_kind=old_kind,
                          target=job.guest, aside=aside, keep_old=True)
    path = home.config[0].replace(f"/{job.guest}.conf", f"/{aside}.conf")
    await mark_stale_original(source, path, old_kind, home_name, live, when)
    home.aside = path
    return f"kept aside as VMID {aside} (stopped, no onboot)"


async def drop_scratch(ref: JobRef, job: ReplicaJob, source: ProxmoxNode,
                       dest: ProxmoxNode) -> str:
    """Remove the snapshots the failback's copies left on both sides (``core.failback``
    says which), now that the job's run made a newer one both sides share; how many."""
    home = await read_guest(source, job.guest)
    if ref.flow == "zfs-replica":
        disks = zfs_disks(home, job)
        states = await zfs.dataset_states(source, [d.source for d in disks])
        gone = 0
        for disk in disks:
            names = zfs_scratch([s.name for s in states[disk.source].snapshots], job.source)
            await zfs.destroy_snapshots(source, disk.source, names)
            await zfs.destroy_snapshots(dest, disk.target, names)  # gone there: no matter
            gone += len(names)
        return f"{gone} snapshot(s) removed on each side"
    live = await read_guest(dest, job.target_vmid)
    home_path = _btrfs_path(home, job.source)
    live_path = _btrfs_path(live, job.destination)
    at_home = btrfs_home_scratch(
        [v.path for v in await btrfs.list_subvolumes(source, home_path)],
        f"replica/{job.destination}-{job.target_vmid}")
    live_disks = [btrfs_subvolume(live_path, d.volname)[len(live_path) + 1:]
                  for d in list_disks(live.config)]
    beside = btrfs_live_scratch([v.path for v in await btrfs.list_subvolumes(dest, live_path)],
                                job.source, live_disks)
    await btrfs.delete_subvolumes(source, [f"{home_path}/{p}" for p in sorted(at_home,
                                                                             reverse=True)])
    await btrfs.delete_subvolumes(dest, [f"{live_path}/{p}" for p in beside])
    return f"{len(at_home)} subvolume(s) removed at home, {len(beside)} beside the replica"


def _btrfs_path(guest, node: str) -> str:  # noqa: ANN001 - a SourceGuest
    """The path of the BTRFS storage the guest's first disk is on."""
    disk = list_disks(guest.config)[0]
    storage = guest.storages.get(disk.storage or "", {})
    if storage.get("type") != "btrfs" or "path" not in storage:
        raise InputError(f"disk {disk.key} of guest {guest.vmid} on {node} is not on BTRFS")
    return storage["path"].rstrip("/")
