"""Failback on the lab (X5's second half): a small VM 160 of pve1 (``onboot: 1`` and a
hookscript, which a replica leaves out) has a replica job to pve3 (VMID 9460). It is failed
over, the live copy on pve3 writes, and so does the original on pve1 (a write a node down
never sent). The failback brings the live copy's bytes home as VMID 160, keeps the original
aside with its own bytes, makes the live copy the job's replica again and resumes the job;
run again it finds each step done, and a second round of failover and failback works the same.
A container (ZFS, CT 190, its node rebuilt: gone at home) and a BTRFS VM (195 of pve2) fail
back too.
"""

from __future__ import annotations

import asyncio
import re

import pytest

from dapx.core.jobspec import ReplicaJob
from dapx.errors import ConflictError, InputError
from dapx.lab import estate
from tests.helpers import tiny_guests
from test_failover import power, status
from test_replica_helpers import harness, lab_state, sh, sha256, zfs_snapshots

pytestmark = pytest.mark.lab

SRC, DST, VMID, NEW = "pve1", "pve3", 160, 9460
JOB_NAME = "vm160-failback"
HOME_CONF = f"/etc/pve/nodes/{SRC}/qemu-server/{VMID}.conf"
LIVE_CONF = f"/etc/pve/nodes/{DST}/qemu-server/{NEW}.conf"
HOME_DISK = f"/rpool/data/vm-{VMID}-disk-0/disk.raw"
LIVE_DISK = f"/rpool/replica/vm-{NEW}-disk-0/disk.raw"
HOOK = "hookscript: local:snippets/check.pl"


def job() -> ReplicaJob:
    return ReplicaJob(source=SRC, guest=VMID, destination=DST, dest_vmid=NEW, keep=2)


def write(node: str, path: str) -> None:
    sh(node, ["dd", "if=/dev/urandom", f"of={path}", "bs=1024", "count=64", "seek=8",
              "conv=notrunc", "status=none"])


def config(node: str, path: str) -> str:
    return sh(node, ["cat", path])


def guests_on_home() -> list[int]:
    """VMIDs on pve1 from 160 to 169 (the guest, the copy beside, the original aside)."""
    listed = sh(SRC, ["ls", f"/etc/pve/nodes/{SRC}/qemu-server"])
    return [v for v in (int(n.split(".")[0]) for n in listed.split()) if 160 <= v < 170]


def clean() -> None:
    estate.run(SRC, ["sh", "-c", "rm -f /run/dapx-sim/16?.running"])
    estate.run(DST, ["rm", "-f", f"/run/dapx-sim/{NEW}.running"])
    tiny_guests.remove(SRC, sorted(set(guests_on_home()) | {VMID}))
    tiny_guests.remove_replicas(DST, [NEW])


@pytest.fixture(scope="module", autouse=True)
def prefect_lab(request: pytest.FixtureRequest):
    lab_state(request)
    clean()
    tiny_guests.make(SRC, [VMID], kib=4096)  # 4 MiB: a full copy is told from a delta
    sh(SRC, ["sh", "-c", f'printf "%s\\n" "onboot: 1" "{HOOK}" >> "$1"', "sh", HOME_CONF])
    yield from harness(request)
    from dapx.deployments.jobs import list_jobs, remove_job

    if any(j["name"] == JOB_NAME for j in list_jobs()):
        remove_job(JOB_NAME)
    clean()


