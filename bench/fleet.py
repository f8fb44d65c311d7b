"""Fleet scale (X7): one incremental round of many small guests through a fleet job, against
a sequential syncoid loop over the same datasets (the seed's way), in the same run.

Run as root: `.venv/bin/python bench/fleet.py [--guests 100] [--database postgresql|sqlite]`.
It holds the lab lock (as the tests do), brings the lab up, makes ``--guests`` small VMs
(one ZFS disk of ``--kib`` KiB each) spread over pve1, pve2 and pve3, starts a Prefect server
in a home of its own (on a throwaway PostgreSQL cluster by default) with the product's blocks
and pool, and a fleet job: pve1 and pve2 -> pve3, pve3 -> pve1. Then:

  1. a first fleet run copies every guest in full (not timed);
  2. once the Prefect server is idle again (it stores that round's task events for minutes),
     every disk changes by ``--delta-kib`` KiB; the BASELINE replicates each guest in turn the
     way the seed did: one `ssh root@<source> syncoid ...` per guest (syncoid's own snapshot,
     the same key, pinned host key, compression and target dataset as the product's);
  3. every disk changes again; the FLEET round: `prefect deployment run` of the job, run by
     `prefect worker start --run-once` (process start included), timed from the command to
     the run's Completed state (the worker's own exit after it is not counted).

It prints both times, the ratio (target >= 3x) and the peak RSS of the fleet run's process
(the orchestrator; target < 500 MB), then where the fleet round's time went: its own task
runs by name (the quick round; its transfers have none, they lie between the snapshots and
the pruning), and the guests that had a replica run of their own. With ``--profile`` (needs
`perf`) it also prints which commands used the CPU during the baseline and the fleet round.
Everything it made is removed and the lab taken down. Never a timed test.
"""

from __future__ import annotations

import argparse
import asyncio
import fcntl
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from contextlib import ExitStack, contextmanager, nullcontext
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

LAB_LOCK = Path("/tmp/.dapx-lab-session.lock")
NODES = ("pve1", "pve2", "pve3")
ROUTES = {"pve1": "pve3", "pve2": "pve3", "pve3": "pve1"}
FIRST_VMID, OFFSET = 6000, 100000
JOB = "bench-fleet"


def guests_by_node(count: int) -> dict[str, list[int]]:
    """VMIDs 6000.. dealt round-robin over the PVE nodes."""
    spread: dict[str, list[int]] = {n: [] for n in NODES}
    for i in range(count):
        spread[NODES[i % len(NODES)]].append(FIRST_VMID + i)
    return spread


def trust_all() -> None:
    from dapx.flows.trust import trust_nodes

    for source, dest in ROUTES.items():
        asyncio.run(trust_nodes(source, dest))


def baseline_argv(source: str, vmid: int) -> list[str]:
    """The seed's way: syncoid with its own sync snapshot, run on the source over SSH."""
    from dapx.blocks.manage import load_node
    from dapx.core.syncoid_argv import SyncoidOptions, syncoid_argv
    from dapx.flows.trust import KNOWN_HOSTS, REPLICATION_KEY
    from dapx.lab import estate

    dest = load_node(ROUTES[source])
    # syncoid's own defaults (it rolls the target back first), as the seed runs it; zfs-fuse
    # has no resumable receive
    options = SyncoidOptions(ssh_key=REPLICATION_KEY, known_hosts_file=KNOWN_HOSTS,
                             resume=False, rollback_target=True)
    argv = syncoid_argv(f"rpool/data/vm-{vmid}-disk-0", dest.host,
                        f"rpool/replica/vm-{vmid + OFFSET}-disk-0", options)
    argv.remove("--no-sync-snap")
    return estate.ssh_argv(source, argv)


def run_baseline(spread: dict[str, list[int]]) -> float:
    """Every guest in turn, one ssh + syncoid each; seconds."""
    started = time.monotonic()
    for source, vmids in spread.items():
        for vmid in vmids:
            argv = baseline_argv(source, vmid)
            done = subprocess.run(argv, capture_output=True, text=True)
            if done.returncode != 0:
                raise RuntimeError(f"baseline syncoid of {source}/{vmid} failed: "
                                   f"{done.stderr.strip()[-300:]}")
    return time.monotonic() - started


