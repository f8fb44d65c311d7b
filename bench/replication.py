"""Replication speed on the lab: the product versus bare `zfs send | ssh | zfs recv`.

Run as root: `.venv/bin/python bench/replication.py [--size-mib 1024]`. It brings the lab up,
makes a guest (VM 777 on pve1) with one disk of random bytes, and measures, between the same
two nodes (pve1 -> pve3) and in the same process:

  full copy          bare pipeline vs the zfs-replica flow      (target ratio <= 1.10),
                     split into the transfer step (syncoid) and the rest of the run; the
                     copies alternate, and each ratio is also given as the median of the
                     pairs' ratios (a machine slowing down for a while moves both of a pair);
                     the bare pipeline also runs with the product's cipher order (AES-GCM
                     first), which tells the cipher's share of the ratio from the rest
  1 MiB increment    bare pipeline vs the zfs-replica flow
  4 KiB increment    the flow's fixed cost per run over the bare pipeline (target <= 0.8 s)

and the last 4 KiB run's task runs on a timeline (where the fixed cost goes).

Each product run starts once the previous one's logs and events have reached the server and
``--settle`` seconds (1) have passed, as runs started by a schedule do. Back to back (``--settle
0``), the new run's creation often meets the Prefect server still storing the last run's logs
and events: SQLite then refuses the new flow run at once (a stale read snapshot, which its
busy timeout does not cover), the server answers 503, and Prefect's client waits 2 s before
asking again. Every product run's wait for its creation is printed, so a wait that remains
shows.

Prints one line per measurement and the ratios. Never a timed test: numbers, not asserts.
"""

from __future__ import annotations

import argparse
import os
import asyncio
import statistics
import time
from datetime import datetime, timezone

from dapx.core.syncoid_argv import STREAM_CIPHERS
from dapx.lab import estate

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")  # no telemetry writes

SOURCE, DEST, DEST_ADDR = "pve1", "pve3", "198.18.213.13"
VMID, DEST_VMID = 777, 7777
DISK = f"rpool/data/vm-{VMID}-disk-0"
BASE_TARGET = f"rpool/benchbase/vm-{VMID}-disk-0"
KEY, KNOWN = "/root/.ssh/dapx_replication", "/root/.ssh/dapx_known_hosts"
# The bare pipeline, as an administrator would type it; values arrive as positional args.
PIPE = ('zfs send $4 "$1" | ssh -i "$5" -o UserKnownHostsFile="$6" -o StrictHostKeyChecking=yes '
        '-o BatchMode=yes root@"$2" zfs recv -F "$3"')
# The same with the product's cipher order (AES-GCM first), to tell the cipher's share of the
# product's ratio from the rest.
PIPE_CIPHERS = PIPE.replace("-o BatchMode=yes", f"-o BatchMode=yes -o Ciphers={STREAM_CIPHERS}")


def on(node: str, *argv: str) -> str:
    """Run argv inside a lab node; raise with its stderr on failure."""
    result = estate.run(node, list(argv), timeout=1800)
    if result.returncode != 0:
        raise RuntimeError(f"{node}: {' '.join(argv)}: {result.stderr.strip()}")
    return result.stdout


def destroy(node: str, dataset: str) -> None:
    """zfs destroy -r, retried while zfs-fuse still holds a just-received dataset busy."""
    for _ in range(20):
        result = estate.run(node, ["zfs", "destroy", "-r", dataset])
        if result.returncode == 0 or "does not exist" in result.stderr:
            return
        time.sleep(0.5)
    raise RuntimeError(f"{node}: cannot destroy {dataset}: {result.stderr.strip()}")


def make_guest(size_mib: int) -> None:
    on(SOURCE, "zfs", "create", "-p", DISK)
    on(SOURCE, "dd", "if=/dev/urandom", f"of=/{DISK}/disk.raw", "bs=1M", f"count={size_mib}",
       "status=none")
    on(SOURCE, "sh", "-c", 'printf "%s\\n" "$@" > "/etc/pve/nodes/pve1/qemu-server/777.conf"',
       "sh", "name: bench", "memory: 512", f"scsi0: local-zfs:vm-{VMID}-disk-0,size={size_mib}M")


def write_increment(nbytes: int, offset_mib: int) -> None:
    on(SOURCE, "dd", "if=/dev/urandom", f"of=/{DISK}/disk.raw", f"bs={nbytes}", "count=1",
       f"seek={offset_mib * 1024 * 1024 // nbytes}", "conv=notrunc", "status=none")