async def test_failback_brings_the_live_copy_home_and_keeps_the_original() -> None:
    from dapx.deployments.jobs import create_job, list_jobs
    from dapx.flows.failback import failback
    from dapx.flows.failover import failover
    from dapx.flows.protection import protection_status
    from dapx.flows.trust import trust_nodes

    await trust_nodes(SRC, DST)
    await trust_nodes(DST, SRC)
    await asyncio.to_thread(create_job, JOB_NAME, "zfs-replica", job(), schedule="0 3 * * *",
                            replace=True)
    with pytest.raises(ConflictError, match="guest 9460 on pve3 is not a failed-over copy of "
                       "pve1/160: nothing to fail back"):
        await failback(job_name=JOB_NAME)
    await failover(job_name=JOB_NAME)  # planned: VM 160 is stopped; its first copy
    assert await status(DST, NEW) == "running"
    assert HOOK not in config(DST, LIVE_CONF)  # a replica leaves the hookscript out
    write(DST, LIVE_DISK)  # the live copy works while failed over
    write(SRC, HOME_DISK)  # and the original holds a write its node never sent
    live_bytes, stale_bytes = sha256(DST, LIVE_DISK), sha256(SRC, HOME_DISK)

    await power(SRC, VMID, "start")  # the original started again at home: refused
    try:
        with pytest.raises(ConflictError, match="guest 160 is running on pve1: starting the "
                           "failed-back copy would run two copies"):
            await failback(job_name=JOB_NAME)
    finally:
        await power(SRC, VMID, "stop")
    assert guests_on_home() == [VMID]  # nothing made beside it

    result = await failback(job_name=JOB_NAME)
    assert re.fullmatch(r".+ in .+ s; then .+ in .+ s, stopped", result.copies), result.copies
    aside = int(re.match(r"kept aside as VMID (\d+) ", result.original)[1])
    assert (result.started, result.live_copy, result.schedule) == \
        ("started", "stopped; the job's replica again", "resumed")
    assert re.fullmatch(r"[0-9.]+ (B|KiB) in .+ s", result.replica), result.replica  # a delta
    # home: the live copy's bytes, running, its config marked, onboot and hookscript back
    assert sha256(SRC, HOME_DISK) == live_bytes
    assert await status(SRC, VMID) == "running"
    home = config(SRC, HOME_CONF)
    assert home.startswith(f"#dapx-failed-back-from: {DST}/{NEW} ")
    assert "onboot: 1\n" in home and HOOK in home and "failed-over" not in home
    assert f"local-zfs:vm-{VMID}-disk-0" in home
    # the original, aside with its own bytes, never to start by itself
    stale = config(SRC, f"/etc/pve/nodes/{SRC}/qemu-server/{aside}.conf")
    assert stale.startswith(f"#dapx-stale-original-of: {SRC}/{VMID} before its failback from "
                            f"{DST}/{NEW} ")
    assert "onboot" not in stale and f"local-zfs:vm-{aside}-disk-0" in stale
    assert sha256(SRC, f"/rpool/data/vm-{aside}-disk-0/disk.raw") == stale_bytes
    assert await status(SRC, aside) == "stopped"
    assert sorted(guests_on_home()) == sorted([VMID, aside])  # no copy left beside
    # the live copy is the replica again: stopped, the job active, its run incremental
    assert await status(DST, NEW) == "stopped"
    assert config(DST, LIVE_CONF).startswith(f"#dapx-replica-of: {SRC}/{VMID}\n")
    assert not next(j for j in list_jobs() if j["name"] == JOB_NAME)["paused"]
    ours = [s for s in zfs_snapshots(DST, f"rpool/replica/vm-{NEW}-disk-0")
            if s.startswith(f"dapx_{DST}-{NEW}_")]
    assert ours and ours[-1] in zfs_snapshots(SRC, f"rpool/data/vm-{VMID}-disk-0")
    # the failback's own snapshots are gone on both sides: they would pin old blocks for ever
    assert result.scratch == "1 snapshot(s) removed on each side"
    assert not [s for s in zfs_snapshots(SRC, f"rpool/data/vm-{VMID}-disk-0")
                + zfs_snapshots(DST, f"rpool/replica/vm-{NEW}-disk-0") if s.startswith("dapx_pve1-")]
    assert sha256(DST, LIVE_DISK) == live_bytes
    rows = {r["guest"]: r for r in (await protection_status()).rows}
    assert not rows[f"{SRC}/{VMID}"]["why"].startswith("failed over")
    assert rows[f"{SRC}/{aside}"]["why"].startswith(f"original of {SRC}/{VMID} set aside by "
                                                     "its failback")
    assert f"{DST}/{NEW}" not in rows  # a replica again, not a guest of its own

    again = await failback(job_name=JOB_NAME)  # run again: every step found done
    assert again.copies.startswith("skipped: copied home already")
    assert (again.started, again.live_copy, again.schedule) == \
        ("started earlier", "the job's replica already", "active already")
    assert sha256(SRC, HOME_DISK) == live_bytes

    # a second round: the guest at home keeps its failed-back mark through the next failover
    await power(SRC, VMID, "stop")
    await failover(job_name=JOB_NAME)
    write(DST, LIVE_DISK)
    live_bytes = sha256(DST, LIVE_DISK)
    second = await failback(job_name=JOB_NAME)
    assert re.fullmatch(r".+ in .+ s; then .+ in .+ s, stopped", second.copies), second.copies
    aside2 = int(re.match(r"kept aside as VMID (\d+) ", second.original)[1])
    assert aside2 not in (aside, VMID) and sha256(SRC, HOME_DISK) == live_bytes
    home = config(SRC, HOME_CONF)
    assert home.count("#dapx-failed-back-from") == 1 and "onboot: 1\n" in home
    assert config(DST, LIVE_CONF).startswith(f"#dapx-replica-of: {SRC}/{VMID}\n")


