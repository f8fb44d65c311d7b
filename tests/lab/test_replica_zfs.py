"""zfs-replica end to end on the lab: VM 100 (two ZFS disks) pve1 -> pve3 as VMID 9100.

The tests run in file order and build on each other (full copy, then incremental, ...),
like a job's life. Each asserts what a user would notice: checksums of every disk on both
sides, the registered config as PVE's API shows it, snapshot lists, refusal messages.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from pydantic import ValidationError

from dapx.core.jobspec import ReplicaJob
from dapx.errors import ConflictError, InputError, PermanentError
from dapx.lab import estate
from dapx.ui_extensions.artifacts import human_bytes
from test_replica_helpers import (background, find_process, harness, lab_processes,
                                  lab_state, latest_artifact, release_dead_holder,
                                  run_flow_in_subprocess, sh, sha256, start_api, stop_api,
                                  wait_for_process, wait_until_gone, write_random,
                                  zfs_snapshots)

pytestmark = pytest.mark.lab

SRC, DST, VMID, NEW = "pve1", "pve3", 100, 9100
DISKS = {f"rpool/data/vm-100-disk-{i}": f"rpool/replica/vm-9100-disk-{i}" for i in (0, 1)}
FIGURES = Path("/tmp/dapx-replica-figures.json")
TAG = "dapx_pve3-9100_"
INCOMING = "rpool/replica/dapx-resend/new."
CONF = f"/etc/pve/nodes/{DST}/qemu-server/{NEW}.conf"


def job(**changes) -> ReplicaJob:
    base = dict(source=SRC, guest=VMID, destination=DST, dest_vmid=NEW, dest_pool="rpool",
                subfolder="replica", bridge_map="vmbr0=vmbr1", cpu_host=True, keep=2)
    return ReplicaJob(**(base | changes))


def clean_lab() -> None:
    """Remove what earlier runs left: replicas, our snapshots, the registration."""
    estate.run(DST, ["zfs", "destroy", "-r", "rpool/replica/dapx-resend"])
    for dst in DISKS.values():
        estate.run(DST, ["zfs", "destroy", "-r", dst])
    # zfs-fuse may call snapshots busy for a while after a cut send: every one left is tried
    # again each half second, under one deadline for all (not one wait per snapshot).
    deadline = time.monotonic() + 15
    while True:
        left = [f"{src}@{snap}" for src in DISKS for snap in zfs_snapshots(SRC, src)
                if snap.startswith("dapx_")]
        for path in left:
            estate.run(SRC, ["zfs", "destroy", path])
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.5)
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
    clean_lab()  # later modules list VM 100's snapshots: leave none of this module's


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
    # the key pair stays on the source: the destination holds no copy of it (it may have a
    # replication key of its own, when it replicates somewhere too)
    assert first.public_key not in estate.run(DST, ["cat", REPLICATION_KEY + ".pub"]).stdout
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
    assert [r["sent"] for r in rows] == [human_bytes(d.bytes_sent) for d in result.disks]
    assert "registration: created" in table.description
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

    def ours() -> list[tuple[list[str], list[str]]]:
        return [([s for s in zfs_snapshots(SRC, src) if s.startswith(TAG)],
                 [s for s in zfs_snapshots(DST, dst) if s.startswith(TAG)])
                for src, dst in DISKS.items()]

    result = await zfs_replica(job=job())
    for ours_src, ours_dst in ours():
        assert len(ours_src) == 2 and ours_src == ours_dst
        assert ours_src[-1] == result.snapshot
    # keep 1: the previous common snapshot goes too, from the source once the destination
    # holds the new one; then keep 2 again.
    result = await zfs_replica(job=job(keep=1))
    assert ours() == [([result.snapshot], [result.snapshot])] * len(DISKS)
    assert all(len(d.pruned_source) == 2 and len(d.pruned_dest) == 2 for d in result.disks)
    result = await zfs_replica(job=job())
    assert all(len(s) == 2 and s == d and s[-1] == result.snapshot for s, d in ours())


async def test_written_head_refused_naming_how_much_then_force_discards_it() -> None:
    from dapx.flows.replica import zfs_replica

    head = f"/{DISKS['rpool/data/vm-100-disk-0']}/disk.raw"
    # Someone used the replica: 1 MiB overwritten where both kept snapshots share the blocks
    # (space accounting cannot see that), and no snapshot taken.
    write_random(DST, head, 1, offset_mib=20)
    written = sha256(DST, head)
    with pytest.raises(ConflictError, match=r"vm-9100-disk-0 diverged: it was written to since "
                       r"its newest snapshot \(\d+\.\d [KM]iB written\); run with force"):
        await zfs_replica(job=job())
    assert sha256(DST, head) == written  # nothing was rolled back
    result = await zfs_replica(job=job(), force=True)
    assert result.disks[0].plan.startswith("roll back to ")
    assert_disks_equal()


async def test_a_write_after_the_checks_fails_the_receive_and_is_kept(monkeypatch) -> None:
    """Someone writes into the replica between the run's checks and its receive: the receive
    refuses the stream (no rollback, no -F), the run names why, the written bytes stay."""
    from dapx.flows import replica

    target = DISKS["rpool/data/vm-100-disk-0"]
    head = f"/{target}/disk.raw"
    prepare = replica.prepare_target

    async def prepare_then_someone_writes(dest, into: str, plan) -> None:  # noqa: ANN001
        await prepare(dest, into, plan)
        if into == target:
            write_random(DST, head, 1, offset_mib=24)

    monkeypatch.setattr(replica, "prepare_target", prepare_then_someone_writes)
    with pytest.raises(PermanentError, match=r"failed for 1 disk\(s\): scsi0: .*written since "
                       r"its newest snapshot, after this run's checks; the receive refused"):
        await replica.zfs_replica(job=job())
    assert sha256(DST, head) != sha256(SRC, "/rpool/data/vm-100-disk-0/disk.raw")
    written = sha256(DST, head)
    monkeypatch.undo()
    with pytest.raises(ConflictError, match="vm-9100-disk-0 diverged"):  # the next run sees it
        await replica.zfs_replica(job=job())
    assert sha256(DST, head) == written  # kept until someone decides
    await replica.zfs_replica(job=job(), force=True)
    assert_disks_equal()


async def test_target_of_another_job_refused_naming_its_owner() -> None:
    from dapx.core.jobspec import DatasetJob
    from dapx.flows.dataset import dataset_replica

    target = DISKS["rpool/data/vm-100-disk-1"]
    before = sha256(DST, f"/{target}/disk.raw")
    snapshots = zfs_snapshots(SRC, "rpool/data/subvol-101-disk-0")
    other = DatasetJob(source=SRC, dataset="rpool/data/subvol-101-disk-0", destination=DST,
                       dest_dataset=target)
    for force in (False, True):
        with pytest.raises(ConflictError, match=r"replica of another dapx job \(pve1/100\); it "
                           "is never overwritten, force or not"):
            await dataset_replica(job=other, force=force)
    assert sha256(DST, f"/{target}/disk.raw") == before
    assert zfs_snapshots(SRC, "rpool/data/subvol-101-disk-0") == snapshots  # none taken


def sample_old_replica(before: dict[str, str], forced: asyncio.Task, api) -> int:  # noqa: ANN001
    """While the forced run lasts: the old disks' checksums and the registered config as PVE's
    API shows it, again and again; the second disk's receive is cut a second after it began.
    Returns how many samples were taken."""
    samples, seen, cut = 0, None, False
    while not forced.done():
        for dst, digest in before.items():
            assert sha256(DST, f"/{dst}/disk.raw") == digest, f"{dst} changed during the resend"
        config = api.guest_config(DST, "qemu", NEW)
        assert config["scsi0"].startswith("dapx-rpool-replica:vm-9100-disk-0,")
        assert config["scsi1"].startswith("dapx-rpool-replica:vm-9100-disk-1,")
        samples += 1
        pid = None if cut else find_process(DST, "zfs", "receive", INCOMING + "vm-9100-disk-1")
        if pid and seen is None:
            seen = time.monotonic()
        elif pid and time.monotonic() - seen >= 1.0:
            import os
            import signal

            os.kill(pid, signal.SIGKILL)
            cut = True
    assert cut, "the second disk's receive never ran"
    return samples


async def test_forced_resend_keeps_the_old_replica_whole_until_every_disk_arrived(
        monkeypatch) -> None:  # noqa: ANN001
    from dapx.blocks.node import ProxmoxNode
    from dapx.flows import replica
    from dapx.tasks.syncoid import run_syncoid

    before = {dst: sha256(DST, f"/{dst}/disk.raw") for dst in DISKS.values()}
    for src in DISKS:  # an administrator deleted the replication snapshots on the source
        for snap in zfs_snapshots(SRC, src):
            if snap.startswith(TAG):
                sh(SRC, ["zfs", "destroy", f"{src}@{snap}"])
    write_random(SRC, "/rpool/data/vm-100-disk-0/disk.raw", 2, offset_mib=10)
    with pytest.raises(ConflictError, match="none shared with the source; run with force"):
        await replica.zfs_replica(job=job())
    # A cut is a cut: the transfer task is not retried (syncoid's broken pipe is transient).
    monkeypatch.setattr(replica, "run_syncoid", run_syncoid.with_options(retries=0))
    api = (await ProxmoxNode.aload(DST)).api()
    async with background(replica.zfs_replica(job=job(bwlimit="8M"), force=True)) as forced:
        samples = await asyncio.to_thread(sample_old_replica, before, forced, api)
        with pytest.raises(PermanentError, match="scsi0: received beside the old copy but not "
                           "swapped in: scsi1 failed.*; scsi1: "):
            await forced
    assert samples >= 3
    assert {dst: sha256(DST, f"/{dst}/disk.raw") for dst in DISKS.values()} == before
    assert zfs_snapshots(DST, INCOMING + "vm-9100-disk-0")  # arrived; waits to be reused
    monkeypatch.undo()
    result = await replica.zfs_replica(job=job(), force=True)
    assert "resuming the copy a cut run left" in result.disks[0].plan
    assert result.disks[1].plan.startswith("full send")
    assert_disks_equal()
    assert estate.run(DST, ["zfs", "list", "rpool/replica/dapx-resend"]).returncode != 0
    assert api.guest_config(DST, "qemu", NEW)["scsi1"].startswith("dapx-rpool-replica:")


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


async def test_concurrent_runs_wait_and_no_plan_while_a_receive_runs() -> None:
    from dapx.flows.replica import zfs_replica
    from dapx.tasks.locks import LockTimeout

    write_random(SRC, "/rpool/data/vm-100-disk-1/disk.raw", 12)  # 12 s at 1 MiB/s: margin
    async with background(zfs_replica(job=job(bwlimit="1M"))) as slow:
        await asyncio.to_thread(wait_for_process, DST, "zfs", "receive",
                                DISKS["rpool/data/vm-100-disk-1"])
        # a plan takes no lock, but refuses while a receive writes a target
        with pytest.raises(ConflictError, match=r"a receive into a target of this run is still "
                           r"running on pve3 \(pid \d+: .*zfs receive.*vm-9100-disk-1"):
            await zfs_replica(job=job(), dry_run=True)
        async with background(zfs_replica(job=job(), lock_wait=120)) as waiting:
            started = time.monotonic()
            with pytest.raises(LockTimeout, match="another run is already replicating guest"):
                await zfs_replica(job=job(), lock_wait=2)
            assert time.monotonic() - started >= 2
            first, later = await slow, await waiting
    # named when it was taken, after the wait (the first run's transfer), not when it began
    assert stamp(later.snapshot) >= stamp(first.snapshot) + timedelta(
        seconds=int(first.disks[1].seconds))
    assert_disks_equal()


def stamp(snapshot: str) -> datetime:
    return datetime.strptime(snapshot.rsplit("_", 1)[1], "%Y%m%dT%H%M%SZ")


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


async def test_run_killed_hard_leaves_no_transfer_running() -> None:
    from dapx.flows.replica import zfs_replica
    from dapx.tasks.locks import guest_lock_name

    write_random(SRC, "/rpool/data/vm-100-disk-1/disk.raw", 8)
    code = ("import asyncio, sys\n"
            "from dapx.core.jobspec import ReplicaJob\n"
            "from dapx.flows.replica import zfs_replica\n"
            f"asyncio.run(zfs_replica(job=ReplicaJob.model_validate_json({job(bwlimit='1M').model_dump_json()!r})))")
    flow_process = run_flow_in_subprocess(code)
    try:
        await asyncio.to_thread(wait_for_process, DST, "zfs", "receive",
                                DISKS["rpool/data/vm-100-disk-1"], timeout=90)
    finally:
        flow_process.kill()  # SIGKILL: no cleanup of its own runs
        flow_process.wait()
    deadline, left = time.monotonic() + 5, ["?"]  # a tied transfer ends within a second
    while left and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
        left = (lab_processes(SRC, "syncoid", "--no-sync-snap") +
                lab_processes(SRC, "zfs", "send") + lab_processes(DST, "zfs", "receive"))
    try:
        assert not left, f"the killed run's transfer still runs: {left}"
    finally:  # an untied transfer goes on: let it end before the next test
        await asyncio.to_thread(wait_until_gone, DST, "zfs", "receive")
    await release_dead_holder(guest_lock_name(SRC, VMID))
    result = await zfs_replica(job=job())
    assert not result.failures
    assert_disks_equal()


async def test_api_down_copies_the_data_then_fails_naming_registration() -> None:
    from dapx.flows.replica import zfs_replica

    estate.run(DST, ["rm", "-f", CONF])
    write_random(SRC, "/rpool/data/vm-100-disk-0/disk.raw", 1, offset_mib=7)
    before = {src: zfs_snapshots(SRC, src) for src in DISKS}
    stop_api(DST)
    try:
        # the config files, read over SSH, still refuse another guest's VMID before any copy
        with pytest.raises(ConflictError, match="VMID 300 on pve3 belongs to another guest"):
            await zfs_replica(job=job(dest_vmid=300))
        assert {src: zfs_snapshots(SRC, src) for src in DISKS} == before
        started = time.monotonic()
        with pytest.raises(PermanentError, match=r"guest 100 was copied to pve3 \(every disk\) "
                           r"but not registered as VMID 9100: .*cannot reach the API of pve3.*"
                           "The next run registers it"):
            await zfs_replica(job=job())
        seconds = time.monotonic() - started
    finally:
        start_api(DST)
    assert_disks_equal()
    figures = json.loads(FIGURES.read_text()) if FIGURES.exists() else {}
    FIGURES.write_text(json.dumps(figures | {"api-down run seconds": round(seconds, 1)}))
    assert estate.run(DST, ["test", "-e", CONF]).returncode != 0
    result = await zfs_replica(job=job())
    assert result.registration.startswith("created qemu 9100")


async def test_disk_removed_from_the_guest_reported_then_removed_by_the_option() -> None:
    from dapx.flows.replica import zfs_replica

    config = f"/etc/pve/qemu-server/{VMID}.conf"
    original = sh(SRC, ["cat", config])
    detached = "".join(ln for ln in original.splitlines(keepends=True)
                       if not ln.startswith("scsi1:"))
    sh(SRC, ["sh", "-c", 'cat > "$1"', "sh", config], input=detached)  # test code: constant
    try:
        kept = await zfs_replica(job=job())
        assert [d.disk for d in kept.disks] == ["scsi0"]
        # (2 snapshots of the job, or more when zfs-fuse kept an earlier prune busy)
        assert len(kept.dropped) == 1 and re.match(
            r"pve3:rpool/replica/vm-9100-disk-1 replicates a disk guest 100 no longer has; kept, "
            r"with \d+ snapshot\(s\) of this job on pve1:rpool/data/vm-100-disk-1",
            kept.dropped[0]), kept.dropped
        assert estate.run(DST, ["zfs", "list", "rpool/replica/vm-9100-disk-1"]).returncode == 0
        removed = await zfs_replica(job=job(remove_dropped_disks=True))
        assert removed.dropped[0].startswith("removed pve3:rpool/replica/vm-9100-disk-1")
        assert estate.run(DST, ["zfs", "list", "rpool/replica/vm-9100-disk-1"]).returncode != 0
        left = [s for s in zfs_snapshots(SRC, "rpool/data/vm-100-disk-1") if s.startswith(TAG)]
        if left:  # zfs-fuse kept them busy past the retries (minutes, at times): the run
            # must have said so; the next runs' retention prunes them
            assert "vm-100-disk-1 were busy and stay" in removed.dropped[0], removed.dropped
        assert sha256(SRC, "/rpool/data/vm-100-disk-1/disk.raw")  # the source disk stays
    finally:
        sh(SRC, ["sh", "-c", 'cat > "$1"', "sh", config], input=original)
    again = await zfs_replica(job=job())
    assert again.dropped == [] and again.disks[1].plan.startswith("full send")
    assert_disks_equal()
