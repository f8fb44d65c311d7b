"""Pure parts of the replication flows: disk mapping, planning, parsers, argv quoting."""

from __future__ import annotations

import shlex
import subprocess

import pytest

from dapx.core.jobspec import ReplicaJob
from dapx.core.snapshots import Snapshot
from dapx.core.storagecfg import parse_storage_cfg
from dapx.errors import ConflictError, InputError
from dapx.flows import btrfs_replica, register, replica, trust
from dapx.tasks import btrfs, guests, locks, syncoid, zfs

STORAGE_CFG = """dir: local
\tpath /var/lib/vz
\tcontent iso,vztmpl,backup,images

zfspool: local-zfs
\tpool rpool/data
\tcontent images,rootdir

btrfs: local-btrfs
\tpath /var/lib/pve/local-btrfs
\tcontent images,rootdir
"""
VM100 = """boot: order=scsi0;net0
net0: virtio=BC:24:11:5A:10:64,bridge=vmbr0,firewall=1
scsi0: local-zfs:vm-100-disk-0,iothread=1,size=32M
scsi1: local-zfs:vm-100-disk-1,size=32M
ide2: none,media=cdrom
"""


def guest(text: str = VM100, vmid: int = 100) -> guests.SourceGuest:
    return guests.SourceGuest("pve1", vmid, "qemu", text, parse_storage_cfg(STORAGE_CFG))


def job(**changes) -> ReplicaJob:
    return ReplicaJob(**({"source": "pve1", "guest": 100, "destination": "pve3",
                          "dest_vmid": 9100} | changes))


def snap(name: str, guid: int, txg: int) -> Snapshot:
    return Snapshot(name=name, guid=guid, createtxg=txg)


def test_disks_map_to_datasets_renamed_for_the_new_vmid() -> None:
    disks = replica.zfs_disks(guest(), job())
    assert [(d.key, d.source, d.target) for d in disks] == [
        ("scsi0", "rpool/data/vm-100-disk-0", "rpool/replica/vm-9100-disk-0"),
        ("scsi1", "rpool/data/vm-100-disk-1", "rpool/replica/vm-9100-disk-1")]


def test_disk_on_dir_storage_is_refused_pointing_to_pbs() -> None:
    text = "scsi0: local:300/vm-300-disk-0.raw,size=32M\n"
    with pytest.raises(InputError, match="not ZFS.*PBS"):
        replica.zfs_disks(guest(text, 300), job(guest=300, dest_vmid=None))


def test_btrfs_disks_paths_on_both_sides() -> None:
    text = "scsi0: local-btrfs:200/vm-200-disk-0.raw,size=32M\n"
    storages = parse_storage_cfg(STORAGE_CFG)
    (disk,) = btrfs_replica.btrfs_disks(guest(text, 200), job(guest=200, dest_vmid=9200), storages,
                                  "local-btrfs")
    assert disk.source == "/var/lib/pve/local-btrfs/images/200/vm-200-disk-0"
    assert disk.source_rel == "images/200/vm-200-disk-0"
    assert disk.receive_dir == "/var/lib/pve/local-btrfs/replica/pve1-200"
    assert disk.received_rel == "replica/pve1-200/vm-200-disk-0"
    assert disk.writable == "/var/lib/pve/local-btrfs/images/9200/vm-9200-disk-0"


def test_every_conflicting_disk_is_named_and_nothing_is_planned() -> None:
    disks = replica.zfs_disks(guest(), job())
    common = snap("dapx_pve3-9100_a", 1, 10)
    src = {d.source: zfs.DatasetState(d.source, True, snapshots=[common]) for d in disks}
    dst = {d.target: zfs.DatasetState(d.target, True, owner="pve1/100",
                                      snapshots=[common, snap("manual", 2, 11)]) for d in disks}
    with pytest.raises(ConflictError, match="scsi0: .*diverged.*; scsi1: .*diverged"):
        replica.plan_all(disks, src, dst, "dapx_pve3-9100_b", force=False, destination="pve3")
    plans = replica.plan_all(disks, src, dst, "dapx_pve3-9100_b", force=True, destination="pve3")
    assert plans["scsi0"].rollback_to == common and plans["scsi0"].to.name == "dapx_pve3-9100_b"


