"""Backup and restore speed on the lab: the product versus `vzdump` / `qmrestore` typed on the node.

Run as root: `.venv/bin/python bench/backup.py [--size-mib 1024] [--runs 3]`. It takes the lab
lock (`/tmp/.dapx-lab-session.lock`, waiting for a test session that holds it), brings the lab
up, makes a VM (777 on pve3, a raw disk of random bytes on the `local` dir storage), and
measures in the same process, alternating the two so drift hits both alike:

  backup    `vzdump 777 --storage pbs --mode snapshot` on pve3    vs the pbs-backup flow
  restore   `qmrestore <backup> 7771 --storage local` on pve3      vs the pbs-restore flow

Both sides move the same bytes through the same node and PBS; the product adds its Prefect
runs, API calls and checks. Prints medians and ratios (target <= 1.10), checks once that
each restored disk equals the source, and takes the lab down at the end. Numbers, not asserts.
"""

from __future__ import annotations

import argparse
import os
import asyncio
import fcntl
import statistics
import time
from contextlib import contextmanager
from typing import Iterator

from dapx.lab import estate

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")  # no telemetry writes

NODE, VMID, BASE_VMID, PRODUCT_VMID = "pve3", 777, 7771, 7772
DISK = "/var/lib/vz/images/{vmid}/vm-{vmid}-disk-0.raw"
CONF = f"/etc/pve/nodes/{NODE}/qemu-server/{VMID}.conf"
GROUP = f"/datastore/store1/vm/{VMID}"
LOCK = "/tmp/.dapx-lab-session.lock"


def on(node: str, *argv: str) -> str:
    """Run argv inside a lab node; raise with its stderr on failure."""
    result = estate.run(node, list(argv), timeout=3600)
    if result.returncode != 0:
        raise RuntimeError(f"{node}: {' '.join(argv)}: {result.stderr.strip()}")
    return result.stdout


@contextmanager
def lab_lock() -> Iterator[None]:
    """The machine's one-lab lock, as test sessions take it."""
    with open(LOCK, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def make_guest(size_mib: int) -> None:
    disk = DISK.format(vmid=VMID)
    on(NODE, "mkdir", "-p", disk.rsplit("/", 1)[0])
    on(NODE, "dd", "if=/dev/urandom", f"of={disk}", "bs=1M", f"count={size_mib}", "status=none")
    on(NODE, "sh", "-c", 'printf "%s\\n" "$@" > "$0"', CONF, "name: bench", "memory: 512",
       "net0: virtio=BC:24:11:00:07:77,bridge=vmbr0",
       f"scsi0: local:{VMID}/vm-{VMID}-disk-0.raw,size={size_mib}M")


def drop_guest(vmid: int) -> None:
    estate.run(NODE, ["qm", "destroy", str(vmid)], timeout=600)


def drop_backups() -> None:
    estate.run("pbs1", ["rm", "-rf", GROUP], timeout=600)


def newest_backup() -> str:
    names = sorted(on("pbs1", "ls", GROUP).split())
    return f"pbs:backup/vm/{VMID}/{names[-1]}"


def timed(fn) -> float:  # noqa: ANN001 - a zero-argument callable
    started = time.monotonic()
    fn()
    return time.monotonic() - started


def bare_backup() -> float:
    drop_backups()
    return timed(lambda: on(NODE, "vzdump", str(VMID), "--storage", "pbs", "--mode", "snapshot"))


def bare_restore() -> float:
    drop_guest(BASE_VMID)
    backup = newest_backup()
    return timed(lambda: on(NODE, "qmrestore", backup, str(BASE_VMID), "--storage", "local"))


def product_backup() -> float:
    from dapx.core.jobspec import BackupJob
    from dapx.flows.backup import pbs_backup

    drop_backups()
    job = BackupJob(node=NODE, guests=[VMID], storage="pbs", retention={"keep_last": 10})
    return timed(lambda: asyncio.run(pbs_backup(job)))


def product_restore() -> float:
    from dapx.core.jobspec import RestoreRequest
    from dapx.flows.restore import pbs_restore

    drop_guest(PRODUCT_VMID)
    request = RestoreRequest(storage="pbs", backup=f"vm/{VMID}/latest", destination=NODE,
                             dest_vmid=PRODUCT_VMID, dest_storage="local")
    return timed(lambda: asyncio.run(pbs_restore(request)))


def same_bytes(vmid: int) -> bool:
    sums = on(NODE, "sha256sum", DISK.format(vmid=VMID), DISK.format(vmid=vmid)).split()
    return sums[0] == sums[2]


def cleanup() -> None:
    for vmid in (BASE_VMID, PRODUCT_VMID, VMID):
        drop_guest(vmid)
    estate.run(NODE, ["rm", "-rf", DISK.format(vmid=VMID).rsplit("/", 1)[0]])
    drop_backups()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=1024, help="disk size (1024)")
    parser.add_argument("--runs", type=int, default=3, help="runs per measurement (3)")
    args = parser.parse_args()
    from prefect.testing.utilities import prefect_test_harness

    from dapx.lab.register import register_lab_nodes

    times: dict[str, list[float]] = {k: [] for k in ("bare backup", "product backup",
                                                      "bare restore", "product restore")}
    with lab_lock():
        estate.up()
        try:
            cleanup()
            with prefect_test_harness(server_startup_timeout=120):
                register_lab_nodes()
                make_guest(args.size_mib)
                for _ in range(args.runs):
                    times["bare backup"].append(bare_backup())
                    times["bare restore"].append(bare_restore())
                    times["product backup"].append(product_backup())
                    times["product restore"].append(product_restore())
                equal = same_bytes(BASE_VMID) and same_bytes(PRODUCT_VMID)
        finally:
            cleanup()
            estate.down()
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"disk {args.size_mib} MiB on {NODE} (dir storage) <-> pbs1, median of {args.runs} "
          f"runs each; restored disks equal the source: {equal}")
    for what in ("backup", "restore"):
        bare, product = med[f"bare {what}"], med[f"product {what}"]
        print(f"{what:<8} bare {bare:7.2f} s   product {product:7.2f} s   "
              f"ratio {product / bare:5.2f}  (target <= 1.10)")
    bare = med["bare backup"] + med["bare restore"]
    product = med["product backup"] + med["product restore"]
    print(f"both     bare {bare:7.2f} s   product {product:7.2f} s   ratio {product / bare:5.2f}")


if __name__ == "__main__":
    main()
