"""The one-call snapshot listing, groups, Proxmox snapshot names and rollback blockers."""

from __future__ import annotations

import pytest

from dapx.core.pvesnap import (blocked_rollback_message, rollback_blockers,
                               validate_pve_snapshot_name)
from dapx.core.snapshots import Snapshot
from dapx.core.snapview import (classify, guest_config, guest_disks, listing_argv,
                                parse_listing)
from dapx.errors import ConflictError, InputError

U1 = "0c24c2af-b99d-3f46-86e9-1d0f6a4d62bd"
U2 = "e1a63b70-781f-ac46-9aa4-e04529fd4fa6"
OUTPUT = f"""@@dapx-section zfs
rpool\tguid\t1
rpool/data/vm-100-disk-0\tguid\t2
rpool/data/vm-100-disk-0@before-upgrade\tguid\t10
rpool/data/vm-100-disk-0@before-upgrade\tcreatetxg\t50
rpool/data/vm-100-disk-0@before-upgrade\tcreation\t1700000000
rpool/data/vm-100-disk-0@before-upgrade\tused\t4096
rpool/data/vm-100-disk-0@before-upgrade\treferenced\t33554432
rpool/data/vm-100-disk-0@autosnap_2025-01-01_00:00:00_hourly\tguid\t11
rpool/data/vm-100-disk-0@autosnap_2025-01-01_00:00:00_hourly\tcreatetxg\t40
rpool/data/vm-100-disk-0@autosnap_2025-01-01_00:00:00_hourly\tcreation\t1690000000
@@dapx-section btrfs /var/lib/pve/local-btrfs
ID 256 gen 9 cgen 7 top level 5 parent_uuid -                                    received_uuid -                                    uuid {U1} path images/200/vm-200-disk-0
ID 257 gen 9 cgen 9 top level 5 parent_uuid {U1} received_uuid -                                    uuid {U2} path images/200/vm-200-disk-0@s1
@@dapx-section btrfs-otime /var/lib/pve/local-btrfs
ID 257 gen 9 cgen 9 top level 5 otime 2026-12-01 04:44:31 path images/200/vm-200-disk-0@s1
@@dapx-section storage
zfspool: local-zfs
\tpool rpool/data
\tcontent images,rootdir

btrfs: local-btrfs
\tpath /var/lib/pve/local-btrfs
\tcontent images,rootdir
@@dapx-section configs
/etc/pve/qemu-server/100.conf:scsi0: local-zfs:vm-100-disk-0,size=32M
/etc/pve/qemu-server/100.conf:parent: before-upgrade
/etc/pve/qemu-server/100.conf:
/etc/pve/qemu-server/100.conf:[before-upgrade]
/etc/pve/qemu-server/100.conf:scsi0: local-zfs:vm-100-disk-0,size=32M
/etc/pve/qemu-server/100.conf:snaptime: 1700000000
/etc/pve/qemu-server/200.conf:scsi0: local-btrfs:200/vm-200-disk-0.raw,size=32M
/etc/pve/lxc/101.conf:rootfs: /mnt/host,size=1G
"""


def test_parse_listing_reads_every_part_in_one_output() -> None:
    listing = parse_listing(OUTPUT)
    snaps = listing.zfs["rpool/data/vm-100-disk-0"]
    assert [s.name for s in snaps] == ["autosnap_2025-01-01_00:00:00_hourly", "before-upgrade"]
    assert snaps[1].used == 4096 and snaps[1].referenced == 33554432 and snaps[0].used is None
    assert {"rpool", "rpool/data/vm-100-disk-0"} <= listing.datasets
    assert listing.btrfs[0].otimes == {257: 1796100271}
    assert sorted(listing.configs) == [100, 101, 200]
    assert guest_config(listing, 100).snapshot_names == ["before-upgrade"]
    assert listing.snapshot_count() == 3
    assert listing_argv()[:2] == ["sh", "-c"] and listing_argv()[4].startswith("guid,")


def test_guest_disks_map_to_datasets_and_subvolumes() -> None:
    listing = parse_listing(OUTPUT)
    assert [(d.key, d.kind, d.location) for d in guest_disks(listing, 100)] == \
        [("scsi0", "zfs", "rpool/data/vm-100-disk-0")]
    btrfs = guest_disks(listing, 200)[0]
    assert (btrfs.kind, btrfs.mount, btrfs.location) == \
        ("btrfs", "/var/lib/pve/local-btrfs", "images/200/vm-200-disk-0")
    assert guest_disks(listing, 101)[0].kind == "other"
    with pytest.raises(InputError, match="guest 555 is not on this node"):
        guest_disks(listing, 555)


def test_groups() -> None:
    assert classify("before-upgrade", {"before-upgrade"}) == "proxmox"
    assert classify("autosnap_2025-01-01_00:00:00_daily") == "sanoid"
    assert classify("syncoid_pve1_2025") == "syncoid"
    assert classify("dapx_pve3-9100_20250101T000000Z") == "replication"
    assert classify("manual") == "other"


def test_pve_snapshot_names_as_pve_checks_them() -> None:
    assert validate_pve_snapshot_name("before-upgrade_2") == "before-upgrade_2"
    for bad in ["1abc", "a", "a b", "x;y", "a" * 41, "current", "ä-x", "-x", ""]:
        with pytest.raises(InputError):
            validate_pve_snapshot_name(bad)
    assert validate_pve_snapshot_name("a" * 40)


def s(name: str, txg: int) -> Snapshot:
    return Snapshot(name=name, guid=txg, createtxg=txg)


def test_rollback_blockers_name_every_newer_snapshot_on_every_disk() -> None:
    disks = {"rpool/data/vm-100-disk-0": [s("snap1", 1), s("autosnap_a", 2), s("dapx_j_1", 3)],
             "rpool/data/vm-100-disk-1": [s("snap1", 1)]}
    blockers = rollback_blockers(disks, "snap1")
    assert blockers == {"rpool/data/vm-100-disk-0": ["autosnap_a", "dapx_j_1"]}
    message = blocked_rollback_message("pve1", 100, "snap1", blockers,
                                       {"autosnap_a": "sanoid", "dapx_j_1": "replication"})
    assert "autosnap_a (sanoid), dapx_j_1 (replication)" in message and "\n" not in message
    with pytest.raises(ConflictError, match="missing on rpool/data/vm-100-disk-1"):
        rollback_blockers(disks, "dapx_j_1")
    assert rollback_blockers({"d": [s("a", 1), s("b", 2)]}, "b") == {}
