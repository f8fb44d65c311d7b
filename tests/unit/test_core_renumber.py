"""Renumbering a guest (the swap after a restore beside it), cluster resources, free VMIDs."""

from __future__ import annotations

import pytest

from dapx.core.registration import bridges_used, mapped_networks
from dapx.core.renumber import plan_renumber
from dapx.core.resources import (cluster_guests, free_vmids, guests_to_back_up, pbs_storage,
                                 storage_holds)
from dapx.errors import InputError

STORAGES = {
    "local": {"type": "dir", "path": "/var/lib/vz"},
    "local-zfs": {"type": "zfspool", "pool": "rpool/data"},
    "local-btrfs": {"type": "btrfs", "path": "/var/lib/pve/local-btrfs"},
    "local-lvm": {"type": "lvmthin", "vgname": "pve", "thinpool": "data"},
    "nas": {"type": "nfs", "path": "/mnt/pve/nas", "server": "10.0.0.9"},
}

VM = """#web server
#second line
boot: order=scsi0
ide2: local-zfs:vm-100-cloudinit,media=cdrom
ide0: local:iso/debian.iso,media=cdrom
net0: virtio=BC:24:11:00:00:01,bridge=vmbr0
parent: before
scsi0: local-zfs:vm-100-disk-0,iothread=1,size=32G
scsi1: local:100/vm-100-disk-1.qcow2,size=8G
scsi2: /dev/disk/by-id/ata-X,backup=0
unused0: local-btrfs:100/vm-100-disk-2.raw

[before]
scsi0: local-zfs:vm-100-disk-0,iothread=1,size=32G
snaptime: 1764115200
vmstate: local-zfs:vm-100-state-before
"""


def test_every_volume_and_section_follows_the_new_vmid() -> None:
    plan = plan_renumber(VM, "qemu", 100, 9100, STORAGES)
    moves = {m.old_volid: (m.method, m.source, m.target, m.new_volid) for m in plan.moves}
    assert moves == {
        "local-zfs:vm-100-cloudinit": ("zfs", "rpool/data/vm-100-cloudinit",
                                       "rpool/data/vm-9100-cloudinit",
                                       "local-zfs:vm-9100-cloudinit"),
        "local-zfs:vm-100-disk-0": ("zfs", "rpool/data/vm-100-disk-0",
                                    "rpool/data/vm-9100-disk-0", "local-zfs:vm-9100-disk-0"),
        "local:100/vm-100-disk-1.qcow2": ("path", "/var/lib/vz/images/100/vm-100-disk-1.qcow2",
                                          "/var/lib/vz/images/9100/vm-9100-disk-1.qcow2",
                                          "local:9100/vm-9100-disk-1.qcow2"),
        "local-btrfs:100/vm-100-disk-2.raw": (
            "btrfs", "/var/lib/pve/local-btrfs/images/100/vm-100-disk-2",
            "/var/lib/pve/local-btrfs/images/9100/vm-9100-disk-2",
            "local-btrfs:9100/vm-9100-disk-2.raw"),
        "local-zfs:vm-100-state-before": ("zfs", "rpool/data/vm-100-state-before",
                                          "rpool/data/vm-9100-state-before",
                                          "local-zfs:vm-9100-state-before"),
    }
    text = plan.config_text
    assert text.count("vm-9100-disk-0,iothread=1,size=32G") == 2  # current and snapshot
    assert "scsi1: local:9100/vm-9100-disk-1.qcow2,size=8G\n" in text
    assert "vmstate: local-zfs:vm-9100-state-before\n" in text
    assert "ide2: local-zfs:vm-9100-cloudinit,media=cdrom\n" in text
    unchanged = [ln for ln in VM.splitlines(keepends=True) if "100" not in ln or "iso" in ln
                 or "by-id" in ln]
    assert all(ln in text for ln in unchanged)  # other lines keep their exact bytes
    assert "vm-100" not in text


def test_container_volumes_and_nfs() -> None:
    ct = "arch: amd64\nrootfs: local-zfs:subvol-101-disk-0,size=8G\n" \
         "mp0: nas:101/vm-101-disk-1.raw,mp=/srv,size=4G\nmp1: /mnt/host,mp=/host\n"
    plan = plan_renumber(ct, "lxc", 101, 9101, STORAGES)
    assert [m.target for m in plan.moves] == ["rpool/data/subvol-9101-disk-0",
                                              "/mnt/pve/nas/images/9101/vm-9101-disk-1.raw"]
    assert "mp1: /mnt/host,mp=/host\n" in plan.config_text


