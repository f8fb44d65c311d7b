"""Failover on the lab (X5): VM 100 of pve1 has a replica job to pve3 (VMID 9400); the
failover flow starts that replica as the live guest and pauses the job.

In file order: refused while VM 100 runs on pve1 (nothing changes); refused while pve1's API
is down, then done with ``source_down`` (the replica starts from its newest snapshot); a
planned failover with VM 100 stopped, which copies the last write first (checksums equal), a
replica run refused afterwards, and a repeated failover that finds every step done. Each test
starts from a registered, stopped replica and an active job.
"""

from __future__ import annotations

import asyncio

import pytest

from dapx.blocks import ProxmoxNode
from dapx.core.jobspec import ReplicaJob
from dapx.errors import ConflictError
from dapx.lab import estate
from test_replica_helpers import (harness, lab_state, preserved, sh, sha256, start_api,
                                  stop_api, write_random, zfs_snapshots)

pytestmark = pytest.mark.lab

SRC, DST, VMID, NEW = "pve1", "pve3", 100, 9400
JOB_NAME = "vm100-to-pve3-failover"
DISKS = {f"rpool/data/vm-100-disk-{i}": f"rpool/replica/vm-9400-disk-{i}" for i in (0, 1)}
TAG = "dapx_pve3-9400_"
CONF = f"/etc/pve/nodes/{DST}/qemu-server/{NEW}.conf"
MARK = f"#dapx-replica-of: {SRC}/{VMID}"


def job() -> ReplicaJob:
    return ReplicaJob(source=SRC, guest=VMID, destination=DST, dest_vmid=NEW, keep=2)


def _power(api, node: str, vmid: int, action: str) -> None:  # noqa: ANN001 - a PveClient
    from dapx.tasks.vzdump import follow

    if api.guest_status(node, "qemu", vmid)["status"] != {"start": "running",
                                                          "stop": "stopped"}[action]:
        follow(api, api.set_guest_power(node, "qemu", vmid, action), f"{action} {vmid}")


async def power(node: str, vmid: int, action: str) -> None:
    api = (await ProxmoxNode.aload(node)).pve_api()
    await asyncio.to_thread(_power, api, node, vmid, action)


async def status(node: str, vmid: int) -> str:
    api = (await ProxmoxNode.aload(node)).pve_api()
    return (await asyncio.to_thread(api.guest_status, node, "qemu", vmid))["status"]


def first_line() -> str:
    return sh(DST, ["head", "-n", "1", CONF]).strip()


def job_paused() -> bool:
    from dapx.deployments.jobs import list_jobs

    return next(j for j in list_jobs() if j["name"] == JOB_NAME)["paused"]


def clean() -> None:
    """Nothing of this module's on the lab: the replica, its config, the job's snapshots."""
    estate.run(DST, ["rm", "-f", CONF, f"/run/dapx-sim/{NEW}.running"])  # (the lab's mark)
    for src, dst in DISKS.items():
        estate.run(DST, ["zfs", "destroy", "-r", dst])
        for snap in zfs_snapshots(SRC, src):
            if snap.startswith(TAG):
                estate.run(SRC, ["zfs", "destroy", f"{src}@{snap}"])


@pytest.fixture(scope="module", autouse=True)
def prefect_lab(request: pytest.FixtureRequest):
    lab_state(request)
    clean()
    yield from harness(request)
    from dapx.deployments.jobs import list_jobs, remove_job

    if any(j["name"] == JOB_NAME for j in list_jobs()):
        remove_job(JOB_NAME)
    clean()


