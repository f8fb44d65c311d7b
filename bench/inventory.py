"""The snapshot view's cost on a full node: one listing command versus one `zfs list` per guest.

Run as root: `.venv/bin/python bench/inventory.py [--guests 200] [--snapshots 20] [--runs 3]`.
It takes the machine's lab lock (/tmp/.dapx-lab-session.lock), brings the lab up, and on pve1
makes ``--guests`` VMs (VMIDs 5000...) with one disk each on a storage of their own
(``bench-zfs`` = rpool/bench), each disk with ``--snapshots`` snapshots (4000 by default).
Then, over the same SSH connection and in the same process, it measures:

  view       the product's way: ONE command lists every snapshot, storage.cfg and every guest
             config of the node; parsed, every guest's snapshots grouped (build_view)
  per guest  the naive way: one `zfs list -t snapshot -r <disk>` per guest, parsed

and prints the medians and their ratio (target: >= 10x, the view under 1 s), the view's parts
(the command, parsing, grouping) and the pool's own floor: how long ZFS alone takes to list
every snapshot's name. On the lab's zfs-fuse that floor is about 0.4 ms per snapshot (each
snapshot is a round trip to the zfs-fuse daemon), whatever the properties asked, so it bounds
the view there; OpenZFS lists snapshots in the kernel, far faster. Everything it made is
removed and the lab is brought down at the end. Numbers, never asserts.
"""

from __future__ import annotations

import argparse
import os
import asyncio
import fcntl
import statistics
import time
from pathlib import Path

from pydantic import SecretStr

from dapx.lab import estate

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")  # no telemetry writes

NODE, FIRST_VMID, POOL = "pve1", 5000, "rpool/bench"
LOCK = Path("/tmp/.dapx-lab-session.lock")
STORAGE = "\nzfspool: bench-zfs\n\tpool rpool/bench\n\tcontent images,rootdir\n\tsparse 1\n"
# One shell per step, values as arguments: the estate is made in seconds, not minutes.
MAKE = r'''first=$1 count=$2 snaps=$3
zfs create -p rpool/bench || exit 1
i=0
while [ "$i" -lt "$count" ]; do
  vmid=$((first + i))
  zfs create "rpool/bench/vm-$vmid-disk-0" || exit 1
  printf 'name: bench%s\nmemory: 512\nscsi0: bench-zfs:vm-%s-disk-0,size=1M\n' "$vmid" "$vmid" \
    > "/etc/pve/nodes/pve1/qemu-server/$vmid.conf"
  i=$((i + 1))
done
s=1
while [ "$s" -le "$snaps" ]; do zfs snapshot -r "rpool/bench@autosnap_bench_$s"_hourly || exit 1; s=$((s + 1)); done'''
CLEAN = r'''first=$1 count=$2
i=0
while [ "$i" -lt "$count" ]; do rm -f "/etc/pve/nodes/pve1/qemu-server/$((first + i)).conf"; i=$((i + 1)); done
zfs destroy -r rpool/bench 2>/dev/null
sed -i '/^zfspool: bench-zfs$/,/^$/d' /etc/pve/storage.cfg
true'''


def on(*argv: str, input: str | None = None) -> str:
    result = estate.run(NODE, list(argv), input=input, timeout=3600)
    if result.returncode != 0:
        raise RuntimeError(f"{NODE}: {argv[:3]}: {result.stderr.strip()[-300:]}")
    return result.stdout


def node_block():  # noqa: ANN201 - a ProxmoxNode, built in memory (no Prefect server)
    from dapx.blocks.node import ProxmoxNode

    state = estate.load_state()
    node = state["nodes"][NODE]
    return ProxmoxNode(name=NODE, host=node["address"], ssh_port=node.get("ssh_port", 22),
                       ssh_private_key=SecretStr(Path(state["admin_key"]).read_text()),
                       ssh_host_key=node.get("ssh_host_key"))


