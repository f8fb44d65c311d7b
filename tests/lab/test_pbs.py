"""PBS backups, restores and replicas through PBS on the lab (B1, B2, R5).

In file order, like an estate's life: bad input refused; VM 100 (ZFS), CT 101 and VM 200
(asked of pve1, held by pve2) backed up to pbs1 with the bytes of their disks; a failing vzdump
failing its guest while VM 300 (dir storage, pve3) is backed up with PVE's warning; retention
leaving exactly what the policy keeps and the protected backup; VM 300 restored on pve1 as 9300
with the same bytes, storage and mapped bridge (CT 101 as 9101); a restore over it refused
without force, done with force, and a forced restore from an unreadable backup leaving the old
guest intact; a recovery job pve3 -> pve1 run twice replacing its first copy. Each test asserts
what a user would see: checksums on both sides, PBS's listing, the config PVE's API shows.
"""

from __future__ import annotations

import json
import time

import pytest
from pydantic import ValidationError

from dapx.core.backups import pbs_time
from dapx.core.jobspec import BackupJob, RecoveryJob, RestoreRequest
from dapx.errors import ConflictError, InputError, PermanentError, TaskFailed
from dapx.lab import estate
from test_replica_helpers import harness, lab_state, latest_artifact, sh, sha256

pytestmark = pytest.mark.lab

STORE = "/datastore/store1"
DIR_DISK = "/var/lib/vz/images/{vmid}/vm-{vmid}-disk-0.raw"
BROKEN = 390
"""A VM the tests make on pve3 and take the disk from, so its vzdump fails."""


def job(**changes) -> BackupJob:
    return BackupJob(**({"node": "pve1", "storage": "pbs", "retention": {"keep_last": 3}}
                        | changes))


def restore_request(**changes) -> RestoreRequest:
    base = {"storage": "pbs", "backup": "vm/300/latest", "destination": "pve1",
            "dest_vmid": 9300, "dest_storage": "local", "bridge_map": "vmbr1=vmbr0"}
    return RestoreRequest(**(base | changes))


def pbs_backups(btype: str, vmid: int) -> list[str]:
    """The finished backups of one guest in pbs1's datastore (time directories, oldest first)."""
    out = estate.run("pbs1", ["sh", "-c", 'for d in "$1"/*/index.json.blob; do [ -e "$d" ] && '
                              'basename "$(dirname "$d")"; done', "sh",
                              f"{STORE}/{btype}/{vmid}"]).stdout
    return sorted(out.split())


def qm(node: str, *argv: str) -> str:
    """``qm`` on a lab node, as an administrator types it."""
    return sh(node, ["qm", *argv])


def confs(node: str) -> set[str]:
    out = sh(node, ["ls", f"/etc/pve/nodes/{node}/qemu-server", f"/etc/pve/nodes/{node}/lxc"])
    return {line for line in out.split() if line.endswith(".conf")}


def no_temporary_guests(node: str) -> bool:
    """No guest, config or image directory in the restore-beside VMID range is left."""
    images = sh(node, ["ls", "/var/lib/vz/images"]).split()
    return not [c for c in confs(node) if c.startswith("999")] and \
        not [d for d in images if d.startswith("999")]


async def guest_config(node: str, kind: str, vmid: int) -> dict:
    """The guest's config as PVE's API shows it."""
    from dapx.blocks.manage import aload_nodes

    return (await aload_nodes(node))[0].api().guest_config(node, kind, vmid)