@pytest.fixture(autouse=True)
async def replica_ready() -> None:
    """A registered, stopped replica of VM 100 on pve3 and the job active, as before any
    failover (the replica is copied once, by the first test)."""
    from dapx.deployments.jobs import create_job, list_jobs, remove_job
    from dapx.flows.replica import zfs_replica
    from dapx.flows.trust import trust_nodes

    await power(SRC, VMID, "stop")
    if estate.run(DST, ["test", "-e", CONF]).returncode != 0:
        await trust_nodes(SRC, DST)
        await zfs_replica(job=job())
    await power(DST, NEW, "stop")
    sh(DST, ["sed", "-i", f"1s|^#dapx-failed-over-from: .*|{MARK}|", CONF])
    if any(j["name"] == JOB_NAME for j in list_jobs()):  # made anew: a replace keeps a pause
        await asyncio.to_thread(remove_job, JOB_NAME)
    await asyncio.to_thread(create_job, JOB_NAME, "zfs-replica", job(), schedule="0 3 * * *")
    assert first_line() == MARK and not job_paused()


async def assert_nothing_changed() -> None:
    assert first_line() == MARK
    assert await status(DST, NEW) == "stopped"
    assert not job_paused()


async def test_refused_while_the_guest_runs_on_its_source() -> None:
    from dapx.flows.failover import failover

    await power(SRC, VMID, "start")
    try:
        with pytest.raises(ConflictError, match="guest 100 is running on pve1: starting its "
                           "replica would run two copies. Shut it down first"):
            await failover(job_name=JOB_NAME)
        with pytest.raises(ConflictError, match="running on pve1"):  # seen, so never overruled
            await failover(job_name=JOB_NAME, source_down=True)
    finally:
        await power(SRC, VMID, "stop")
    await assert_nothing_changed()


async def test_source_down_needs_saying_then_starts_the_newest_snapshot() -> None:
    from dapx.flows.failover import failover

    stop_api(SRC)
    try:
        with pytest.raises(ConflictError, match=r"cannot ask pve1 whether guest 100 runs "
                           r"\(.*\): if pve1 is down, run again with source_down"):
            await failover(job_name=JOB_NAME)
        await assert_nothing_changed()
        result = await failover(job_name=JOB_NAME, source_down=True)
    finally:
        start_api(SRC)
    assert result.source_state.startswith("unreachable")
    assert result.last_copy == "skipped: the source is down (source_down)"
    assert (result.started, result.schedule, result.config) == \
        ("started", "paused", "marked failed over")
    assert await status(DST, NEW) == "running" and job_paused()
    assert first_line().startswith(f"#dapx-failed-over-from: {SRC}/{VMID} ")


async def test_planned_failover_copies_the_last_write_then_starts_the_replica() -> None:
    from dapx.flows.failover import failover
    from dapx.flows.protection import protection_status
    from dapx.flows.replica import zfs_replica

    with preserved(SRC, list(DISKS)):
        write_random(SRC, "/rpool/data/vm-100-disk-0/disk.raw", 1, offset_mib=5)
        result = await failover(job_name=JOB_NAME)
        assert result.source_state == "stopped on pve1"
        assert result.last_copy.endswith(" s") and not result.last_copy.startswith("0 B")
        for src, dst in DISKS.items():
            assert sha256(DST, f"/{dst}/disk.raw") == sha256(SRC, f"/{src}/disk.raw")
        assert await status(DST, NEW) == "running" and job_paused()
        assert first_line().startswith(f"#dapx-failed-over-from: {SRC}/{VMID} ")
        rows = {r["guest"]: r for r in (await protection_status()).rows}  # `dapx status`
        assert rows["pve3/9400"]["state"] == "unprotected"
        assert rows["pve3/9400"]["why"].startswith("live copy of pve1/100 since its failover")
        assert rows["pve1/100"]["why"].startswith("failed over to pve3/9400")
        # the live copy is never written into by the job again, even run by hand
        before = {dst: zfs_snapshots(DST, dst) for dst in DISKS.values()}
        with pytest.raises(ConflictError, match="guest 9400 on pve3 is pve1/100 failed over"):
            await zfs_replica(job=job())
        assert {dst: zfs_snapshots(DST, dst) for dst in DISKS.values()} == before
        again = await failover(job_name=JOB_NAME)
        assert again.last_copy.startswith("skipped: failed over already (")
        assert (again.started, again.schedule, again.config) == \
            ("running already", "paused already", "marked already")
