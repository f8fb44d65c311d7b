"""Migration planning (M1-M4), pure: the job model's refusals, the plan from both sides' facts,
PVE's own refusals, the values of the migrate calls, config changes, snapshot retention, and
the command line's one-line refusals."""

from __future__ import annotations

import pytest
from hypothesis import given, strategies as st
from pydantic import ValidationError

from dapx.core.migration_job import MigrationJob
from dapx.core.migration_plan import DestFacts, Occupant, SourceFacts, copy_mark
from dapx.core.migration_rules import (SNAPSHOT_PREFIX, bridge_pairs, config_changes,
                                       free_vmid, pair_list, plan_migration, remote_endpoint,
                                       snapshot_name, snapshots_to_delete, storage_pairs)
from dapx.errors import ConflictError, GuestLocked, InputError

STORAGES = {"local": {"storage": "local", "type": "dir", "content": "iso,backup,images",
                      "active": 1},
            "local-zfs": {"storage": "local-zfs", "type": "zfspool",
                          "content": "images,rootdir", "active": 1},
            "local-btrfs": {"storage": "local-btrfs", "type": "btrfs",
                            "content": "images,rootdir", "active": 1},
            "pbs": {"storage": "pbs", "type": "pbs", "content": "backup", "active": 1}}
VM100 = {"cores": "2", "cpu": "x86-64-v2-AES", "memory": "2048", "name": "web01",
         "net0": "virtio=BC:24:11:5A:10:64,bridge=vmbr0,firewall=1", "sockets": "1",
         "scsi0": "local-zfs:vm-100-disk-0,iothread=1,size=32M",
         "scsi1": "local-zfs:vm-100-disk-1,iothread=1,size=32M", "ide2": "none,media=cdrom"}
VM300 = {"cores": "2", "memory": "2048", "net0": "virtio=BC:24:11:5A:11:2C,bridge=vmbr0",
         "scsi0": "local:300/vm-300-disk-0.raw,size=32M"}


def src(config: dict = VM100, vmid: int = 100, **changes) -> SourceFacts:
    base = dict(node="pve1", vmid=vmid, kind="qemu", config=config, storages=STORAGES,
                cluster=frozenset({"pve1", "pve2"}))
    return SourceFacts(**(base | changes))


def dest(node: str = "pve3", guests: dict | None = None, **changes) -> DestFacts:
    base = dict(node=node, storages=STORAGES, bridges=frozenset({"vmbr0", "vmbr1"}),
                guests=guests or {100: Occupant("pve1", "qemu"), 300: Occupant("pve3", "qemu")},
                cpu_models=frozenset({"host", "x86-64-v2-AES", "x86-64-v3", "kvm64"}))
    return DestFacts(**(base | changes))


def job(**changes) -> MigrationJob:
    return MigrationJob(**({"source": "pve1", "guest": 100, "destination": "pve3",
                            "dest_vmid": 9100} | changes))


# -----------------------------------------------------------------------------------------------
# The model


@pytest.mark.parametrize("fields,expected", [
    ({"memory": 15}, "greater than or equal to 16"),
    ({"cores": 0}, "greater than or equal to 1"),
    ({"destination": "pve1", "dest_vmid": None}, "another node or another VMID"),
    ({"destination": "pve1", "mode": "move"}, "a move needs another node"),
    ({"mode": "move", "force": True}, "force only applies to copies"),
    ({"bridge_map": "vmbr0=$(reboot)"}, "bridge name"),
    ({"nic_bridges": "eth0=vmbr1"}, "net0 .. net31"),
    ({"storage_map": "local=bad id"}, "storage id"),
    ({"cpu": "host; rm -rf /"}, "CPU type"),
    ({"dest_vmid": 99}, "VMID"),
    ({"source": "PVE 1"}, "node name"),
])
def test_bad_input_is_refused_when_the_job_is_built(fields, expected) -> None:
    with pytest.raises(InputError, match=expected):
        MigrationJob.from_input(**({"source": "pve1", "guest": 100, "destination": "pve3"}
                                   | fields))