def test_zfs_states_parse_existence_owner_snapshots() -> None:
    out = "\n".join([
        "rpool/r/vm-1-disk-0\tguid\t5\t-", "rpool/r/vm-1-disk-0\tdapx:owner\tpve1/1\tlocal",
        "rpool/r/vm-1-disk-0\treferenced\t9000000\t-",
        "rpool/r/vm-1-disk-0@s1\tguid\t7\t-", "rpool/r/vm-1-disk-0@s1\tcreatetxg\t3\t-",
        "rpool/r/vm-1-disk-0@s1\tcreation\t100\t-",
        "rpool/r/vm-1-disk-0@s1\tdapx:owner\tpve1/1\tinherited from rpool/r/vm-1-disk-0",
        "rpool/r/vm-1-disk-0@dapx-probe\tguid\t8\t-",  # a killed probe's leftover
        "rpool/r/vm-1-disk-0@dapx-probe\tcreatetxg\t4\t-"])
    states = zfs.parse_states(out, ["rpool/r/vm-1-disk-0", "rpool/r/missing"])
    state = states["rpool/r/vm-1-disk-0"]
    assert state.exists and state.owner == "pve1/1"
    assert [s.name for s in state.snapshots] == ["s1"]
    assert state.written is None and state.written_bytes == 0
    state.written = 131072
    assert state.written_bytes == 131072
    assert not states["rpool/r/missing"].exists
    empty = zfs.DatasetState("rpool/r/x", True, referenced=9_000_000)
    assert empty.written_bytes == 9_000_000  # no snapshot: what it holds counts


def test_written_output_parses_for_both_sources() -> None:
    assert zfs.parse_written("rpool/r/a\t0\nrpool/r/b\t131072\n") == {
        "rpool/r/a": 0, "rpool/r/b": 131072}


def test_target_of_another_job_is_refused_by_plan_disk() -> None:
    (disk, _) = replica.zfs_disks(guest(), job())
    common = snap("dapx_pve3-9100_a", 1, 10)
    src = zfs.DatasetState(disk.source, True, snapshots=[common])
    dst = zfs.DatasetState(disk.target, True, owner="pve2/555", snapshots=[common])
    with pytest.raises(ConflictError, match=r"another dapx job \(pve2/555\)"):
        replica.plan_disk(disk, src, dst, "dapx_pve3-9100_b", force=True, destination="pve3",
                          owner="pve1/100")
    ours = zfs.DatasetState(disk.target, True, owner="pve1/100", snapshots=[common])
    assert replica.plan_disk(disk, src, ours, "dapx_pve3-9100_b", force=False,
                             destination="pve3", owner="pve1/100").kind == "incremental"


def test_pipe_scripts_are_constant_and_values_stay_arguments() -> None:
    argv = zfs.pipe_argv("rpool/data/vm-100-disk-0", "a", "b", "198.18.213.13",
                         "rpool/replica/vm-9100-disk-0", key="/root/.ssh/k",
                         known_hosts="/root/.ssh/kh", port=22, rate=None)
    assert argv[:2] == ["sh", "-c"] and "rpool" not in argv[2]
    assert argv[4:6] == ["rpool/data/vm-100-disk-0@a", "rpool/data/vm-100-disk-0@b"]
    assert shlex.split(argv[10]) == ["zfs", "receive", "rpool/replica/vm-9100-disk-0"]
    b = btrfs.pipe_argv(None, "/x/y@s", "198.18.213.13", "/x/r", key="/k", known_hosts="/kh",
                        port=2222, rate="1M")
    assert b[4] == "" and b[-1] == "1M" and shlex.split(b[10]) == ["btrfs", "receive", "/x/r"]
    with pytest.raises(InputError):
        zfs.pipe_argv("rpool/d", None, "s", "$(reboot)", "rpool/r", key="/k",
                      known_hosts="/kh", port=22, rate=None)


def test_pipe_script_runs_in_a_real_shell_with_stub_tools(tmp_path) -> None:
    # Test code may run a shell: it checks the constant script with stub zfs/pv/ssh.
    for tool, body in {"zfs": 'echo "zfs $*" >&2; printf data',
                       "pv": "cat; echo 4 >&2", "ssh": 'cat >/dev/null; echo "ssh $*"'}.items():
        (tmp_path / tool).write_text(f"#!/bin/sh\n{body}\n")
        (tmp_path / tool).chmod(0o755)
    argv = zfs.pipe_argv("rpool/d", "a", "b", "198.18.213.13", "rpool/r", key="/k",
                         known_hosts="/kh", port=22, rate=None)
    out = subprocess.run(argv, capture_output=True, text=True, check=True,
                         env={"PATH": f"{tmp_path}:/usr/bin:/bin"}).stdout
    assert "zfs send -I rpool/d@a rpool/d@b" in out
    assert out.strip().splitlines()[-1].endswith("root@198.18.213.13 zfs receive rpool/r")
    assert "4" in out.splitlines()


def test_byte_counter_sums_consecutive_sends() -> None:
    counter = syncoid.ByteCounter()
    for line in ["10", "20", "noise", "5", "7"]:
        counter.feed(line)
    assert counter.total == 27


def test_a_failed_transfer_names_its_cause_in_one_line() -> None:
    modified = ["Sending incremental rpool/data/vm-100-disk-0@a ... b (~ 4 KB):",
                "cannot receive incremental stream: destination rpool/replica/vm-9100-disk-0 "
                "has been modified", "since most recent snapshot",
                "CRITICAL ERROR:  zfs send  -I 'rpool/data/vm-100-disk-0'@'a' ... failed: 512"]
    assert syncoid.cause(modified).startswith("the destination was written since its newest "
                                              "snapshot, after this run's checks")
    assert syncoid.cause(["x", "Permission denied (publickey)."]) == \
        "Permission denied (publickey)."
    assert syncoid.cause([]) == "no output"


