"""zfs-replica end to end on the lab: VM 100 (two ZFS disks) pve1 -> pve3 as VMID 9100.

The tests run in file order and build on each other (full copy, then incremental, ...),
like a job's life. Each asserts what a user would notice: checksums of every disk on both
sides, the registered config as PVE's API shows it, snapshot lists, refusal messages.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest
from pydantic import ValidationError

from dapx.core.jobspec import ReplicaJob
from dapx.errors import ConflictError, InputError, PermanentError
from dapx.lab import estate
from test_replica_helpers import (find_process, harness, lab_state, latest_artifact, sh,
                                  sha256, wait_for_process, write_random, zfs_snapshots)

pytestmark = pytest.mark.lab

SRC, DST, VMID, NEW = "pve1", "pve3", 100, 9100
DISKS = {f"rpool/data/vm-100-disk-{i}": f"rpool/replica/vm-9100-disk-{i}" for i in (0, 1)}
FIGURES = Path("/tmp/dapx-replica-figures.json")
TAG = "dapx_pve3-9100_"


def job(**changes) -> ReplicaJob:
    base = dict(source=SRC, guest=VMID, destination=DST, dest_vmid=NEW, dest_pool="rpool",
                subfolder="replica", bridge_map="vmbr0=vmbr1", cpu_host=True, keep=2)
    return ReplicaJob(**(base | changes))


def clean_lab() -> None:
    """Remove what earlier runs left: replicas, our snapshots, the registration."""
    for src, dst in DISKS.items():
        estate.run(DST, ["zfs", "destroy", "-r", dst])
        for snap in zfs_snapshots(SRC, src):
            if snap.startswith("dapx_"):
                sh(SRC, ["zfs", "destroy", f"{src}@{snap}"])
    estate.run(DST, ["rm", "-f", f"/etc/pve/nodes/{DST}/qemu-server/{NEW}.conf"])


def assert_disks_equal() -> None:
    for src, dst in DISKS.items():
        assert sha256(SRC, f"/{src}/disk.raw") == sha256(DST, f"/{dst}/disk.raw"), dst


def record(name: str, result) -> None:  # noqa: ANN001
    figures = json.loads(FIGURES.read_text()) if FIGURES.exists() else {}
    figures[name] = {"seconds": result.seconds, "bytes_sent": result.bytes_sent,
                     "disks": {d.disk: [d.bytes_sent, d.seconds] for d in result.disks}}
    FIGURES.write_text(json.dumps(figures, indent=1))


@pytest.fixture(scope="module", autouse=True)
def prefect_lab(request: pytest.FixtureRequest):
    lab_state(request)
    clean_lab()
    yield from harness(request)


async def test_bad_input_refused_before_anything_runs() -> None:
    from dapx.flows.replica import zfs_replica

    before = {src: zfs_snapshots(SRC, src) for src in DISKS}
    with pytest.raises(InputError, match="guest 555 is not on node pve1"):
        await zfs_replica(job=job(guest=555))
    with pytest.raises(InputError, match="not ZFS.*PBS"):
        await zfs_replica(job=ReplicaJob(source="pve3", guest=300, destination="pve1"))
    with pytest.raises(ValidationError, match="both 'pve1'"):
        job(destination="pve1")
    with pytest.raises(ValidationError):
        job(subfolder="x; rm -rf /")
    with pytest.raises(ValidationError):
        job(dest_vmid=99)
    with pytest.raises(InputError, match="unknown node 'nowhere'"):
        await zfs_replica(job=job(destination="nowhere"))
    assert {src: zfs_snapshots(SRC, src) for src in DISKS} == before


async def test_dest_vmid_of_another_guest_refused_before_any_copy() -> None:
    from dapx.flows.replica import zfs_replica
    from dapx.flows.trust import trust_nodes

    await trust_nodes(SRC, DST)
    before = {src: zfs_snapshots(SRC, src) for src in DISKS}
    with pytest.raises(ConflictError, match="VMID 300 on pve3 belongs to another guest"):
        await zfs_replica(job=job(dest_vmid=300))
    assert {src: zfs_snapshots(SRC, src) for src in DISKS} == before
    assert estate.run(DST, ["zfs", "list", "rpool/replica/vm-300-disk-0"]).returncode != 0


async def test_replication_refused_without_trust() -> None:
    from dapx.flows.replica import zfs_replica

    # pve2 never got pve1's replication key (cluster root trust is not ours to use)
    with pytest.raises(PermanentError, match="trust-nodes"):
        await zfs_replica(job=job(destination="pve2"))


async def test_trust_nodes_is_idempotent_and_keeps_the_key_on_the_source() -> None:
    from dapx.flows.trust import REPLICATION_KEY, trust_nodes

    first = await trust_nodes(SRC, DST)
    second = await trust_nodes(SRC, DST)
    assert not (second.key_created or second.key_authorised or second.host_key_pinned)
    assert first.public_key == second.public_key
    authorised = sh(DST, ["cat", "/root/.ssh/authorized_keys"]).splitlines()
    assert [line for line in authorised if first.public_key in line] == [
        f'restrict,from="198.18.213.11" {first.public_key}']
    assert estate.run(DST, ["test", "-e", REPLICATION_KEY]).returncode != 0
    assert "PRIVATE KEY" in sh(SRC, ["cat", REPLICATION_KEY])


async def test_dry_run_changes_nothing() -> None:
    from dapx.flows.replica import zfs_replica

    before = {src: zfs_snapshots(SRC, src) for src in DISKS}
    result = await zfs_replica(job=job(), dry_run=True)
    assert [d.plan.split(" of ")[0] for d in result.disks] == ["full send", "full send"]
    assert {src: zfs_snapshots(SRC, src) for src in DISKS} == before
    assert all(zfs_snapshots(DST, dst) == [] for dst in DISKS.values())
    assert estate.run(DST, ["test", "-e", f"/etc/pve/nodes/{DST}/qemu-server/{NEW}.conf"]
                      ).returncode != 0
    plan = await latest_artifact("replica-plan-pve1-100-pve3")
    assert plan is not None and "full send" in plan.data and "nothing was changed" in plan.data


async def test_full_replication_registers_the_vm() -> None:
    from dapx.blocks.node import ProxmoxNode
    from dapx.flows.replica import zfs_replica

    result = await zfs_replica(job=job())
    record("full", result)
    assert_disks_equal()
    assert result.bytes_sent >= 2 * 32 * 1024 * 1024
    config = (await ProxmoxNode.aload(DST)).api().guest_config(DST, "qemu", NEW)
    assert "bridge=vmbr1" in config["net0"]
    assert config["scsi0"].startswith("dapx-rpool-replica:vm-9100-disk-0,")
    assert config["scsi1"].startswith("dapx-rpool-replica:vm-9100-disk-1,")
    assert config["cpu"] == "host"
    assert "onboot" not in config
    assert result.registration.startswith("created")
    table = await latest_artifact("replica-result-pve1-100-pve3")
    rows = json.loads(table.data) if isinstance(table.data, str) else table.data
    assert [r["bytes sent"] for r in rows] == [d.bytes_sent for d in result.disks]
    assert await latest_artifact("replica-progress-pve1-100-pve3") is not None


async def test_incremental_sends_only_the_change() -> None:
    from dapx.flows.replica import zfs_replica

    write_random(SRC, "/rpool/data/vm-100-disk-0/disk.raw", 1, offset_mib=5)
    result = await zfs_replica(job=job())
    record("incremental", result)
    assert all(d.plan.startswith("incremental") for d in result.disks)
    assert result.bytes_sent < 4 * 1024 * 1024  # 1 MiB changed out of 64 MiB
    assert_disks_equal()
    assert result.registration.startswith(("updated", "unchanged"))


async def test_versions_to_keep_on_both_sides() -> None:
    from dapx.flows.replica import zfs_replica

    result = await zfs_replica(job=job())
    for src, dst in DISKS.items():
        ours_src = [s for s in zfs_snapshots(SRC, src) if s.startswith(TAG)]
        ours_dst = [s for s in zfs_snapshots(DST, dst) if s.startswith(TAG)]
        assert len(ours_src) == 2 and ours_src == ours_dst
        assert ours_src[-1] == result.snapshot


async def test_diverged_target_refused_then_force_recovers() -> None:
    from dapx.flows.replica import zfs_replica

    dst = DISKS["rpool/data/vm-100-disk-0"]
    sh(DST, ["zfs", "snapshot", f"{dst}@someone-else"])
    before = {src: zfs_snapshots(SRC, src) for src in DISKS}
    with pytest.raises(ConflictError, match="diverged.*someone-else.*force"):
        await zfs_replica(job=job())
    assert {src: zfs_snapshots(SRC, src) for src in DISKS} == before  # nothing was taken
    result = await zfs_replica(job=job(), force=True)
    assert "roll back" in result.disks[0].plan
    assert "someone-else" not in zfs_snapshots(DST, dst)
    assert_disks_equal()


async def test_second_concurrent_run_waits_then_fails_clearly() -> None:
    from dapx.flows.replica import zfs_replica
    from dapx.tasks.locks import LockTimeout

    write_random(SRC, "/rpool/data/vm-100-disk-1/disk.raw", 6)
    slow = asyncio.create_task(zfs_replica(job=job(bwlimit="1M")))
    await asyncio.to_thread(wait_for_process, SRC, "zfs", "send")
    started = time.monotonic()
    with pytest.raises(LockTimeout, match="another run is already replicating guest 100"):
        await zfs_replica(job=job(), lock_wait=2)
    assert time.monotonic() - started >= 2
    await slow
    assert_disks_equal()


async def test_cut_off_transfer_recovers_on_the_next_run() -> None:
    import os
    import signal

    from dapx.flows.replica import zfs_replica

    dst = DISKS["rpool/data/vm-100-disk-1"]
    previous = zfs_snapshots(DST, dst)
    write_random(SRC, "/rpool/data/vm-100-disk-1/disk.raw", 8)
    cut = asyncio.create_task(zfs_replica(job=job(bwlimit="1M")))
    pid = await asyncio.to_thread(wait_for_process, DST, "zfs", "receive", dst)
    await asyncio.sleep(1.0)
    os.kill(pid, signal.SIGKILL)
    await asyncio.sleep(0.5)
    assert zfs_snapshots(DST, dst) == previous  # still at its last good snapshot
    try:
        await cut  # syncoid's cut pipe is transient: the task may retry and finish
    except PermanentError:
        pass
    result = await zfs_replica(job=job())
    assert not result.failures
    assert_disks_equal()
    assert find_process(DST, "zfs", "receive") is None