def test_maps_parse_from_text_and_the_same_node_with_another_vmid_is_a_copy() -> None:
    spec = job(bridge_map="vmbr0=vmbr1", storage_map="local=local-zfs",
               nic_bridges="net1=vmbr2", destination="pve1")
    assert spec.bridge_map == {"vmbr0": "vmbr1"} and spec.storage_map == {"local": "local-zfs"}
    assert spec.nic_bridges == {"net1": "vmbr2"} and spec.target_vmid == 9100
    assert job(memory=4096, cpu="host").hardware == {"memory": 4096, "cpu": "host"}
    with pytest.raises(ValidationError):
        MigrationJob(source="pve1", guest=100, destination="pve3", surprise=1)


# -----------------------------------------------------------------------------------------------
# Copies


def test_zfs_copy_with_hardware_and_bridge_changes() -> None:
    plan = plan_migration(job(memory=4096, cores=4, bridge_map="vmbr0=vmbr1"), src(), dest())
    assert plan.transport == "zfs" and plan.mode == "copy" and plan.replace == "none"
    assert [(d.key, d.target_storage, d.size) for d in plan.disks] == [
        ("scsi0", "local-zfs", 32 << 20), ("scsi1", "local-zfs", 32 << 20)]
    assert [(n.key, n.target_bridge) for n in plan.nics] == [("net0", "vmbr1")]
    assert plan.hardware == {"memory": "4096", "cores": "4"}
    assert plan.bytes == 64 << 20


def test_dir_storage_copies_as_a_streamed_vzdump_and_maps_storage() -> None:
    spec = MigrationJob(source="pve3", guest=300, destination="pve1", dest_vmid=9300,
                        storage_map={"local": "local-zfs"})
    plan = plan_migration(spec, src(VM300, 300, node="pve3", cluster=frozenset({"pve3"})),
                          dest("pve1"))
    assert plan.transport == "vzdump" and plan.disks[0].target_storage == "local-zfs"
    same_node = MigrationJob(source="pve1", guest=100, destination="pve1", dest_vmid=9100)
    assert plan_migration(same_node, src(), dest("pve1")).transport == "vzdump"


@pytest.mark.parametrize("changes,error,expected", [
    ({"bridge_map": "vmbr0=vmbr9"}, InputError, "no bridge 'vmbr9'"),
    ({"nic_bridges": "net3=vmbr1"}, InputError, "no network card net3"),
    ({"storage_map": "nfs=local-lvm"}, InputError, "no storage 'local-lvm'"),
    ({"target_storage": "pbs"}, InputError, "does not hold VM images"),
    ({"cpu": "EPYC-Turin"}, InputError, "no CPU type 'EPYC-Turin'"),
    ({"transport": "zfs", "storage_map": "local-zfs=local"}, InputError,
     "transport zfs needs every disk on zfs storage on both sides; these go zfspool -> dir"),
    ({"transport": "btrfs"}, InputError, "transport btrfs needs every disk on btrfs"),
    ({"dest_vmid": 300}, ConflictError, "VMID 300 is qemu guest.*force"),
])
def test_copy_refusals_name_the_cause(changes, error, expected) -> None:
    with pytest.raises(error, match=expected):
        plan_migration(job(**changes), src(), dest())


def test_a_copy_on_two_storages_is_refused_where_the_transport_cannot_split() -> None:
    two = {**VM100, "scsi1": "local-btrfs:100/vm-100-disk-1.raw,size=32M"}
    with pytest.raises(InputError, match="one storage"):
        plan_migration(job(), src(two), dest())


def test_the_target_vmid_our_copy_foreign_forced_running_locked() -> None:
    ours = dest(guests={9100: Occupant("pve3", "qemu", "web01", "running", "", True)})
    assert plan_migration(job(), src(), ours).replace == "refresh"
    foreign = dest(guests={9100: Occupant("pve3", "qemu", "other")})
    with pytest.raises(ConflictError, match="force"):
        plan_migration(job(), src(), foreign)
    forced = plan_migration(job(force=True), src(), foreign)
    assert forced.replace == "replace" and forced.occupant["name"] == "other"
    running = dest(guests={9100: Occupant("pve3", "qemu", "other", "running")})
    with pytest.raises(ConflictError, match="running; stop it first"):
        plan_migration(job(force=True), src(), running)
    locked = dest(guests={9100: Occupant("pve3", "qemu", "other", "stopped", "backup")})
    with pytest.raises(GuestLocked, match="locked \\(backup\\)"):
        plan_migration(job(force=True), src(), locked)
    elsewhere = dest(guests={9100: Occupant("pve9", "qemu", "far")})
    with pytest.raises(ConflictError, match="not on pve3"):
        plan_migration(job(force=True), src(), elsewhere)