def cleanup() -> None:
    """Undo what this module changes: restored guests, the broken VM, VM 300's config."""
    for node, kind, vmid in (("pve1", "qemu", 9300), ("pve1", "qemu", 9301),
                             ("pve1", "lxc", 9101), ("pve3", "qemu", BROKEN)):
        tool = "qm" if kind == "qemu" else "pct"
        if f"{vmid}.conf" in confs(node):
            estate.run(node, [tool, "stop", str(vmid)])
            estate.run(node, [tool, "destroy", str(vmid)])
    estate.run("pve3", ["qm", "set", "300", "--net0",
                        "virtio=BC:24:11:5A:11:2C,bridge=vmbr0,firewall=1", "--delete", "bios"])
    estate.run("pbs1", ["sh", "-c", 'for f in "$1"/*/*.moved; do [ -e "$f" ] && '
                        'mv "$f" "${f%.moved}"; done', "sh", f"{STORE}/vm/300"])


@pytest.fixture(scope="module", autouse=True)
def prefect_lab(request: pytest.FixtureRequest):
    lab_state(request)
    cleanup()
    # VM 300 uses pve3's second bridge, which pve1 lacks: restores there must map it
    qm("pve3", "set", "300", "--net0", "virtio=BC:24:11:5A:11:2C,bridge=vmbr1,firewall=1")
    yield from harness(request)
    cleanup()


# -----------------------------------------------------------------------------------------------
# Bad input


async def test_bad_input_refused_before_anything_runs() -> None:
    from dapx.blocks.manage import afind_pbs_node
    from dapx.flows.backup import pbs_backup
    from dapx.flows.restore import pbs_restore

    before = pbs_backups("vm", 100), confs("pve1")
    with pytest.raises(ValidationError, match="no keep count"):
        job(retention={})
    with pytest.raises(ValidationError, match="keep -1|-1"):
        job(retention={"keep_last": -1})
    with pytest.raises(InputError, match="storage 'nopbs' does not exist"):
        await pbs_backup(job(storage="nopbs", guests=[100]))
    with pytest.raises(InputError, match="type dir, not a Proxmox Backup Server"):
        await pbs_backup(job(storage="local", guests=[100]))
    with pytest.raises(InputError, match="555 are on no node"):
        await pbs_backup(job(guests=[100, 555]))
    with pytest.raises(InputError, match="unknown node 'nowhere'"):
        await pbs_backup(job(node="nowhere"))
    with pytest.raises(InputError, match="pve node, not a Proxmox Backup Server"):
        await pbs_backup(job(guests=[100], pbs_node="pve1"))
    with pytest.raises(InputError, match="no PBS node block has host '198.18.213.99'"):
        await afind_pbs_node("198.18.213.99")
    with pytest.raises(InputError, match="vm/100/2001-01-01T00:00:00Z does not exist"):
        await pbs_restore(restore_request(backup="vm/100/2001-01-01T00:00:00Z"))
    with pytest.raises(InputError, match="has no storage 'nosuch'"):
        await pbs_restore(restore_request(dest_storage="nosuch"))
    assert (pbs_backups("vm", 100), confs("pve1")) == before


# -----------------------------------------------------------------------------------------------
# Backups


async def test_backups_hold_the_bytes_of_the_disks() -> None:
    """VM 100 (two ZFS disks) and CT 101 on pve1, and VM 200: asked of pve1, it lives on pve2
    and is backed up there (PVE would back up nothing if asked on the wrong node)."""
    from dapx.flows.backup import pbs_backup

    plan = await pbs_backup(job(guests=[100, 101, 200]), dry_run=True)
    assert [g.node for g in plan.guests] == ["pve1", "pve1", "pve2"] and not plan.guests[0].volid
    result = await pbs_backup(job(guests=[100, 101, 200]))
    by_guest = {g.guest: g for g in result.guests}
    assert by_guest[200].node == "pve2" and not result.failures
    for vmid, node, disks in ((100, "pve1", {"scsi0": "/rpool/data/vm-100-disk-0/disk.raw",
                                              "scsi1": "/rpool/data/vm-100-disk-1/disk.raw"}),
                              (200, "pve2", {"scsi0": "/var/lib/pve/local-btrfs/images/200/"
                                                      "vm-200-disk-0/disk.raw"})):
        when = pbs_time(by_guest[vmid].backup_time)
        assert when in pbs_backups("vm", vmid)
        assert by_guest[vmid].volid == f"pbs:backup/vm/{vmid}/{when}"
        for key, path in disks.items():
            stored = f"{STORE}/vm/{vmid}/{when}/drive-{key}.img.fidx"
            assert sha256("pbs1", stored) == sha256(node, path), (vmid, key)
    ct = by_guest[101]
    archive = f"{STORE}/ct/101/{pbs_time(ct.backup_time)}/root.pxar.didx"
    inside = sh("pbs1", ["sh", "-c", 'tar -xOf "$1" ./root/data.bin | sha256sum', "sh", archive])
    assert inside.split()[0] == sha256("pve1", "/rpool/data/subvol-101-disk-0/root/data.bin")
    assert by_guest[100].bytes > 64 * 1024 * 1024 and ct.bytes > 8 * 1024 * 1024
    table = await latest_artifact("backup-result-pve1-pbs")
    rows = json.loads(table.data) if isinstance(table.data, str) else table.data
    assert [r["volume id"] for r in rows] == [by_guest[v].volid for v in (100, 101, 200)]


