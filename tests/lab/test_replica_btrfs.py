"""btrfs-replica end to end on the lab: VM 200 (local-btrfs) pve2 -> pve3 as VMID 9200.

In file order, like a job's life: trust, dry run, full copy with registration, incremental,
versions kept, cut-off transfer recovered. Checksums of the disk on both sides.
"""

from __future__ import annotations

import asyncio
import os
import signal

import pytest

from dapx.core.jobspec import ReplicaJob
from dapx.errors import ConflictError, InputError, PermanentError
from dapx.lab import estate
from test_replica_helpers import (find_process, harness, lab_state, sh, sha256,
                                  wait_for_process, write_random)

pytestmark = pytest.mark.lab

SRC, DST, NEW = "pve2", "pve3", 9200
STORE = "/var/lib/pve/local-btrfs"
SRC_DISK = f"{STORE}/images/200/vm-200-disk-0"
DST_DISK = f"{STORE}/images/9200/vm-9200-disk-0"
RECEIVED = f"{STORE}/replica/pve2-200"
TAG = "dapx_pve3-9200_"


def job(**changes) -> ReplicaJob:
    base = dict(source=SRC, guest=200, destination=DST, dest_vmid=NEW, dest_pool="local-btrfs",
                bridge_map="vmbr0=vmbr1", keep=2)
    return ReplicaJob(**(base | changes))


def subvolumes(node: str) -> list[str]:
    out = sh(node, ["btrfs", "subvolume", "list", "-o", "-R", STORE])
    return sorted(f"{STORE}/{ln.split(' path ', 1)[1]}" for ln in out.splitlines()
                  if " path " in ln)


def ours(node: str, prefix: str) -> list[str]:
    return sorted(p.rsplit("@", 1)[1] for p in subvolumes(node) if p.startswith(prefix + "@"))


def clean_lab() -> None:
    for path in reversed(subvolumes(DST)):
        if path.startswith((RECEIVED, f"{STORE}/images/9200")):
            sh(DST, ["btrfs", "subvolume", "delete", path])
    for path in subvolumes(SRC):
        if path.startswith(SRC_DISK + "@dapx_"):
            sh(SRC, ["btrfs", "subvolume", "delete", path])
    estate.run(DST, ["rm", "-f", f"/etc/pve/nodes/{DST}/qemu-server/{NEW}.conf"])


def assert_disk_equal() -> None:
    assert sha256(SRC, f"{SRC_DISK}/disk.raw") == sha256(DST, f"{DST_DISK}/disk.raw")


@pytest.fixture(scope="module", autouse=True)
def prefect_lab(request: pytest.FixtureRequest):
    lab_state(request)
    clean_lab()
    yield from harness(request)


async def test_refuses_a_guest_not_on_btrfs_and_needs_trust() -> None:
    from dapx.flows.btrfs_replica import btrfs_replica

    with pytest.raises(InputError, match="not BTRFS"):
        await btrfs_replica(job=ReplicaJob(source="pve1", guest=100, destination="pve3",
                                           dest_pool="local-btrfs"))
    with pytest.raises(PermanentError, match="trust-nodes"):
        await btrfs_replica(job=job(destination="pve1"))


async def test_dry_run_then_full_copy_registers_the_vm() -> None:
    from dapx.blocks.node import ProxmoxNode
    from dapx.flows.btrfs_replica import btrfs_replica
    from dapx.flows.trust import trust_nodes

    await trust_nodes(SRC, DST)
    plan = await btrfs_replica(job=job(), dry_run=True)
    assert plan.disks[0].plan.startswith("full send")
    assert ours(SRC, SRC_DISK) == [] and not any(p.startswith(RECEIVED) for p in subvolumes(DST))
    result = await btrfs_replica(job=job())
    assert result.bytes_sent >= 32 * 1024 * 1024
    assert_disk_equal()
    config = (await ProxmoxNode.aload(DST)).api().guest_config(DST, "qemu", NEW)
    assert config["scsi0"].startswith("local-btrfs:9200/vm-9200-disk-0.raw,")
    assert "bridge=vmbr1" in config["net0"]


