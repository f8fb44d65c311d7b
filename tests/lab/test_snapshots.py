"""Snapshots end to end on the lab (S1-S4): VM 100 on pve1 (two ZFS disks), its replica on pve3.

In file order, like an administrator's afternoon: Proxmox snapshots through the PVE API; a
sanoid policy written into pve1's sanoid.conf, then real sanoid taking and pruning
``autosnap_*`` snapshots; a rollback those snapshots block; broken configs that never
replace the file; the one view of every snapshot after a replica run; retention with a tight
policy; the policy switched off. Each test asserts what the administrator would see: the
file's bytes, ``zfs list``, the PVE API, checksums on both sides.

sanoid decides by the clock (an hourly snapshot is due once an hour; one is pruned when it is
older than its count of hours). To see hours pass in seconds, sanoid runs with its clock
shifted (``sanoid_at``: Perl's ``time``/``localtime`` overridden for that process only);
ZFS, its creation times and every command sanoid runs stay real.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from dapx.core.jobspec import ReplicaJob
from dapx.core.sanoidconf import BEGIN_MARK, CONF_PATH, SanoidPolicy
from dapx.errors import ConflictError, InputError
from dapx.lab import estate
from test_replica_helpers import (harness, lab_state, latest_artifact, preserved, sh, sha256,
                                  zfs_snapshots)

pytestmark = pytest.mark.lab

SRC, DST, VMID, NEW = "pve1", "pve3", 100, 9300
DISKS = {f"rpool/data/vm-100-disk-{i}": f"rpool/replica/vm-9300-disk-{i}" for i in (0, 1)}
JOB_NAME = "vm100-to-pve3-snapshots"
TAG = "dapx_pve3-9300_"
ADMIN_CONF = ("# site policy, kept by hand\n[template_site]\n\thourly = 1\n\tautosnap = no\n\n"
              "[rpool/data/subvol-101-disk-0]\n  use_template = site   \n\tautoprune = no\n")
SANOID_AT = r'''BEGIN { our $shift = shift @ARGV;
  *CORE::GLOBAL::time = sub () { CORE::time() + $shift };
  *CORE::GLOBAL::localtime = sub (;$) { CORE::localtime(@_ ? $_[0] : CORE::time() + $shift) }; }
do "/usr/sbin/sanoid"; die $@ if $@;'''


def sanoid_at(hours: int, *args: str) -> str:
    """``sanoid ARGS`` (default ``--cron``) on pve1 as if ``hours`` (and a minute, since ZFS
    creation times have whole seconds) had passed."""
    shift = hours * 3600 + (60 if hours else 0)
    time.sleep(1.1)  # distinct creation seconds: sanoid orders snapshots by creation time
    return sh(SRC, ["perl", "-e", SANOID_AT, "--", str(shift), *(args or ["--cron"]),
                    "--verbose"])


def job(**changes) -> ReplicaJob:
    base = dict(source=SRC, guest=VMID, destination=DST, dest_vmid=NEW, keep=2)
    return ReplicaJob(**(base | changes))


def conf_bytes() -> bytes:
    return estate.run(SRC, ["cat", CONF_PATH], text=False).stdout


def ours(node: str, dataset: str, prefix: str) -> list[str]:
    return [s for s in zfs_snapshots(node, dataset) if s.startswith(prefix)]


def clean_lab() -> None:
    """Undo what this module changes: sanoid files, our and sanoid's snapshots, the replica,
    Proxmox snapshots of VM 100."""
    estate.run(SRC, ["rm", "-f", CONF_PATH, CONF_PATH + ".dapx-previous",
                     "/var/cache/sanoid/snapshots.txt"])
    for src, dst in DISKS.items():
        estate.run(DST, ["zfs", "destroy", "-r", dst])
        for snap in zfs_snapshots(SRC, src):
            if snap.startswith((TAG, "autosnap_", "syncoid_", "manual-")):
                estate.run(SRC, ["zfs", "destroy", f"{src}@{snap}"])
    for snap in ("before-upgrade", "view-test"):
        estate.run(SRC, ["qm", "delsnapshot", str(VMID), snap])
    estate.run(DST, ["rm", "-f", f"/etc/pve/nodes/{DST}/qemu-server/{NEW}.conf"])


async def remove_job() -> None:
    from dapx.deployments.jobs import list_jobs, remove_job as remove

    if any(j["name"] == JOB_NAME for j in await asyncio.to_thread(list_jobs)):
        await asyncio.to_thread(remove, JOB_NAME)


@pytest.fixture(scope="module", autouse=True)
def prefect_lab(request: pytest.FixtureRequest):
    lab_state(request)
    clean_lab()
    with preserved(SRC, list(DISKS)):  # the seeded bytes come back at the end
        yield from harness(request)
        asyncio.run(remove_job())
        clean_lab()


async def test_bad_input_is_refused_before_anything_runs() -> None:
    from dapx.flows.guest_snapshot import guest_snapshot
    from dapx.flows.snapshot_policy import snapshot_policy
    from dapx.flows.snapshot_retention import snapshot_retention
    from dapx.flows.snapshot_view import snapshot_view

    with pytest.raises(InputError, match="invalid for Proxmox"):
        await guest_snapshot(SRC, VMID, "create", name="1-bad")
    with pytest.raises(InputError, match="needs a snapshot name"):
        await guest_snapshot(SRC, VMID, "rollback")
    with pytest.raises(InputError, match="guest 555 is not on node pve1"):
        await snapshot_policy(SRC, 555, SanoidPolicy())
    with pytest.raises(InputError, match="no ZFS disk"):
        await snapshot_policy("pve2", 200, SanoidPolicy())
    with pytest.raises(InputError, match="guest 555 is on none of"):
        await snapshot_view(SRC, 555)
    with pytest.raises(InputError, match="unknown replica job"):
        await snapshot_retention(jobs=["nope"])
    with pytest.raises(InputError, match="unknown node 'nowhere'"):
        await snapshot_policy("nowhere", VMID, SanoidPolicy())
    assert estate.run(SRC, ["test", "-e", CONF_PATH]).returncode != 0


async def test_proxmox_snapshot_create_list_rollback() -> None:
    from dapx.blocks.node import ProxmoxNode
    from dapx.flows.guest_snapshot import guest_snapshot

    disk = "/rpool/data/vm-100-disk-0/disk.raw"
    original = sha256(SRC, disk)
    made = await guest_snapshot(SRC, VMID, "create", name="before-upgrade",
                                description="dapx lab test")
    assert made.done == "created before-upgrade"
    api = (await ProxmoxNode.aload(SRC)).api()
    assert "before-upgrade" in [s["name"] for s in api.snapshots(SRC, "qemu", VMID)]
    for dataset in DISKS:
        assert "before-upgrade" in zfs_snapshots(SRC, dataset)
    listed = await guest_snapshot(SRC, VMID)
    assert [s.name for s in listed.snapshots] == ["before-upgrade"]
    with pytest.raises(ConflictError, match="already has a snapshot 'before-upgrade'"):
        await guest_snapshot(SRC, VMID, "create", name="before-upgrade")

    sh(SRC, ["dd", "if=/dev/urandom", f"of={disk}", "bs=1M", "count=1", "conv=notrunc",
             "status=none"])
    assert sha256(SRC, disk) != original
    rolled = await guest_snapshot(SRC, VMID, "rollback", name="before-upgrade")
    assert rolled.done == "rolled back to before-upgrade"
    assert sha256(SRC, disk) == original
    assert api.guest_config(SRC, "qemu", VMID)["parent"] == "before-upgrade"
    assert await latest_artifact("guest-snapshots-pve1-100") is not None


async def test_policy_writes_sanoid_conf_and_sanoid_takes_and_prunes() -> None:
    from dapx.flows.snapshot_policy import snapshot_policy

    sh(SRC, ["sh", "-c", 'cat > "$1"', "sh", CONF_PATH], input=ADMIN_CONF)
    plan = await snapshot_policy(SRC, VMID, SanoidPolicy(template="minimal", hourly=2, daily=0),
                                 dry_run=True)
    assert plan.changed and "+[rpool/data/vm-100-disk-1]" in plan.diff
    assert conf_bytes() == ADMIN_CONF.encode()  # a plan writes nothing

    result = await snapshot_policy(SRC, VMID, SanoidPolicy(template="minimal", hourly=2,
                                                           daily=0))
    assert result.changed and result.datasets == list(DISKS)
    written = conf_bytes().decode()
    assert written.startswith(ADMIN_CONF)  # the administrator's part, byte for byte
    assert "[rpool/data/vm-100-disk-0]\n\t# guest 100\n\tuse_template = dapx_minimal\n" \
           "\thourly = 2\n\tdaily = 0" in written
    assert sh(SRC, ["cat", CONF_PATH + ".dapx-previous"]) == ADMIN_CONF

    sanoid_at(0)
    first = {d: ours(SRC, d, "autosnap_") for d in DISKS}
    assert all(len(s) == 1 and s[0].endswith("_hourly") for s in first.values())
    sanoid_at(1)
    sanoid_at(2)  # a third hourly: sanoid prunes from the list it read before taking it,
    sanoid_at(2, "--prune-snapshots")  # so prune again, as Debian's sanoid-prune.service does
    for dataset in DISKS:
        hourly = ours(SRC, dataset, "autosnap_")
        assert len(hourly) == 2 and first[dataset][0] not in hourly, hourly
    assert ours(SRC, "rpool/data/subvol-101-disk-0", "autosnap_") == []  # admin's: autosnap=no
    assert conf_bytes().decode() == written


async def test_rollback_blocked_by_newer_snapshots_is_refused_naming_them() -> None:
    from dapx.flows.guest_snapshot import guest_snapshot

    disk = "/rpool/data/vm-100-disk-1/disk.raw"
    sh(SRC, ["dd", "if=/dev/urandom", f"of={disk}", "bs=64K", "count=1", "conv=notrunc",
             "status=none"])
    changed = sha256(SRC, disk)
    with pytest.raises(ConflictError) as refused:
        await guest_snapshot(SRC, VMID, "rollback", name="before-upgrade")
    message = str(refused.value)
    for dataset in DISKS:
        for name in ours(SRC, dataset, "autosnap_"):
            assert f"{name} (sanoid)" in message
    assert "rpool/data/vm-100-disk-0:" in message and "rpool/data/vm-100-disk-1:" in message
    assert sha256(SRC, disk) == changed  # nothing was rolled back, on any disk
    deleted = await guest_snapshot(SRC, VMID, "delete", name="before-upgrade")
    assert deleted.snapshots == [] and all("before-upgrade" not in zfs_snapshots(SRC, d)
                                           for d in DISKS)


async def test_a_broken_config_never_replaces_the_file() -> None:
    from dapx.flows.snapshot_policy import snapshot_policy

    good = conf_bytes()
    malformed = good + b"\n[rpool/other]\nhourly 3\n"
    sh(SRC, ["sh", "-c", 'cat > "$1"', "sh", CONF_PATH], input=malformed.decode())
    with pytest.raises(InputError, match=r"sanoid.conf line \d+ is malformed"):
        await snapshot_policy(SRC, VMID, SanoidPolicy(template="vm"))
    assert conf_bytes() == malformed

    unknown = good.replace(b"\tautoprune = no\n", b"\tautoprune = no\n\tcolour = blue\n")
    sh(SRC, ["sh", "-c", 'cat > "$1"', "sh", CONF_PATH], input=unknown.decode())
    with pytest.raises(InputError, match="sanoid on pve1 refuses.*colour.*nothing was written"):
        await snapshot_policy(SRC, VMID, SanoidPolicy(template="vm"))
    assert conf_bytes() == unknown
    assert sh(SRC, ["sh", "-c", "ls /etc/sanoid/ | grep dapx-new; ls -d /tmp/dapx-sanoid.* "
                         "2>/dev/null; true"]) == ""  # no half-written file, no temp dir left
    sh(SRC, ["sh", "-c", 'cat > "$1"', "sh", CONF_PATH], input=good.decode())


async def _replica_job() -> None:
    from dapx.deployments.jobs import create_job  # makes the dapx work pool when missing

    await asyncio.to_thread(create_job, JOB_NAME, "zfs-replica", job(), paused=True,
                            replace=True)


async def test_view_after_a_replica_run_shows_groups_and_what_pve3_holds() -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    from dapx.flows.guest_snapshot import guest_snapshot
    from dapx.flows.replica import zfs_replica
    from dapx.flows.snapshot_view import snapshot_view
    from dapx.flows.trust import trust_nodes

    await _replica_job()
    await trust_nodes(SRC, DST)
    await guest_snapshot(SRC, VMID, "create", name="view-test")
    for dataset in DISKS:
        sh(SRC, ["zfs", "snapshot", f"{dataset}@syncoid_elsewhere_2026-01-01:00:00:00"])
    first = await zfs_replica(job=job())
    second = await zfs_replica(job=job())
    for dataset in DISKS:
        sh(SRC, ["zfs", "snapshot", f"{dataset}@manual-after"])

    view = await snapshot_view(SRC, VMID)
    guest = view.guests[0]
    groups = {s.name: s.group for s in guest.snapshots}
    assert groups["view-test"] == "proxmox"
    assert groups[first.snapshot] == groups[second.snapshot] == "replication"
    assert groups["syncoid_elsewhere_2026-01-01:00:00:00"] == "syncoid"
    assert groups["manual-after"] == "other"
    assert any(g == "sanoid" for g in groups.values())
    held = {s.name: s.held_by for s in guest.snapshots}
    assert held[first.snapshot] == held[second.snapshot] == [DST]
    assert held["manual-after"] == []
    ours = {"view-test", "syncoid_elsewhere_2026-01-01:00:00:00", "manual-after",
            first.snapshot, second.snapshot}
    for entry in guest.snapshots:
        if entry.name not in ours:
            continue  # another test's (zfs-fuse may keep one disk's copy busy past its cleanup)
        assert entry.disks == ["scsi0", "scsi1"] and entry.creation > 0, entry.name
        assert entry.used is not None and entry.referenced is not None
    assert [(r.job, r.common) for r in guest.replicas] == [(JOB_NAME, second.snapshot)]
    everywhere = await snapshot_view(guest=VMID, all_nodes=True)
    assert [g.node for g in everywhere.guests] == [SRC]
    assert set(everywhere.nodes) == {"pve1", "pve2", "pve3"}
    table = await latest_artifact("snapshots-pve1-100")
    assert table is not None and first.snapshot in str(table.data)

    async with get_client() as client:  # one listing command per node: pve1 and pve3
        runs = await client.read_task_runs(flow_run_filter=FlowRunFilter(
            id=FlowRunFilterId(any_=[table.flow_run_id])))
    assert sorted(r.name.rsplit("-", 1)[0] for r in runs
                  if r.name.startswith("list-node-snapshots")) == ["list-node-snapshots"] * 2


async def test_tight_retention_keeps_the_newest_common_and_replication_goes_on() -> None:
    from dapx.deployments.jobs import create_job
    from dapx.flows.replica import zfs_replica
    from dapx.flows.snapshot_retention import snapshot_retention

    await asyncio.to_thread(create_job, JOB_NAME, "zfs-replica", job(keep=1), paused=True,
                            replace=True)
    before_src = {d: ours(SRC, d, TAG) for d in DISKS}
    common = before_src["rpool/data/vm-100-disk-0"][-1]
    # A run whose transfer died leaves a newer snapshot on the source only.
    for dataset in DISKS:
        sh(SRC, ["zfs", "snapshot", f"{dataset}@{TAG}29990101T000000Z"])
    others = {d: [s for s in zfs_snapshots(SRC, d) if not s.startswith(TAG)] for d in DISKS}

    plan = await snapshot_retention(dry_run=True, jobs=[JOB_NAME])
    assert {d: ours(SRC, d, TAG) for d in DISKS} == {
        d: before_src[d] + [f"{TAG}29990101T000000Z"] for d in DISKS}
    assert plan.removed == 4 and "would remove" in str(plan)
    assert all("older than the newest 1" in s.reasons[n] for s in plan.sides for n in s.removed)

    result = await snapshot_retention(jobs=[JOB_NAME])
    assert result.removed == 4
    for src, dst in DISKS.items():
        assert ours(SRC, src, TAG) == [common, f"{TAG}29990101T000000Z"]
        assert ours(DST, dst, TAG) == [common]
        assert [s for s in zfs_snapshots(SRC, src) if not s.startswith(TAG)] == others[src]

    again = await zfs_replica(job=job(keep=1))
    assert all(d.plan.startswith("incremental") and common in d.plan for d in again.disks)
    for src, dst in DISKS.items():
        assert sha256(SRC, f"/{src}/disk.raw") == sha256(DST, f"/{dst}/disk.raw")


async def test_policy_off_leaves_only_the_administrators_part() -> None:
    from dapx.flows.snapshot_policy import snapshot_policy

    result = await snapshot_policy(SRC, VMID, SanoidPolicy(enabled=False))
    assert result.changed and result.datasets == []
    text = conf_bytes().decode()
    assert BEGIN_MARK not in text and text.startswith(ADMIN_CONF)