async def test_failing_vzdump_fails_its_guest_and_the_others_are_backed_up() -> None:
    """VM 390 lost its disk: its vzdump fails with PVE's message; VM 300 (bios ovmf without an
    EFI disk, as PVE warns) is backed up with the warning; the run fails naming 390 only."""
    from dapx.flows.backup import pbs_backup

    qm("pve3", "create", str(BROKEN), "--name", "broken", "--memory", "256",
       "--scsi0", "local:0.001")
    sh("pve3", ["rm", DIR_DISK.format(vmid=BROKEN)])
    qm("pve3", "set", "300", "--bios", "ovmf")
    before = pbs_backups("vm", 300)
    with pytest.raises(PermanentError) as failed:
        await pbs_backup(job(node="pve3", guests=[BROKEN, 300]))
    message = str(failed.value)
    assert "1 of 2 guest(s)" in message and f"{BROKEN}: backup of guest {BROKEN}" in message
    assert "No such file" in message and "300:" not in message
    assert len(pbs_backups("vm", 300)) == len(before) + 1
    assert pbs_backups("vm", BROKEN) == []
    table = await latest_artifact("backup-result-pve3-pbs")
    rows = {r["guest"]: r for r in (json.loads(table.data) if isinstance(table.data, str)
                                    else table.data)}
    assert "no efidisk configured" in rows[300]["warnings"] and rows[300]["error"] == "-"
    assert "No such file" in rows[BROKEN]["error"]
    qm("pve3", "set", "300", "--delete", "bios")


async def test_retention_keeps_exactly_the_policy_and_never_a_protected_backup() -> None:
    """Older backups of VM 300 are put in place (copies, as if made on earlier days); one of
    them protected. keep-last 1 + keep-daily 2 keeps: the new one (last), the newest of
    yesterday and of the day before (daily), and the protected one - nothing else."""
    from dapx.flows.backup import pbs_backup

    today = int(time.time()) // 86400 * 86400
    newest = pbs_backups("vm", 300)[-1]
    times = {"yesterday-1": today - 86400 + 3600, "yesterday-2": today - 86400 + 7200,
             "two-days": today - 2 * 86400 + 3600, "three-days": today - 3 * 86400 + 3600,
             "ten-days": today - 10 * 86400}
    for when in times.values():
        copy_backup("vm", 300, newest, when)
    await protect("vm", 300, times["three-days"])
    dry = await pbs_backup(job(node="pve3", guests=[300],
                               retention={"keep_last": 1, "keep_daily": 2}), dry_run=True)
    result = await pbs_backup(job(node="pve3", guests=[300],
                                  retention={"keep_last": 1, "keep_daily": 2}))
    new = pbs_time(result.guests[0].backup_time)
    kept = {new, pbs_time(times["yesterday-2"]), pbs_time(times["two-days"]),
            pbs_time(times["three-days"])}
    assert set(pbs_backups("vm", 300)) == kept
    assert estate.run("pbs1", ["test", "-e", f"{STORE}/vm/300/{pbs_time(times['three-days'])}"
                               "/.protected"]).returncode == 0
    pruned = set(result.guests[0].pruned)
    assert {pbs_time(times["yesterday-1"]), pbs_time(times["ten-days"])} <= pruned
    assert pruned.isdisjoint(kept)
    assert set(dry.guests[0].pruned) == pruned  # the plan said what the run then did