SPLIT: dict[str, list[float]] = {"command": [], "parse": [], "group": []}


async def view_once(session) -> tuple[float, int]:  # noqa: ANN001 - a NodeSession
    from dapx.core.snapview import listing_argv, parse_listing
    from dapx.flows.snapshot_view import build_view

    started = time.perf_counter()
    output = (await session.run(listing_argv(), timeout=600)).stdout
    listed = time.perf_counter()
    listing = parse_listing(output)
    parsed = time.perf_counter()
    view = build_view([NODE], None, {NODE: listing}, [], [])
    done = time.perf_counter()
    for part, seconds in zip(SPLIT, (listed - started, parsed - listed, done - parsed)):
        SPLIT[part].append(seconds)
    return done - started, sum(len(g.snapshots) for g in view.guests if g.guest >= FIRST_VMID)


async def per_guest_once(session, guests: int) -> tuple[float, int]:  # noqa: ANN001
    started = time.perf_counter()
    found = 0
    for vmid in range(FIRST_VMID, FIRST_VMID + guests):
        out = (await session.run(["zfs", "list", "-H", "-t", "snapshot", "-o",
                                  "name,guid,createtxg,creation,used,referenced", "-r",
                                  f"{POOL}/vm-{vmid}-disk-0"], timeout=600)).stdout
        found += sum(1 for line in out.splitlines() if "@" in line.split("\t", 1)[0])
    return time.perf_counter() - started, found


async def names_only_once(session) -> float:  # noqa: ANN001
    """The pool's own floor: ``zfs list -o name`` of every snapshot, nothing else."""
    started = time.perf_counter()
    await session.run(["zfs", "list", "-H", "-t", "snapshot", "-o", "name", "-r", "rpool"],
                      timeout=600)
    return time.perf_counter() - started


async def measure(guests: int, runs: int) -> None:
    block = node_block()
    async with block.ssh() as session:
        await session.run(["true"])  # connected before the clocks start
        views = [await view_once(session) for _ in range(runs)]
        naive = [await per_guest_once(session, guests) for _ in range(runs)]
        floor = statistics.median([await names_only_once(session) for _ in range(runs)])
    view_s = statistics.median(v[0] for v in views)
    naive_s = statistics.median(n[0] for n in naive)
    print(f"{guests} guests x {views[0][1] // max(guests, 1)} snapshots = {views[0][1]} "
          f"snapshots on {NODE} (per-guest listing found {naive[0][1]}), median of {runs} runs")
    print(f"one-call view     {view_s:8.3f} s   (target < 1 s): " + ", ".join(
        f"{part} {statistics.median(values):.3f} s" for part, values in SPLIT.items()))
    print(f"zfs list per guest{naive_s:8.3f} s")
    print(f"ratio             {naive_s / view_s:8.1f} x  (target >= 10 x)")
    print(f"floor: `zfs list -o name` of every snapshot alone takes {floor:.3f} s here "
          f"({1000 * floor / max(views[0][1], 1):.2f} ms per snapshot in this pool's ZFS)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--guests", type=int, default=200)
    parser.add_argument("--snapshots", type=int, default=20)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    with open(LOCK, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one lab per machine: wait for a test session
        estate.up()
        try:
            on("sh", "-c", CLEAN, "sh", str(FIRST_VMID), str(args.guests))
            on("sh", "-c", 'cat >> /etc/pve/storage.cfg', input=STORAGE)
            started = time.monotonic()
            on("sh", "-c", MAKE, "sh", str(FIRST_VMID), str(args.guests), str(args.snapshots))
            print(f"made the estate in {time.monotonic() - started:.1f} s")
            asyncio.run(measure(args.guests, args.runs))
        finally:
            on("sh", "-c", CLEAN, "sh", str(FIRST_VMID), str(args.guests))
            estate.down()


if __name__ == "__main__":
    main()