@pytest.mark.parametrize("line,match", [
    ("scsi0: local-lvm:vm-100-disk-0,size=4G", "type lvmthin: dapx can rename guest volumes "
                                               "only on zfspool"),
    ("scsi0: local-zfs:vm-200-disk-0,size=4G", "belongs to guest 200"),
    ("scsi0: local-zfs:base-50-disk-0/vm-100-disk-0,size=4G", "linked clone|not a ZFS"),
    ("scsi0: gone:vm-100-disk-0,size=4G", "not in the node's storage.cfg"),
])
def test_volumes_dapx_cannot_rename_are_refused(line: str, match: str) -> None:
    with pytest.raises(InputError, match=match):
        plan_renumber(f"memory: 512\n{line}\n", "qemu", 100, 9100, STORAGES)


def test_same_vmid_refused() -> None:
    with pytest.raises(InputError, match="already has that VMID"):
        plan_renumber("memory: 512\n", "qemu", 100, 100, STORAGES)


def test_cluster_resources_and_the_guests_a_job_means() -> None:
    rows = [{"type": "qemu", "vmid": 100, "node": "pve1", "name": "web", "status": "running"},
            {"type": "lxc", "vmid": 101, "node": "pve1", "lock": "backup"},
            {"type": "qemu", "vmid": 200, "node": "pve2", "template": 1},
            {"type": "storage", "storage": "local", "node": "pve1"}]
    guests = cluster_guests(rows)
    assert sorted(guests) == [100, 101, 200] and guests[101].lock == "backup"
    assert [g.vmid for g in guests_to_back_up(guests, [], "pve1")] == [100, 101]
    assert guests_to_back_up(guests, [200], "pve1")[0].node == "pve2"
    with pytest.raises(InputError, match="guest\\(s\\) 555, 556 are on no node"):
        guests_to_back_up(guests, [100, 555, 556], "pve1")
    with pytest.raises(InputError, match="node pve3 holds no guest"):
        guests_to_back_up(guests, [], "pve3")


def test_free_vmids_come_from_the_high_range() -> None:
    assert free_vmids({999_000_000, 999_000_002}, 2) == [999_000_001, 999_000_003]
    assert free_vmids([], 1, span=(100, 101)) == [100]
    with pytest.raises(InputError, match="no free VMID"):
        free_vmids({100, 101}, 1, span=(100, 101))


def test_pbs_storage_and_content_checks() -> None:
    found = pbs_storage("pbs", {"type": "pbs", "server": "10.0.0.5", "datastore": "store1",
                                "namespace": "site-a"})
    assert (found.server, found.datastore, found.namespace) == ("10.0.0.5", "store1", "site-a")
    with pytest.raises(InputError, match="type dir, not a Proxmox Backup Server"):
        pbs_storage("local", {"type": "dir"})
    with pytest.raises(InputError, match="names no server or datastore"):
        pbs_storage("pbs", {"type": "pbs", "server": "x"})
    assert storage_holds({"content": "images,iso"}, "qemu")
    assert not storage_holds({"content": "images,iso"}, "lxc")


def test_bridge_mapping_of_a_config() -> None:
    config = {"net0": "virtio=BC:24:11:00:00:01,bridge=vmbr1,firewall=1",
              "net1": "virtio=BC:24:11:00:00:02,bridge=vmbr0", "memory": "512"}
    assert mapped_networks(config, {"vmbr1": "vmbr0"}) == {
        "net0": "virtio=BC:24:11:00:00:01,bridge=vmbr0,firewall=1"}
    assert bridges_used(config) == {"net0": "vmbr1", "net1": "vmbr0"}


def test_restored_config_changes_keep_the_description() -> None:
    from dapx.tasks.pve_guests import config_changes

    config = {"description": "web server\n#dapx-replica-of: pve9/1\nsecond",
              "net0": "virtio=A,bridge=vmbr1", "digest": "x", "hookscript": "local:snippets/h.pl",
              "hostpci0": "0000:01:00.0", "serial0": "socket", "memory": "512"}
    changes, delete = config_changes(config, "qemu", {"vmbr1": "vmbr0"},
                                     "dapx-replica-of: pve3/300", ("hostpci0",))
    assert changes == {"net0": "virtio=A,bridge=vmbr0",
                       "description": "dapx-replica-of: pve3/300\nweb server\nsecond"}
    assert delete == ["hookscript"]  # hostpci0 carried on purpose, a socket serial is safe
    marked = config | changes
    marked.pop("hookscript")
    assert config_changes(marked, "qemu", {"vmbr1": "vmbr0"}, "dapx-replica-of: pve3/300",
                          ("hostpci0",)) == ({}, [])
    assert config_changes({"description": ""}, "lxc", {}, "m", None) == ({"description": "m"}, [])
    assert config_changes(config, "qemu", {}, None, None) == ({}, [])  # a plain restore