def bare_send(snap: str, base: str | None, pipe: str = PIPE) -> float:
    extra = f"-i {DISK}@{base}" if base else ""
    started = time.monotonic()
    on(SOURCE, "sh", "-c", pipe, "sh", f"{DISK}@{snap}", DEST_ADDR, BASE_TARGET, extra, KEY, KNOWN)
    return time.monotonic() - started


LAST_RUN: dict = {}
CREATION_WAITS: list[float] = []
"""Seconds from each product run's call to its flow run existing on the server."""


def let_last_run_land(settle: float) -> None:
    """Send what this process still holds of the last run (its logs and events: a run's own
    process sends them as it exits), then wait ``settle`` seconds for the server to store them."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    for worker in (EventsWorker, APILogWorker):
        worker.drain_all(timeout=15)
    time.sleep(settle)


def product_run() -> float:
    from dapx.core.jobspec import ReplicaJob
    from dapx.flows.replica import zfs_replica

    # No compression: the bare pipeline has none either (on loopback it only costs CPU).
    job = ReplicaJob(source=SOURCE, guest=VMID, destination=DEST, dest_vmid=DEST_VMID,
                     keep=2, register_vm=True, compression="none")
    let_last_run_land(SETTLE["seconds"])
    called = datetime.now(timezone.utc)
    started = time.monotonic()
    state = asyncio.run(zfs_replica(job, return_state=True))
    took = time.monotonic() - started
    if not state.is_completed():
        raise RuntimeError(f"the product run ended {state.name}: {state.message}")
    LAST_RUN["id"] = state.state_details.flow_run_id
    run, _ = task_runs(LAST_RUN["id"])
    CREATION_WAITS.append((run.created - called).total_seconds())
    return took


SETTLE = {"seconds": 1.0}


def task_runs(flow_run_id):  # noqa: ANN001, ANN201 - a UUID; (FlowRun, [TaskRun])
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        run = client.read_flow_run(flow_run_id)
        tasks = client.read_task_runs(flow_run_filter=FlowRunFilter(
            id=FlowRunFilterId(any_=[flow_run_id])))
    return run, tasks


def transfer_seconds(flow_run_id) -> float:  # noqa: ANN001 - a UUID
    """How long the run's syncoid transfer task ran (the rest of the run is its fixed cost)."""
    _, tasks = task_runs(flow_run_id)
    return sum(t.total_run_time.total_seconds() for t in tasks
               if t.name.startswith("run_syncoid"))


def timeline(flow_run_id) -> list[str]:  # noqa: ANN001 - a UUID
    """The run's task runs in start order: offset from the flow run's start and duration."""
    run, tasks = task_runs(flow_run_id)
    t0 = run.start_time
    lines = [f"flow run {run.name}: {run.total_run_time.total_seconds():.2f} s run time, "
             f"{len(tasks)} task runs"]
    for t in sorted(tasks, key=lambda t: t.start_time or t0):
        start = ((t.start_time or t0) - t0).total_seconds()
        took = t.total_run_time.total_seconds()
        lines.append(f"  {start:6.2f} s  +{took:5.2f} s  {t.name}")
    lines.append(f"  {(run.end_time - t0).total_seconds():6.2f} s  end")
    return lines


def cleanup() -> None:
    destroy(SOURCE, DISK)
    destroy(DEST, "rpool/benchbase")
    destroy(DEST, f"rpool/replica/vm-{DEST_VMID}-disk-0")
    estate.run(SOURCE, ["rm", "-f", "/etc/pve/nodes/pve1/qemu-server/777.conf"])
    estate.run(DEST, ["rm", "-f", f"/etc/pve/nodes/pve3/qemu-server/{DEST_VMID}.conf"])