def copy_backup(btype: str, vmid: int, source: str, when: int) -> None:
    """A copy of backup ``source`` as if it had been made at ``when`` (its manifest too)."""
    base = f"{STORE}/{btype}/{vmid}"
    target = f"{base}/{pbs_time(when)}"
    sh("pbs1", ["cp", "-a", f"{base}/{source}", target])
    sh("pbs1", ["python3", "-c", "import json,sys; p=sys.argv[1]+'/index.json.blob'; "
                "m=json.load(open(p)); m['backup-time']=int(sys.argv[2]); "
                "json.dump(m, open(p, 'w'))", target, str(when)])


async def protect(btype: str, vmid: int, when: int) -> None:
    """Protect one backup through the PBS API, as an administrator would."""
    from dapx.blocks.manage import aload_nodes

    (await aload_nodes("pbs1"))[0].api().put("admin", "datastore", "store1", "protected",
                                **{"backup-type": btype, "backup-id": str(vmid),
                                   "backup-time": when, "protected": 1})


# -----------------------------------------------------------------------------------------------
# Restores


async def test_restore_vm300_on_pve1_with_the_same_bytes_and_mapped_bridge() -> None:
    from dapx.flows.restore import pbs_backup_list, pbs_restore

    listed = await pbs_backup_list("pve1", "pbs", 300)
    assert [b.time for b in listed.backups] == sorted((b.time for b in listed.backups),
                                                      reverse=True)
    with pytest.raises(InputError, match="net0 uses vmbr1"):
        await pbs_restore(restore_request(bridge_map={}))
    assert "9300.conf" not in confs("pve1")
    result = await pbs_restore(restore_request())
    assert result.backup == listed.backups[0].volid and result.bytes == listed.backups[0].size
    assert result.bridges["net0"].startswith("virtio=BC:24:11:5A:11:2C,bridge=vmbr0")
    config = await guest_config("pve1", "qemu", 9300)
    assert config["scsi0"].startswith("local:9300/vm-9300-disk-0.raw,")
    assert "bridge=vmbr0" in config["net0"]
    assert sha256("pve1", DIR_DISK.format(vmid=9300)) == sha256("pve3",
                                                                 DIR_DISK.format(vmid=300))


async def test_restore_container_on_zfs() -> None:
    from dapx.flows.restore import pbs_restore

    with pytest.raises(InputError, match="does not hold rootdir"):
        await pbs_restore(restore_request(backup="ct/101/latest", dest_vmid=9101))
    await pbs_restore(restore_request(backup="ct/101/latest", dest_vmid=9101,
                                      dest_storage="local-zfs", bridge_map={}))
    config = await guest_config("pve1", "lxc", 9101)
    assert config["rootfs"].startswith("local-zfs:subvol-9101-disk-0")
    assert sha256("pve1", "/rpool/data/subvol-9101-disk-0/root/data.bin") == \
        sha256("pve1", "/rpool/data/subvol-101-disk-0/root/data.bin")