# -- a container (ZFS) and a BTRFS guest fail back the same way ------------------------------------

STORE = "/var/lib/pve/local-btrfs"
MAKE_CT = r'''set -e
ds=rpool/data/subvol-$1-disk-0
zfs create "$ds"
head -c 4194304 /dev/urandom > "/$ds/data.bin"
printf 'arch: amd64\nhostname: ct%s\nmemory: 128\nonboot: 1\nostype: debian\nrootfs: local-zfs:subvol-%s-disk-0,size=1G\n' "$1" "$1" > "/etc/pve/nodes/pve1/lxc/$1.conf"
'''
MAKE_BTRFS = r'''set -e
d=/var/lib/pve/local-btrfs/images/$1
mkdir -p "$d"
btrfs -q subvolume create "$d/vm-$1-disk-0"
head -c 4194304 /dev/urandom > "$d/vm-$1-disk-0/disk.raw"
printf 'memory: 128\nname: tiny%s\nonboot: 1\nscsi0: local-btrfs:%s/vm-%s-disk-0.raw,size=4M\n' "$1" "$1" "$1" > "/etc/pve/nodes/pve2/qemu-server/$1.conf"
'''
CLEAN_CT = r'''for v in 190 191 192 193 194; do
  rm -f "/etc/pve/nodes/pve1/lxc/$v.conf" "/run/dapx-sim/$v.running"
  zfs destroy -r "rpool/data/subvol-$v-disk-0" 2>/dev/null
done
rm -f /etc/pve/nodes/pve3/lxc/9490.conf /run/dapx-sim/9490.running
zfs destroy -r rpool/replica/subvol-9490-disk-0 2>/dev/null; exit 0
'''
OTHERS = {  # flow, source node, guest, kind, job fields, (home, live, aside) file of the disk
    "ct-zfs": ("zfs-replica", "pve1", 190, "lxc", dict(dest_vmid=9490),
               ("/rpool/data/subvol-{v}-disk-0/data.bin",
                "/rpool/replica/subvol-9490-disk-0/data.bin")),
    "vm-btrfs": ("btrfs-replica", "pve2", 195, "qemu",
                 dict(dest_vmid=9495, dest_pool="local-btrfs"),
                 (STORE + "/images/{v}/vm-{v}-disk-0/disk.raw",
                  STORE + "/images/9495/vm-9495-disk-0/disk.raw")),
}


def _clean_other(case: str) -> None:
    flow, node, guest, kind, fields, _ = OTHERS[case]
    if flow == "zfs-replica":
        for lab_node in (node, DST):
            estate.run(lab_node, ["sh", "-c", CLEAN_CT])
        return
    dest_vmid = fields["dest_vmid"]
    for lab_node in (node, DST):
        estate.run(lab_node, ["sh", "-c", "rm -f /run/dapx-sim/19[5-9].running "
                              f"/run/dapx-sim/{dest_vmid}.running /etc/pve/nodes/*/qemu-server/"
                              f"19[5-9].conf /etc/pve/nodes/*/qemu-server/{dest_vmid}.conf"])
        listed = sh(lab_node, ["btrfs", "subvolume", "list", "-o", "-R", STORE])
        paths = sorted((f"{STORE}/{ln.split(' path ', 1)[1]}" for ln in listed.splitlines()
                        if " path " in ln), reverse=True)
        for path in paths:
            if re.search(rf"/images/(19[5-9]|{dest_vmid})/|dapx_pve3-{dest_vmid}_|"
                         rf"dapx_pve2-19[5-9]_|replica/pve[23]-(19[5-9]|{dest_vmid})\b", path):
                sh(lab_node, ["btrfs", "subvolume", "delete", path])