def test_snapshot_first_needs_disks_that_can_snapshot() -> None:
    spec = MigrationJob(source="pve3", guest=300, destination="pve1", snapshot_first=True)
    with pytest.raises(InputError, match="snapshot feature is not available"):
        plan_migration(spec, src(VM300, 300, node="pve3"), dest("pve1", guests={}))


# -----------------------------------------------------------------------------------------------
# Moves


def test_moves_in_and_out_of_the_cluster() -> None:
    inside = plan_migration(job(mode="move", destination="pve2", dest_vmid=None), src(),
                            dest("pve2"))
    assert inside.transport == "migrate" and not inside.online
    live = plan_migration(job(mode="move", destination="pve2", dest_vmid=None),
                          src(status="running"), dest("pve2"))
    assert live.online
    remote = plan_migration(job(mode="move", storage_map="local-zfs=local"), src(), dest())
    assert remote.transport == "remote_migrate" and storage_pairs(remote) == {
        "local-zfs": "local"}
    with pytest.raises(InputError, match="keeps the VMID"):
        plan_migration(job(mode="move", destination="pve2"), src(), dest("pve2"))


@pytest.mark.parametrize("facts,changes,error,expected", [
    ({"snapshots": [("before-upgrade", 1)]}, {}, ConflictError,
     "remote migration with snapshots not supported yet.*delete them first"),
    ({}, {"snapshot_first": True}, InputError, "turn snapshot_first off"),
    ({"ha_managed": True}, {}, ConflictError, "cannot remote-migrate VM that is configured "
                                              "for HA.*ha-manager remove vm:100"),
    ({"lock": "backup"}, {}, GuestLocked, "locked \\(backup\\)"),
    ({"config": {**VM100, "hostpci0": "0000:01:00.0"}}, {}, ConflictError,
     "VM uses local resources"),
    ({}, {"dest_vmid": 300}, ConflictError, "VMID 300 is in use on pve3"),
])
def test_what_pve_would_refuse_is_refused_before_anything_moves(facts, changes, error,
                                                                  expected) -> None:
    with pytest.raises(error, match=expected):
        plan_migration(job(mode="move", **changes), src(**facts), dest())


def test_a_running_container_moves_only_in_restart_mode() -> None:
    ct = {"memory": "512", "rootfs": "local-zfs:subvol-101-disk-0,size=1G",
          "net0": "name=eth0,bridge=vmbr0,hwaddr=BC:24:11:5A:10:65,type=veth"}
    facts = src(ct, 101, kind="lxc", status="running")
    spec = MigrationJob(source="pve1", guest=101, destination="pve2", mode="move")
    with pytest.raises(ConflictError, match="without --online or --restart.*set restart"):
        plan_migration(spec, facts, dest("pve2"))
    plan = plan_migration(spec.model_copy(update={"restart": True}), facts, dest("pve2"))
    assert plan.restart and not plan.online
    with pytest.raises(InputError, match="container: it has no sockets"):
        plan_migration(spec.model_copy(update={"restart": True, "sockets": 2}), facts,
                       dest("pve2"))


# -----------------------------------------------------------------------------------------------
# Values of the API calls, config changes


def test_pair_lists_and_the_endpoint() -> None:
    assert pair_list({"local": "local-zfs", "a": "b"}) == "a:b,local:local-zfs"
    assert pair_list({}) == "1"
    plan = plan_migration(job(mode="move", nic_bridges="net0=vmbr1"), src(), dest())
    assert bridge_pairs(plan.nics) == {"vmbr0": "vmbr1"}
    fingerprint = ":".join(["AB"] * 32)
    assert remote_endpoint("198.18.213.11", 8006, "root@pam!dapx", "s3cret", fingerprint) == (
        f"host=198.18.213.11,port=8006,apitoken=PVEAPIToken=root@pam!dapx=s3cret,"
        f"fingerprint={fingerprint}")