def run_fleet_round(log: Path) -> tuple[float, float, uuid.UUID, int]:
    """`prefect deployment run` + a run-once worker; (wall seconds, peak RSS MiB of the
    fleet run's process as the run reports it, flow run id, guests that failed)."""
    from prefect.client.orchestration import get_client

    from dapx.deployments import server

    started = time.monotonic()
    out = subprocess.run([server.prefect_bin(), "deployment", "run", f"fleet-replica/{JOB}"],
                         capture_output=True, text=True, check=True).stdout
    run = uuid.UUID(out.split("flow-run/")[1].split()[0].strip())
    with open(log, "ab") as out:  # the runs' logs, for when a guest fails
        worker = subprocess.Popen(server.worker_argv(limit=1, run_once=True),
                                  env=server.worker_env(), stdout=out, stderr=subprocess.STDOUT)
        try:  # timed to the run's final state, not to the worker's own exit after it
            with get_client(sync_client=True) as client:
                state = client.read_flow_run(run).state
                while not state.is_final():
                    if worker.poll() is not None:  # the worker is gone: one last look
                        state = client.read_flow_run(run).state
                        break
                    time.sleep(0.2)
                    state = client.read_flow_run(run).state
            wall = time.monotonic() - started
        finally:
            worker.wait()
    if not state.is_final():
        raise RuntimeError(f"the worker exited with fleet run {run} {state.type.value}; its "
                           f"log is in {log}")
    if state.is_completed():
        return wall, state.result().peak_rss_mib, run, 0
    if not state.is_failed() or "guest(s) failed" not in (state.message or ""):
        raise RuntimeError(f"fleet run {run} ended {state.type.value}: {state.message}; "
                           f"the worker's and the runs' logs are in {log}")
    failed = int(state.message.split(" guest(s) failed")[0].split()[-3])
    print(f"  {failed} guest(s) failed: {state.message[:600]}\n  logs: {log}", flush=True)
    return wall, reported_peak(run), run, failed


def reported_peak(run: uuid.UUID) -> float:
    """The peak memory a failed fleet run wrote in its table's title (MiB; 0 if none)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run])))
    for artifact in found:
        if "peak memory " in (artifact.description or ""):
            return float(artifact.description.split("peak memory ")[1].split()[0])
    return 0.0


def time_split(run: uuid.UUID) -> str:
    """Where a fleet round's time went: the run, its task runs, and the guests that went to a
    replica run of their own (subflows), if any."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (FlowRunFilter, FlowRunFilterParentFlowRunId,
                                                TaskRunFilter, TaskRunFilterFlowRunId)

    with get_client(sync_client=True) as client:
        parent = client.read_flow_run(run)
        subs, tasks = [], []
        while True:  # the API returns at most 200 per call
            page = client.read_flow_runs(flow_run_filter=FlowRunFilter(
                parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[run])), limit=200,
                offset=len(subs))
            subs += page
            if len(page) < 200:
                break
        while True:
            page = client.read_task_runs(task_run_filter=TaskRunFilter(
                flow_run_id=TaskRunFilterFlowRunId(any_=[run])), limit=200, offset=len(tasks))
            tasks += page
            if len(page) < 200:
                break
    text = (f"fleet run: {parent.total_run_time.total_seconds():.1f} s in the flow "
            f"(created -> running {(parent.start_time - parent.created).total_seconds():.1f} "
            f"s); {len(tasks)} task runs of its own")
    named: dict[str, list[float]] = {}
    for task in tasks:
        named.setdefault(task.name.rsplit("-", 1)[0], []).append(
            task.total_run_time.total_seconds())
    text += "".join(f"\n  {name:<28} {len(times):4d} x, {statistics.median(times):.2f} s median, "
                    f"{sum(times):.1f} s in all" for name, times in sorted(
                        named.items(), key=lambda kv: -sum(kv[1])))
    # The quick round's transfers have no task runs: a route's lie between its snapshot task's
    # end and its pruning task's start; all routes' from the first such end to the last start.
    timed = [t for t in tasks if t.start_time and t.end_time]
    snaps = [t.end_time for t in timed if t.name.startswith("snapshot-groups")]
    prunes = [t.start_time for t in timed if t.name.startswith("prune-datasets")]
    if snaps and prunes and parent.start_time and parent.end_time:
        first, last = min(snaps) - parent.start_time, max(prunes) - parent.start_time
        before = sorted((t for t in tasks if t.start_time and t.start_time - parent.start_time
                         < first), key=lambda t: t.start_time)
        text += "\n  before the transfers (offset from the run's start, duration):"
        text += "".join(f"\n    {(t.start_time - parent.start_time).total_seconds():6.2f} s  "
                        f"+{t.total_run_time.total_seconds():5.2f} s  {t.name}" for t in before)
        text += (f"\n  phases: before the transfers {first.total_seconds():.1f} s, "
                 f"transfers {(last - first).total_seconds():.1f} s, after them "
                 f"{(parent.end_time - parent.start_time - last).total_seconds():.1f} s")
    if subs:
        seconds = [s.total_run_time.total_seconds() for s in subs]
        text += (f"\n{len(subs)} guest(s) in their own runs, each "
                 f"{statistics.median(seconds):.2f} s median ({min(seconds):.2f}.."
                 f"{max(seconds):.2f})")
    return text