def test_grep_output_splits_into_files() -> None:
    out = "/a.conf:x: 1\n/a.conf:\n/etc/pve/storage.cfg:dir: local\n"
    assert guests.parse_grep_files(out, ["/a.conf", "/etc/pve/storage.cfg"]) == {
        "/a.conf": "x: 1\n\n", "/etc/pve/storage.cfg": "dir: local\n"}


def test_registration_helpers() -> None:
    assert register.zfs_storage_id("rpool", "replica/site-b") == "dapx-rpool-replica-site-b"
    storages = parse_storage_cfg(STORAGE_CFG + "\nzfspool: mine\n\tpool rpool/replica\n")
    assert register.find_zfs_storage(storages, "rpool/replica") == "mine"
    text = register.with_mark("cores: 2\n", "pve1", 100)
    assert guests.is_replica_of(text, "pve1", 100) and not guests.is_replica_of(text, "pve2", 100)


def test_trust_and_lock_names() -> None:
    key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB5h8wUGeC8VsV7yQ1m2fsi2J5Ylh9TSK2G7QeN6Yb8u"
    node = trust.ProxmoxNode(name="pve3", host="198.18.213.13", ssh_port=2222, ssh_host_key=key)
    assert trust.known_hosts_line(node).startswith("[198.18.213.13]:2222 ssh-ed25519 ")
    assert trust.trust_probe_argv(node)[-2:] == ["root@198.18.213.13", "true"]
    assert locks.guest_lock_name("pve1", 100) == "dapx-guest-pve1-100"


def test_the_trust_check_leaves_its_login_as_the_transfers_ssh_master(tmp_path) -> None:  # noqa: ANN001
    """The check before a syncoid transfer logs in afresh (``ControlMaster=yes``: never through
    a master already there) on the socket the syncoid shim takes up (same directory, same
    ``%C``, same persistence), made root-only first; its other arguments reach ssh as they are."""
    import os

    from dapx.core import syncoid_argv

    key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB5h8wUGeC8VsV7yQ1m2fsi2J5Ylh9TSK2G7QeN6Yb8u"
    node = trust.ProxmoxNode(name="pve3", host="198.18.213.13", ssh_port=2222, ssh_host_key=key)
    plain, shared = trust.trust_probe_argv(node), trust.trust_probe_argv(node, master=True)
    assert shared[:2] == ["env", f"DAPX_MASTERS={syncoid_argv.SHARED_MASTERS}"]
    fake = tmp_path / "ssh"  # stands in for the real ssh: prints what it was given
    fake.write_text('#!/bin/sh\nfor a do printf "%s|" "$a"; done\n')
    fake.chmod(0o755)
    masters = tmp_path / "masters"
    env = {**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}"}
    done = subprocess.run(["env", f"DAPX_MASTERS={masters}", *shared[2:]], capture_output=True,
                          text=True, env=env)
    assert done.returncode == 0, done.stderr
    options = ["-o", f"ControlPath={syncoid_argv.SHARED_MASTERS}/%C", "-o", "ControlMaster=yes",
               "-o", f"ControlPersist={syncoid_argv.MASTER_PERSIST}"]
    assert done.stdout.split("|") == [*options, *plain[1:], ""]
    assert masters.is_dir() and oct(masters.stat().st_mode & 0o777) == "0o700"


def test_pruning_after_an_incremental_follows_from_the_reads_before_it() -> None:
    run = replica.guest_run(job(keep=2))
    tag = f"dapx_{run.tag}_"
    disk = replica.zfs_disks(guest(), job())[0]
    src = zfs.DatasetState(disk.source, exists=True, snapshots=[
        snap(f"{tag}1", 1, 10), snap("manual", 9, 15), snap(f"{tag}2", 2, 20)])
    dst = zfs.DatasetState(disk.target, exists=True, owner=run.owner, snapshots=[
        snap(f"{tag}1", 1, 100), snap(f"{tag}2", 2, 110)])
    plan = replica.plan_disk(disk, src, dst, f"{tag}3", force=False, destination="pve3")
    pruning = replica.planned_pruning(disk, src, dst, plan, run, f"{tag}3")
    assert (pruning.holds, pruning.on_source, pruning.on_target, pruning.once_held) == (
        f"{tag}3", [f"{tag}1"], [f"{tag}1"], [])
    # keep 1: the previous common snapshot goes from the source only once the target holds
    # the new one (a second step); the destination's never goes before its check.
    run = replica.guest_run(job(keep=1))
    pruning = replica.planned_pruning(disk, src, dst, plan, run, f"{tag}3")
    assert (pruning.on_source, pruning.on_target, pruning.once_held) == (
        [f"{tag}1"], [f"{tag}1", f"{tag}2"], [f"{tag}2"])
