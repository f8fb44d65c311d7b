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
        with pytest.raises(ConflictError, match="guest 9400 on pve3 is pve1/100 failed over"):
            await zfs_replica(job=job().model_copy(update={"register_vm": False}))
        assert {dst: zfs_snapshots(DST, dst) for dst in DISKS.values()} == before
        again = await failover(job_name=JOB_NAME)
        assert again.last_copy.startswith("skipped: failed over already (")
        assert (again.started, again.schedule, again.config) == \
            ("running already", "paused already", "marked already")


# -- a container (ZFS) and a BTRFS guest fail over the same way ------------------------------------

STORE = "/var/lib/pve/local-btrfs"
OTHERS = {
    "ct101": ("zfs-replica", dict(source="pve1", guest=101, dest_vmid=9401, dest_pool="rpool"),
              "lxc", "/rpool/data/subvol-101-disk-0/etc/hostname",
              "/rpool/replica/subvol-9401-disk-0/etc/hostname"),
    "vm200-btrfs": ("btrfs-replica", dict(source="pve2", guest=200, dest_vmid=9402,
                                          dest_pool="local-btrfs"),
                    "qemu", f"{STORE}/images/200/vm-200-disk-0/disk.raw",
                    f"{STORE}/images/9402/vm-9402-disk-0/disk.raw"),
}


def _clean_other(flow: str, fields: dict, kind: str) -> None:
    src, vmid, tag = fields["source"], fields["dest_vmid"], f"dapx_{DST}-{fields['dest_vmid']}_"
    conf = f"/etc/pve/nodes/{DST}/{'lxc' if kind == 'lxc' else 'qemu-server'}/{vmid}.conf"
    estate.run(DST, ["rm", "-f", conf, f"/run/dapx-sim/{vmid}.running"])
    if flow == "zfs-replica":
        dataset = f"rpool/data/subvol-{fields['guest']}-disk-0"
        estate.run(DST, ["zfs", "destroy", "-r", f"rpool/replica/subvol-{vmid}-disk-0"])
        for snap in zfs_snapshots(src, dataset):
            if snap.startswith(tag):
                estate.run(src, ["zfs", "destroy", f"{dataset}@{snap}"])
        return
    for node in (src, DST):  # this job's snapshots and received copies, the new guest's disk
        listed = sh(node, ["btrfs", "subvolume", "list", "-o", "-R", STORE])
        paths = sorted((f"{STORE}/{ln.split(' path ', 1)[1]}" for ln in listed.splitlines()
                        if " path " in ln), reverse=True)
        for path in paths:
            if tag in path or path.startswith(f"{STORE}/images/{vmid}/"):
                sh(node, ["btrfs", "subvolume", "delete", path])


@pytest.mark.parametrize("case", list(OTHERS))
async def test_a_container_and_a_btrfs_guest_fail_over_too(case: str) -> None:
    from dapx.deployments.jobs import create_job, remove_job
    from dapx.flows.failover import failover
    from dapx.flows.trust import trust_nodes

    flow, fields, kind, source_file, replica_file = OTHERS[case]
    spec = ReplicaJob(destination=DST, bridge_map="vmbr0=vmbr1", keep=2, **fields)
    name = f"failover-{case}"
    _clean_other(flow, fields, kind)
    await trust_nodes(spec.source, DST)
    await asyncio.to_thread(create_job, name, flow, spec, schedule="0 3 * * *", replace=True)
    try:
        result = await failover(job_name=name)  # planned: the guest is stopped on its node
        assert result.last_copy.endswith(" s")  # its first copy, made by the failover
        assert result.config == "marked failed over" and result.started == "started"
        assert sha256(DST, replica_file) == sha256(spec.source, source_file)
        api = (await ProxmoxNode.aload(DST)).pve_api()
        assert (await asyncio.to_thread(api.guest_status, DST, kind, spec.dest_vmid)
                )["status"] == "running"
    finally:
        await asyncio.to_thread(remove_job, name)
        _clean_other(flow, fields, kind)