@contextmanager
def cpu_profile(enabled: bool, label: str):
    """With ``enabled``, sample every CPU with `perf record -a` while the block runs, then print
    the busiest commands' share of the machine's CPU time (idle is `swapper`)."""
    if not enabled:
        yield
        return
    data = Path(tempfile.mkdtemp(prefix="dapx-bench-perf-")) / "perf.data"
    perf = subprocess.Popen(["perf", "record", "-a", "-F", "199", "-o", str(data), "-q"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield
    finally:
        perf.send_signal(signal.SIGINT)
        perf.wait()
        report = subprocess.run(["perf", "report", "-i", str(data), "--sort", "comm", "--stdio"],
                                capture_output=True, text=True).stdout
        rows = [line.split(None, 1) for line in report.splitlines()
                if line.strip() and not line.startswith("#")]
        print(f"CPU by command, {label} (share of all CPUs' time):")
        for share, comm in rows[:14]:
            print(f"  {share:>7}  {comm.strip()}")
        shutil.rmtree(data.parent, ignore_errors=True)


def settle(pid: int, share: float = 0.1, window: float = 5.0, limit: float = 600.0) -> float:
    """Wait until process ``pid`` (the Prefect server) uses less than ``share`` of a core over
    ``window`` seconds, at most ``limit`` seconds; the seconds waited. After the first round
    the server stores its 100 runs' task events for minutes: that work would slow the
    baseline and flatter the ratio."""
    ticks = os.sysconf("SC_CLK_TCK")

    def cpu() -> float:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / ticks  # utime + stime

    started = time.monotonic()
    while time.monotonic() - started < limit:
        before = cpu()
        time.sleep(window)
        if cpu() - before < share * window:
            break
    return time.monotonic() - started


def setup_product(home: Path, database: str | None, spread: dict[str, list[int]],
                  stack: ExitStack, share: bool) -> int:
    """The product on a Prefect server of its own, and the fleet job; the server's pid."""
    from tests.deploy.conftest import OwnServer, prefect_env

    from dapx.core.fleet import FleetJob
    from dapx.deployments import jobs, server
    from dapx.lab.register import register_lab_nodes

    own = OwnServer(home, database)
    stack.enter_context(prefect_env(home, own.api_url))
    own.start()
    stack.callback(own.stop)
    server.register_blocks()
    server.ensure_work_pool()
    register_lab_nodes()
    trust_all()
    vmids = [v for vs in spread.values() for v in vs]
    jobs.create_job(JOB, "fleet-replica", FleetJob(routes=ROUTES, vmids=vmids,
                                                   vmid_offset=OFFSET, keep=2,
                                                   share_connections=share))
    return own.proc.pid


def cleanup(spread: dict[str, list[int]]) -> None:
    from tests.helpers import tiny_guests

    for source, vmids in spread.items():
        tiny_guests.remove_replicas(ROUTES[source], [v + OFFSET for v in vmids])
        tiny_guests.remove(source, vmids)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--guests", type=int, default=100, help="guests (100)")
    parser.add_argument("--kib", type=int, default=256, help="disk size in KiB (256)")
    parser.add_argument("--delta-kib", type=int, default=16, help="change per round (16)")
    parser.add_argument("--database", choices=["postgresql", "sqlite"], default="postgresql")
    parser.add_argument("--per-guest-ssh", action="store_true",
                        help="each guest's run opens its own SSH connections (the fleet job's "
                             "share_connections off) instead of one per node for the run")
    parser.add_argument("--profile", action="store_true",
                        help="sample every CPU with perf during the baseline and the fleet "
                             "round, and print which commands used it")
    args = parser.parse_args()
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    from tests.helpers.leftovers import stop_orphaned_test_servers

    if stop_orphaned_test_servers():  # an idle one uses 2-3% of a core: skews both figures
        print("stopped the Prefect servers a killed test or bench run left behind")
    home = Path(tempfile.mkdtemp(prefix="dapx-bench-fleet-"))
    spread = guests_by_node(args.guests)

    with open(LAB_LOCK, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        from dapx.lab import estate
        from tests.helpers import postgres, tiny_guests

        estate.up()
        try:
            with ExitStack() as stack:
                database = stack.enter_context(postgres.throwaway_cluster()
                                               if args.database == "postgresql"
                                               else nullcontext(None))
                stack.callback(cleanup, spread)
                for node, vmids in spread.items():
                    tiny_guests.make(node, vmids, kib=args.kib)
                server_pid = setup_product(home, database, spread, stack,
                                           not args.per_guest_ssh)
                full, _, _, full_failed = run_fleet_round(home / "worker.log")
                print(f"first (full) fleet round: {full:.1f} s", flush=True)
                if full_failed:  # fill in the guests that failed, so both rounds are increments
                    again, _, _, _ = run_fleet_round(home / "worker.log")
                    print(f"first round again: {again:.1f} s", flush=True)
                print(f"the Prefect server was busy {settle(server_pid):.0f} s more with that "
                      "round's events; the baseline starts now it is idle", flush=True)
                for node, vmids in spread.items():
                    tiny_guests.change(node, vmids, kib=args.delta_kib)
                with cpu_profile(args.profile, "baseline"):
                    baseline = run_baseline(spread)
                print(f"baseline, sequential syncoid: {baseline:.1f} s", flush=True)
                for node, vmids in spread.items():
                    tiny_guests.change(node, vmids, kib=args.delta_kib)
                with cpu_profile(args.profile, "fleet round"):
                    fleet, peak, run, failed = run_fleet_round(home / "worker.log")
                print(time_split(run))
        finally:
            estate.down()
    print(f"\n{args.guests} guests ({args.kib} KiB disks, {args.delta_kib} KiB deltas) over "
          f"{', '.join(NODES)}; Prefect server on {args.database}; SSH: "
          f"{'one connection per guest run' if args.per_guest_ssh else 'one per node, shared'}")
    print(f"baseline  sequential syncoid loop   {baseline:7.1f} s  "
          f"({baseline / args.guests:.2f} s per guest)")
    print(f"fleet     one fleet-replica run     {fleet:7.1f} s  (process start included)")
    print(f"ratio     {baseline / fleet:.2f}x   (target >= 3x)"
          + (f"   NOT VALID: {failed} guest(s) failed in the fleet round" if failed else ""))
    print(f"memory    fleet run peak RSS {peak:.0f} MiB   (target < 500 MB)")


if __name__ == "__main__":
    main()
