"""Seeded guests with real random data and their sha256 checksums.

VM 100 (pve1, two disks on local-zfs), CT 101 (pve1, subvol on local-zfs), VM 200 (pve2,
local-btrfs), VM 300 (pve3, local dir). Configs are written in PVE's format to
/etc/pve/nodes/<node>/{qemu-server,lxc}/<vmid>.conf.
"""

from __future__ import annotations

import hashlib
import os
import uuid

from dapx.lab.common import NodeSpec
from dapx.lab.node import fs_dir, run

MIB = 1024 * 1024
DISK_MIB = 32
CTIME = 1764115200  # 2025-11-26, fixed so configs are stable across rebuilds


def _write(node: NodeSpec, path: str, data: bytes) -> dict:
    """Write data to path inside node; returns {"path", "size", "sha256"}."""
    run(node, ["dd", f"of={path}", "bs=1M", "status=none"], input=data, text=False, check=True)
    return {"path": path, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def _conf(node: NodeSpec, kind: str, vmid: int, lines: dict[str, str]) -> str:
    """Write a guest config (keys sorted, as PVE writes them); returns its path in the node."""
    sub = "qemu-server" if kind == "qemu" else "lxc"
    path = fs_dir(node, "etc-pve") / "nodes" / node.name / sub / f"{vmid}.conf"
    path.write_text("".join(f"{k}: {v}\n" for k, v in sorted(lines.items())))
    return f"/etc/pve/nodes/{node.name}/{sub}/{vmid}.conf"


def _vm_lines(vmid: int, name: str, disks: dict[str, str], mac: str, bridge: str = "vmbr0") -> dict:
    lines = {
        "boot": "order=scsi0;net0", "cores": "2", "cpu": "x86-64-v2-AES", "memory": "2048",
        "meta": f"creation-qemu=9.0.2,ctime={CTIME}", "name": name,
        "net0": f"virtio={mac},bridge={bridge},firewall=1", "numa": "0", "ostype": "l26",
        "scsihw": "virtio-scsi-single", "smbios1": f"uuid={uuid.uuid4()}", "sockets": "1",
        "vmgenid": str(uuid.uuid4()),
    }
    for slot, vol in disks.items():
        lines[slot] = f"{vol},iothread=1,size={DISK_MIB}M"
    return lines


def _vm_disk(node: NodeSpec, vmid: int, idx: int, storage: str) -> tuple[str, dict]:
    """Create one VM disk on a storage of kind zfs/btrfs/dir; returns (volid, record)."""
    data = os.urandom(DISK_MIB * MIB)
    name = f"vm-{vmid}-disk-{idx}"
    if storage == "local-zfs":
        ds = f"rpool/data/{name}"
        run(node, ["zfs", "create", ds], check=True)
        rec = _write(node, f"/rpool/data/{name}/disk.raw", data) | {"dataset": ds}
        return f"local-zfs:{name}", rec
    if storage == "local-btrfs":
        d = f"/var/lib/pve/local-btrfs/images/{vmid}"
        run(node, ["mkdir", "-p", d], check=True)
        run(node, ["btrfs", "-q", "subvolume", "create", f"{d}/{name}"], check=True)
        rec = _write(node, f"{d}/{name}/disk.raw", data) | {"subvolume": f"{d}/{name}"}
        return f"local-btrfs:{vmid}/{name}.raw", rec
    d = f"/var/lib/vz/images/{vmid}"
    run(node, ["mkdir", "-p", d], check=True)
    return f"local:{vmid}/{name}.raw", _write(node, f"{d}/{name}.raw", data)


def seed_vm(node: NodeSpec, vmid: int, name: str, storage: str, ndisks: int, mac: str) -> dict:
    """A VM with ``ndisks`` random disks on ``storage``; returns its state.json record."""
    disks, records = {}, {}
    for i in range(ndisks):
        volid, rec = _vm_disk(node, vmid, i, storage)
        disks[f"scsi{i}"] = volid
        records[f"scsi{i}"] = rec | {"volid": volid}
    conf = _conf(node, "qemu", vmid, _vm_lines(vmid, name, disks, mac))
    return {"vmid": vmid, "type": "qemu", "node": node.name, "name": name, "config": conf,
            "disks": records}


CT_FILES = {
    "etc/hostname": b"ct101\n",
    "etc/os-release": b'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nID=debian\nVERSION_ID="12"\n',
    "var/www/index.html": b"<html><body>dapx lab ct101</body></html>\n",
}


def seed_ct(node: NodeSpec, vmid: int = 101) -> dict:
    """A container with a subvol rootfs on local-zfs holding a few files (one random)."""
    vol = f"subvol-{vmid}-disk-0"
    ds = f"rpool/data/{vol}"
    run(node, ["zfs", "create", "-o", "refquota=1G", ds], check=True)
    root = f"/rpool/data/{vol}"
    files = dict(CT_FILES) | {"root/data.bin": os.urandom(8 * MIB)}
    run(node, ["mkdir", "-p", *sorted({f"{root}/{os.path.dirname(p)}" for p in files})], check=True)
    records = {rel: _write(node, f"{root}/{rel}", data) for rel, data in files.items()}
    lines = {"arch": "amd64", "cores": "1", "features": "nesting=1", "hostname": "ct101",
             "memory": "512", "ostype": "debian", "swap": "512", "unprivileged": "1",
             "net0": "name=eth0,bridge=vmbr0,firewall=1,hwaddr=BC:24:11:5A:10:65,ip=dhcp,type=veth",
             "rootfs": f"local-zfs:{vol},size=1G"}
    conf = _conf(node, "lxc", vmid, lines)
    return {"vmid": vmid, "type": "lxc", "node": node.name, "name": "ct101", "config": conf,
            "rootfs": {"volid": f"local-zfs:{vol}", "dataset": ds, "path": root},
            "files": records}


def seed_node(node: NodeSpec) -> dict[str, dict]:
    """Seed this node's guests; returns {vmid: record}."""
    if node.name == "pve1":
        return {"100": seed_vm(node, 100, "web01", "local-zfs", 2, "BC:24:11:5A:10:64"),
                "101": seed_ct(node)}
    if node.name == "pve2":
        return {"200": seed_vm(node, 200, "db01", "local-btrfs", 1, "BC:24:11:5A:10:C8")}
    if node.name == "pve3":
        return {"300": seed_vm(node, 300, "app01", "local", 1, "BC:24:11:5A:11:2C")}
    return {}