@pytest.mark.parametrize("case", list(OTHERS))
async def test_a_container_and_a_btrfs_guest_fail_back_too(case: str) -> None:
    from dapx.core.registration import FAILED_BACK_MARK
    from dapx.deployments.jobs import create_job, remove_job
    from dapx.flows.failback import failback
    from dapx.flows.failover import failover
    from dapx.flows.trust import trust_nodes
    from dapx.blocks import ProxmoxNode

    flow, node, guest, kind, fields, (home_file, live_file) = OTHERS[case]
    spec = ReplicaJob(source=node, guest=guest, destination=DST, keep=2, **fields)
    name = f"failback-{case}"
    _clean_other(case)
    estate.run(node, ["sh", "-c", MAKE_CT if kind == "lxc" else MAKE_BTRFS, "sh", str(guest)],
               check=True)
    api = {n: (await ProxmoxNode.aload(n)).pve_api() for n in (node, DST)}

    async def state(on: str, vmid: int) -> str:
        return (await asyncio.to_thread(api[on].guest_status, on, kind, vmid))["status"]

    await trust_nodes(node, DST)
    await trust_nodes(DST, node)
    await asyncio.to_thread(create_job, name, flow, spec, schedule="0 3 * * *", replace=True)
    try:
        await failover(job_name=name)
        write(DST, live_file)
        live_bytes = sha256(DST, live_file)
        stale_bytes = sha256(node, home_file.format(v=guest))
        if kind == "lxc":  # the node was rebuilt: the container is gone there
            estate.run(node, ["sh", "-c", CLEAN_CT])
            with pytest.raises(InputError, match="guest 190 is not on pve1 any more: name the "
                               "storage"):
                await failback(job_name=name)
            result = await failback(job_name=name, storage="local-zfs")
            assert result.original == "none: the guest was not on the node"
        else:
            result = await failback(job_name=name)
            aside = int(re.match(r"kept aside as VMID (\d+) ", result.original)[1])
            assert sha256(node, home_file.format(v=aside)) == stale_bytes
            assert await state(node, aside) == "stopped"
        assert sha256(node, home_file.format(v=guest)) == live_bytes
        assert (await state(node, guest), await state(DST, spec.target_vmid)) == \
            ("running", "stopped")
        sub = "lxc" if kind == "lxc" else "qemu-server"
        home = sh(node, ["cat", f"/etc/pve/nodes/{node}/{sub}/{guest}.conf"])
        assert home.startswith(f"{FAILED_BACK_MARK}{DST}/{spec.target_vmid} ")
        assert ("onboot: 1" in home) == (kind != "lxc")  # nothing to take it from when gone
        assert result.schedule == "resumed"
        if flow == "zfs-replica":
            assert re.fullmatch(r"[0-9.]+ (B|KiB) in .+ s", result.replica), result.replica
        else:  # the job's replica is sent whole once
            assert result.replica.endswith(" (whole: BTRFS)"), result.replica
            assert sha256(DST, live_file) == live_bytes
            left = sh(node, ["btrfs", "subvolume", "list", "-o", "-R", STORE]) + sh(
                DST, ["btrfs", "subvolume", "list", "-o", "-R", STORE])
            assert f"replica/{DST}-9495/" not in left and "@dapx_pve2-" not in left, left
            assert result.scratch.endswith(" beside the replica") and not \
                result.scratch.startswith("0 "), result.scratch
    finally:
        await asyncio.to_thread(remove_job, name)
        _clean_other(case)