async def test_incremental_and_versions_kept() -> None:
    from dapx.flows.btrfs_replica import btrfs_replica

    for _ in range(2):
        write_random(SRC, f"{SRC_DISK}/disk.raw", 1, offset_mib=3)
        result = await btrfs_replica(job=job())
        assert result.disks[0].plan.startswith("incremental")
        assert result.bytes_sent < 4 * 1024 * 1024
        assert_disk_equal()
    src, dst = ours(SRC, SRC_DISK), ours(DST, f"{RECEIVED}/vm-200-disk-0")
    assert len(src) == 2 and src == dst and src[-1] == result.snapshot


async def test_source_deleting_the_newest_common_snapshot_is_no_divergence() -> None:
    from dapx.flows.btrfs_replica import btrfs_replica

    kept = ours(SRC, SRC_DISK)
    assert len(kept) == 2 and kept == ours(DST, f"{RECEIVED}/vm-200-disk-0")
    sh(SRC, ["btrfs", "subvolume", "delete", f"{SRC_DISK}@{kept[-1]}"])
    write_random(SRC, f"{SRC_DISK}/disk.raw", 1, offset_mib=5)
    result = await btrfs_replica(job=job())
    assert result.disks[0].plan == f"incremental {kept[0]} -> {result.snapshot}"
    assert result.bytes_sent < 4 * 1024 * 1024
    assert_disk_equal()


async def test_written_disk_refused_naming_how_much_then_force_replaces_it() -> None:
    from dapx.flows.btrfs_replica import btrfs_replica

    write_random(DST, f"{DST_DISK}/disk.raw", 1, offset_mib=9)  # someone used the replica
    written = sha256(DST, f"{DST_DISK}/disk.raw")
    with pytest.raises(ConflictError, match=r"scsi0: .* diverged: it was written to \(the disk "
                       rf"{DST_DISK}\) since it was made \(1\.0 MiB written\); run with force"):
        await btrfs_replica(job=job())
    assert sha256(DST, f"{DST_DISK}/disk.raw") == written
    result = await btrfs_replica(job=job(), force=True)
    assert not result.failures
    assert_disk_equal()
    assert (await btrfs_replica(job=job())).disks[0].plan.startswith("incremental")


async def test_forced_full_resend_arrives_beside_then_swaps() -> None:
    from dapx.flows.btrfs_replica import btrfs_replica

    for snap in ours(SRC, SRC_DISK):  # an administrator deleted the source's snapshots
        sh(SRC, ["btrfs", "subvolume", "delete", f"{SRC_DISK}@{snap}"])
    with pytest.raises(ConflictError, match="none shared with the source"):
        await btrfs_replica(job=job())
    result = await btrfs_replica(job=job(), force=True)
    assert result.disks[0].plan.startswith("full send") and not result.failures
    assert_disk_equal()
    assert ours(DST, f"{RECEIVED}/vm-200-disk-0") == [result.snapshot]  # the old copy is gone
    assert not [p for p in subvolumes(DST) if "dapx-new." in p or "dapx-old." in p]


async def test_cut_off_transfer_recovers_on_the_next_run() -> None:
    from dapx.flows.btrfs_replica import btrfs_replica

    before = ours(DST, f"{RECEIVED}/vm-200-disk-0")
    write_random(SRC, f"{SRC_DISK}/disk.raw", 8)
    cut = asyncio.create_task(btrfs_replica(job=job(bwlimit="1M")))
    pid = await asyncio.to_thread(wait_for_process, DST, "btrfs", "receive")
    await asyncio.sleep(1.0)
    os.kill(pid, signal.SIGKILL)
    try:
        await cut
    except PermanentError:
        pass
    assert before[-1] in ours(DST, f"{RECEIVED}/vm-200-disk-0")  # last good state kept
    result = await btrfs_replica(job=job())
    assert not result.failures
    assert_disk_equal()
    assert find_process(DST, "btrfs", "receive") is None