def test_config_changes_are_only_what_differs_and_repeat_to_nothing() -> None:
    plan = plan_migration(job(memory=4096, bridge_map="vmbr0=vmbr1"), src(), dest())
    mark = copy_mark("pve1", 100)
    changes = config_changes(VM100, plan, VM100, mark=mark, new_macs=True)
    assert changes["memory"] == "4096" and "cores" not in changes
    assert changes["net0"] == "virtio,bridge=vmbr1,firewall=1"  # PVE makes a new MAC
    assert changes["description"] == "dapx-replica-of: pve1/100"
    after = {**VM100, **changes, "net0": "virtio=BC:24:11:00:00:99,bridge=vmbr1,firewall=1"}
    assert config_changes(after, plan, VM100, mark=mark, new_macs=True) == {}
    kept = config_changes(VM100, plan, VM100, mark=None, new_macs=False)
    assert kept["net0"] == "virtio=BC:24:11:5A:10:64,bridge=vmbr1,firewall=1"
    assert "description" not in kept


# -----------------------------------------------------------------------------------------------
# Snapshot first, keep N


def test_snapshot_names_fit_pve_and_retention_keeps_the_newest_of_ours() -> None:
    from datetime import datetime, timezone

    name = snapshot_name(datetime(2025, 1, 2, 3, 4, 5, tzinfo=timezone.utc))
    assert name == "dapx_migrate_20250102T030405Z" and len(name) <= 40
    snaps = [("before-upgrade", 1), (SNAPSHOT_PREFIX + "a", 2), (SNAPSHOT_PREFIX + "b", 3),
             ("dapx_pve3-100_x", 4), (SNAPSHOT_PREFIX + "c", 5)]
    assert snapshots_to_delete(snaps, 2, protect=SNAPSHOT_PREFIX + "c") == [
        SNAPSHOT_PREFIX + "a"]


@given(st.lists(st.tuples(st.sampled_from([SNAPSHOT_PREFIX + "x", "manual", "dapx_other_x"]),
                          st.integers(0, 10**6)), max_size=12).map(
    lambda items: [(f"{n}{i}", t) for i, (n, t) in enumerate(items)]),
       st.integers(1, 5))
def test_retention_only_ever_deletes_ours_beyond_keep(snaps, keep) -> None:
    victims = snapshots_to_delete(snaps, keep, protect="")
    ours = [n for n, _ in snaps if n.startswith(SNAPSHOT_PREFIX)]
    assert all(v.startswith(SNAPSHOT_PREFIX) for v in victims)
    assert len(victims) == max(0, len(ours) - keep)


def test_free_vmid_skips_used_ones() -> None:
    assert free_vmid({9100, 9101, 9103}, 9100) == 9102
    assert free_vmid(set(), 50) == 100


# -----------------------------------------------------------------------------------------------
# Command line


@pytest.mark.parametrize("argv,expected", [
    (["job", "create", "migration", "--source", "pve1", "--guest", "100", "--dest", "pve3",
      "--memory", "8"], "memory"),
    (["job", "create", "migration", "--source", "pve1", "--guest", "100", "--dest", "pve3",
      "--cores", "0"], "cores"),
    (["job", "create", "migration", "--source", "pve1", "--guest", "100", "--dest", "pve1"],
     "another node or another VMID"),
    (["job", "create", "migration", "--source", "pve1", "--dest", "pve3"], "--guest"),
    (["job", "create", "migration", "--source", "pve1", "--guest", "100", "--dest", "pve3",
      "--keep", "3"], "does not take --keep"),
    (["job", "create", "replica", "--source", "pve1", "--guest", "100", "--dest", "pve3",
      "--memory", "4096"], "does not take --memory"),
    (["migrate", "--source", "pve1", "--guest", "100", "--dest", "pve3", "--nic-bridge",
      "eth0=vmbr1"], "net0 .. net31"),
])
def test_cli_refuses_in_one_line_before_anything_runs(argv, expected, capsys) -> None:
    from dapx.cli import main

    assert main(argv) == 2
    err = capsys.readouterr().err
    assert expected in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