def median_of(runs: int, measure) -> float:  # noqa: ANN001 - a zero-argument callable
    """Median of ``runs`` measurements (one noisy run says little on a 2-core machine)."""
    return statistics.median(measure() for _ in range(runs))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=1024, help="disk size (1024)")
    parser.add_argument("--runs", type=int, default=3, help="runs per measurement (3)")
    parser.add_argument("--settle", type=float, default=1.0, help="seconds between a product "
                        "run's last logs and events reaching the server and the next run (1)")
    args = parser.parse_args()
    SETTLE["seconds"] = args.settle
    from prefect.testing.utilities import prefect_test_harness

    from dapx.lab.register import register_lab_nodes
    from dapx.flows.trust import trust_nodes

    estate.up()
    cleanup()
    snaps = iter(range(1, 1000))
    last = {"snap": None}

    def bare_full_once(pipe: str = PIPE) -> float:
        destroy(DEST, BASE_TARGET)
        last["snap"] = f"b{next(snaps)}"
        on(SOURCE, "zfs", "snapshot", f"{DISK}@{last['snap']}")
        return bare_send(last["snap"], None, pipe)

    def bare_increment(nbytes: int) -> float:
        write_increment(nbytes, next(snaps) % 900)
        base, last["snap"] = last["snap"], f"b{next(snaps)}"
        on(SOURCE, "zfs", "snapshot", f"{DISK}@{last['snap']}")
        return bare_send(last["snap"], base)

    transfers = []

    def product_full_once() -> float:
        destroy(DEST, f"rpool/replica/vm-{DEST_VMID}-disk-0")
        took = product_run()
        transfers.append(transfer_seconds(LAST_RUN["id"]))
        return took

    def product_increment(nbytes: int) -> float:
        write_increment(nbytes, next(snaps) % 900)
        return product_run()

    with prefect_test_harness(server_startup_timeout=120):
        register_lab_nodes()
        asyncio.run(trust_nodes(SOURCE, DEST))
        make_guest(args.size_mib)
        try:
            # Full copies alternate, bare then product, so that a machine getting slower or
            # faster meanwhile moves both; each copy goes before the other's (the lab pools
            # hold 2 GiB). The increments need their copy: the product's first, then the
            # bare pipeline's on a copy of its own.
            on(DEST, "zfs", "create", "-p", "rpool/benchbase")
            fulls: dict[str, list[float]] = {"bare": [], "bare, AES-GCM first": [],
                                             "product": []}
            for _ in range(args.runs):
                destroy(DEST, f"rpool/replica/vm-{DEST_VMID}-disk-0")
                fulls["bare"].append(bare_full_once())
                fulls["bare, AES-GCM first"].append(bare_full_once(PIPE_CIPHERS))
                destroy(DEST, BASE_TARGET)
                fulls["product"].append(product_full_once())
            bare_full, prod_full = (statistics.median(fulls[k]) for k in ("bare", "product"))
            prod_inc = median_of(args.runs, lambda: product_increment(1024 * 1024))
            prod_tiny = median_of(args.runs, lambda: product_increment(4096))
            phases = timeline(LAST_RUN["id"])
            destroy(DEST, f"rpool/replica/vm-{DEST_VMID}-disk-0")
            bare_full_once()
            bare_inc = median_of(args.runs, lambda: bare_increment(1024 * 1024))
            bare_tiny = median_of(args.runs, lambda: bare_increment(4096))
            destroy(DEST, "rpool/benchbase")
        finally:
            cleanup()
    print(f"disk {args.size_mib} MiB, {SOURCE} -> {DEST}, median of {args.runs} runs each")
    print(f"full copies, bare/product in turn: {fulls}")
    pairs = statistics.median(p / b for b, p in zip(fulls["bare"], fulls["product"]))
    print(f"full copy      bare {bare_full:7.2f} s   product {prod_full:7.2f} s   "
          f"ratio {prod_full / bare_full:5.2f}  (target <= 1.10); median of the pairs' "
          f"ratios {pairs:5.2f}")
    transfer = statistics.median(transfers)
    step_pairs = statistics.median(t / b for b, t in zip(fulls["bare"], transfers))
    print(f"  of which     the transfer step {transfer:7.2f} s (ratio {transfer / bare_full:5.2f} "
          f"to bare, {step_pairs:5.2f} by pairs), the rest of the run "
          f"{prod_full - transfer:5.2f} s")
    gcm = statistics.median(fulls["bare, AES-GCM first"])
    print(f"  the cipher   the bare pipeline with the product's cipher order {gcm:7.2f} s "
          f"(ratio {gcm / bare_full:5.2f} to bare); the product against it: "
          f"{prod_full / gcm:5.2f}")
    print(f"1 MiB incr.    bare {bare_inc:7.2f} s   product {prod_inc:7.2f} s   "
          f"ratio {prod_inc / bare_inc:5.2f}")
    print(f"4 KiB incr.    bare {bare_tiny:7.2f} s   product {prod_tiny:7.2f} s   "
          f"fixed cost {prod_tiny - bare_tiny:+.2f} s  (target <= 0.8 s)")
    waits = ", ".join(f"{w:.2f}" for w in CREATION_WAITS)
    print(f"each product run's wait for its flow run to be created (s), in order: {waits}")
    print("the last 4 KiB run, task by task (offset from the run's start, duration):")
    print("\n".join(phases))


if __name__ == "__main__":
    main()
