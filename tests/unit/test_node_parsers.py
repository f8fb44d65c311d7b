"""Pure parsers behind node-check / node-inventory, on output captured from PVE-shaped nodes."""

from __future__ import annotations

from dapx.core.storagecfg import parse_storage_cfg
from dapx.flows.nodes import (parse_bridges, parse_btrfs_mounts, parse_datasets, parse_guest_configs,
                              parse_subvolumes, parse_zpools)

GREP = """\
/etc/pve/qemu-server/100.conf:boot: order=scsi0
/etc/pve/qemu-server/100.conf:name: web
/etc/pve/qemu-server/100.conf:scsi0: local-zfs:vm-100-disk-0,size=8G
/etc/pve/qemu-server/100.conf:ide2: local:iso/debian.iso,media=cdrom
/etc/pve/qemu-server/100.conf:
/etc/pve/qemu-server/100.conf:[before_upgrade]
/etc/pve/qemu-server/100.conf:scsi0: local-zfs:vm-100-disk-0,size=4G
/etc/pve/lxc/101.conf:hostname: dns
/etc/pve/lxc/101.conf:rootfs: local-btrfs:101/subvol-101-disk-0.raw,size=2G
/etc/pve/lxc/101.conf:mp0: local-zfs:subvol-101-disk-1,mp=/srv,size=1G
"""


def test_guest_configs_give_guests_with_their_disks():
    guests = parse_guest_configs(GREP)
    assert [(g.vmid, g.kind, g.name) for g in guests] == [(100, "qemu", "web"), (101, "lxc", "dns")]
    assert [(d.key, d.volid, d.size) for d in guests[0].disks] == [("scsi0", "local-zfs:vm-100-disk-0", "8G")]
    assert [d.volid for d in guests[1].disks] == ["local-btrfs:101/subvol-101-disk-0.raw",
                                                   "local-zfs:subvol-101-disk-1"]


def test_storage_cfg():
    text = ("zfspool: local-zfs\n\tpool rpool/data\n\tcontent images,rootdir\n\tsparse 1\n\n"
            "dir: local\n\tpath /var/lib/vz\n\tcontent iso,vztmpl,backup\n")
    assert parse_storage_cfg(text + "# comment\n") == {
        "local-zfs": {"type": "zfspool", "pool": "rpool/data", "content": "images,rootdir", "sparse": "1"},
        "local": {"type": "dir", "path": "/var/lib/vz", "content": "iso,vztmpl,backup"}}


def test_zfs_btrfs_and_bridges():
    assert parse_zpools("rpool\t1.98G\tONLINE\n") == [{"name": "rpool", "size": "1.98G", "health": "ONLINE"}]
    assert parse_datasets("rpool/data\t1M\t1.9G\t21K\t/rpool/data\n")[0] == {
        "name": "rpool/data", "used": "1M", "avail": "1.9G", "refer": "21K", "mountpoint": "/rpool/data"}
    assert parse_btrfs_mounts("/var/lib/pve/local\\x20btrfs /dev/loop3\n") == [
        {"mount": "/var/lib/pve/local btrfs", "source": "/dev/loop3"}]
    assert parse_subvolumes("ID 256 gen 9 top level 5 path images/100/vm-100-disk-0\n") == [
        "images/100/vm-100-disk-0"]
    assert parse_bridges('[{"ifindex":3,"ifname":"vmbr0"},{"ifindex":4,"ifname":"dapx-br0"}]') == [
        "dapx-br0", "vmbr0"]


def test_install_sanoid_says_when_the_node_cannot_reach_a_mirror():
    from dapx.errors import CommandError
    from dapx.flows.nodes import _mirror_error

    apt = CommandError("apt-get failed", argv=["apt-get", "install", "-y", "sanoid"], exit_status=100,
                       stderr_tail="Err:1 http://deb.debian.org/debian bookworm InRelease\n"
                                   "  Temporary failure resolving 'deb.debian.org'\n"
                                   "E: Unable to locate package sanoid")
    err = _mirror_error("pve9", apt)
    assert "node pve9 cannot install sanoid: it cannot reach a Debian package mirror" in str(err)
    assert "Unable to locate package sanoid" in str(err) and err.exit_status == 100
    other = CommandError("dpkg failed", stderr_tail="dpkg: error: dpkg status database is locked")
    assert _mirror_error("pve9", other) is other