async def test_restore_over_a_guest_needs_force_and_then_replaces_it() -> None:
    from dapx.flows.restore import pbs_restore

    sh("pve1", ["dd", "if=/dev/urandom", f"of={DIR_DISK.format(vmid=9300)}", "bs=1M",
                "count=1", "conv=notrunc", "status=none"])
    changed = sha256("pve1", DIR_DISK.format(vmid=9300))
    digest = (await guest_config("pve1", "qemu", 9300))["digest"]
    with pytest.raises(ConflictError, match="VMID 9300 is qemu guest 'app01' on pve1.*force"):
        await pbs_restore(restore_request())
    assert (await guest_config("pve1", "qemu", 9300))["digest"] == digest
    assert sha256("pve1", DIR_DISK.format(vmid=9300)) == changed
    result = await pbs_restore(restore_request(), force=True)
    assert result.replaced == "qemu app01" and not result.leftover
    assert sha256("pve1", DIR_DISK.format(vmid=9300)) == sha256("pve3",
                                                                 DIR_DISK.format(vmid=300))
    assert "bridge=vmbr0" in (await guest_config("pve1", "qemu", 9300))["net0"]
    assert no_temporary_guests("pve1")


async def test_forced_restore_that_fails_leaves_the_old_guest() -> None:
    from dapx.flows.restore import pbs_restore

    sh("pve1", ["dd", "if=/dev/urandom", f"of={DIR_DISK.format(vmid=9300)}", "bs=1M",
                "count=1", "conv=notrunc", "status=none"])
    old = sha256("pve1", DIR_DISK.format(vmid=9300))
    digest = (await guest_config("pve1", "qemu", 9300))["digest"]
    newest = pbs_backups("vm", 300)[-1]
    image = f"{STORE}/vm/300/{newest}/drive-scsi0.img.fidx"
    sh("pbs1", ["mv", image, image + ".moved"])  # the backup cannot be read any more
    try:
        with pytest.raises(TaskFailed, match="restore of pbs:backup/vm/300/.* failed"):
            await pbs_restore(restore_request(), force=True)
    finally:
        sh("pbs1", ["mv", image + ".moved", image])
    assert (await guest_config("pve1", "qemu", 9300))["digest"] == digest
    assert sha256("pve1", DIR_DISK.format(vmid=9300)) == old
    assert no_temporary_guests("pve1")


# -----------------------------------------------------------------------------------------------
# Replica through PBS


async def test_recovery_job_run_twice_replaces_its_first_copy() -> None:
    from dapx.flows.recovery import pbs_recovery

    job = RecoveryJob(source="pve3", guest=300, destination="pve1", dest_vmid=9301,
                      storage="pbs", dest_storage="local", bridge_map="vmbr1=vmbr0")
    first = await pbs_recovery(job.model_copy(update={"start": True}))
    assert first.restore is not None and not first.restore.replaced and first.restore.started
    assert qm("pve1", "status", "9301").strip() == "status: running"
    assert sha256("pve1", DIR_DISK.format(vmid=9301)) == sha256("pve3",
                                                                 DIR_DISK.format(vmid=300))
    sh("pve3", ["dd", "if=/dev/urandom", f"of={DIR_DISK.format(vmid=300)}", "bs=1M", "count=1",
                "seek=3", "conv=notrunc", "status=none"])
    time.sleep(1.0)  # backup times are whole seconds
    second = await pbs_recovery(job)
    assert second.recovery_point > first.recovery_point and second.bytes > 32 * 1024 * 1024
    assert second.restore is not None and second.restore.replaced == "qemu app01"
    assert qm("pve1", "status", "9301").strip() == "status: stopped"  # ours: stopped, replaced
    assert sha256("pve1", DIR_DISK.format(vmid=9301)) == sha256("pve3",
                                                                 DIR_DISK.format(vmid=300))
    config = await guest_config("pve1", "qemu", 9301)
    assert config["description"].startswith("dapx-replica-of: pve3/300")
    assert "bridge=vmbr0" in config["net0"] and no_temporary_guests("pve1")
    with pytest.raises(ConflictError, match="VMID 9300 .*force"):  # not this job's copy
        await pbs_recovery(job.model_copy(update={"dest_vmid": 9300}))
