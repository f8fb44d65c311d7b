"""vzdump to stdout and restore from stdin: ``vzdump VMID --stdout``, ``qmrestore - VMID``,
``pct restore VMID -`` (what a copy streamed node to node runs).

Real vzdump writes a VMA archive for a VM and a tar for a container; the lab writes a tar for
both (see README): a VM's is ``qemu-server.conf`` then ``drive-<key>.raw`` per disk, a
container's is ``./etc/vzdump/pct.conf`` then its root filesystem (mount points are left out,
as in the lab's PBS backups). Both sides stream: nothing is buffered whole or stored. As on
PVE, the source guest holds the ``backup`` lock while it is read, and the restored guest holds
``create`` until it is complete; a restore that fails removes what it made, a restore that is
killed leaves its locked config and volumes behind (``qm unlock``, then destroy with
``destroy-unreferenced-disks``).
"""

from __future__ import annotations

import shutil
import sys
import tarfile
import time
from typing import BinaryIO

from . import guestconf, guests, storage
from .guestconf import GuestConf
from .ops import Log, _unlock

CT_CONF = "./etc/vzdump/pct.conf"


def _add_file(tar: tarfile.TarFile, name: str, src: BinaryIO, size: int) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = size, int(time.time()), 0o600
    tar.addfile(info, src)


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    import io

    _add_file(tar, name, io.BytesIO(data), len(data))


def vzdump_stdout(log: Log, node: str, vmid: int, out: BinaryIO, mode: str = "snapshot") -> None:
    """Write the archive of guest ``vmid`` (on ``node``) to ``out``; the guest is locked
    ``backup`` meanwhile."""
    where = guests.locate(vmid)
    if where is None or where[0] != node:
        raise RuntimeError(f"guest {vmid} does not exist on node '{node}'")
    kind = where[1]
    conf = guests.require(node, kind, vmid)
    if conf.current.get("lock"):
        raise RuntimeError(f"VM is locked ({conf.current['lock']})")
    log(f"INFO: Starting Backup of VM {vmid} ({kind})")
    log(f"INFO: backup mode: {mode if guests.is_running(vmid) else 'stop'}")
    text = guestconf.format_conf(GuestConf(dict(conf.current)))
    conf.current["lock"] = "backup"
    guests.write(node, kind, vmid, conf)
    try:
        with tarfile.open(fileobj=out, mode="w|") as tar:
            total = _write_archive(log, tar, kind, conf.current, text)
        out.flush()
        log(f"INFO: archive of {total} bytes written to stdout")
    finally:
        _unlock(node, kind, vmid)
    log(f"INFO: Finished Backup of VM {vmid}")


def _write_archive(log: Log, tar: tarfile.TarFile, kind: str, current: dict[str, str],
                   text: str) -> int:
    if kind == "lxc":
        _add_bytes(tar, CT_CONF, text.encode())
        rootfs = guestconf.disk_volumes(current).get("rootfs")
        if rootfs:
            tar.add(str(storage.path(rootfs)), arcname=".", recursive=True)
        return tar.offset
    _add_bytes(tar, "qemu-server.conf", text.encode())
    for key, volid in guestconf.disk_volumes(current).items():
        if key.startswith("unused"):
            continue
        path = storage.path(volid)
        size = path.stat().st_size
        log(f"INFO: {key}: {volid} ({size} bytes)")
        with open(path, "rb") as fh:
            _add_file(tar, f"drive-{key}.raw", fh, size)
    return tar.offset


def restore_stdin(log: Log, node: str, kind: str, vmid: int, src: BinaryIO,
                  storage_id: str | None = None, unique: int = 0) -> None:
    """Create guest ``vmid`` on ``node`` from the archive on ``src``, disks on ``storage_id``
    (default: each disk's own storage id). The VMID must be free."""
    existing = guests.locate(vmid)
    if existing:
        noun = "VM" if kind == "qemu" else "CT"
        raise RuntimeError(f"unable to restore {noun} {vmid} - {noun} {vmid} already exists on "
                           f"node '{existing[0]}'")
    log(f"restore vzdump archive from stdin to {'VM' if kind == 'qemu' else 'CT'} {vmid}")
    guests.write(node, kind, vmid, GuestConf({"lock": "create"}))
    made: list[str] = []
    try:
        with tarfile.open(fileobj=src, mode="r|") as tar:
            values = (_restore_vm if kind == "qemu" else _restore_ct)(log, tar, vmid,
                                                                     storage_id, made)
    except Exception:
        for volid in made:
            try:
                storage.free(volid)
            except Exception:  # cleaning up: the restore's own error is the one to report
                pass
        guests.conf_path(node, kind, vmid).unlink(missing_ok=True)
        raise
    values.pop("lock", None)
    if unique:
        values.pop("vmgenid", None)
        for key in [k for k in values if k.startswith("net")]:
            values[key] = _new_mac(kind, values[key])
        guests.fill_defaults(kind, values)
    guests.write(node, kind, vmid, GuestConf(values))
    log("restore done")


def _new_mac(kind: str, value: str) -> str:
    first, props = guestconf.split_prop(value)
    if kind == "lxc":
        props.pop("hwaddr", None)
        return guestconf.join_prop(first, props)
    if first and "=" not in first:
        return value
    model = next((m for m in ("virtio", "e1000", "rtl8139", "vmxnet3", "e1000e") if m in props),
                 None)
    if model:
        props[model] = ""
    return guestconf.join_prop(first, props)


def _conf_member(tar: tarfile.TarFile, name: str) -> dict[str, str]:
    member = tar.next()
    if member is None or member.name.removeprefix("./") != name.removeprefix("./"):
        raise RuntimeError(f"not a vzdump archive (no {name} first)")
    fh = tar.extractfile(member)
    assert fh is not None
    return dict(guestconf.parse(fh.read().decode()).current)


def _restore_vm(log: Log, tar: tarfile.TarFile, vmid: int, storage_id: str | None,
                made: list[str]) -> dict[str, str]:
    values = _conf_member(tar, "qemu-server.conf")
    disks = guestconf.disk_volumes(values)
    restored = set()
    while (member := tar.next()) is not None:  # iterating would yield the config again
        key = member.name.removeprefix("drive-").removesuffix(".raw")
        if key not in disks:
            raise RuntimeError(f"archive holds {member.name}, which the config does not name")
        target = storage_id or storage.split_volid(disks[key])[0]
        volid = storage.alloc(target, vmid, member.size)
        made.append(volid)
        log(f"new volume ID is '{volid}'")
        fh = tar.extractfile(member)
        assert fh is not None
        with open(storage.path(volid), "r+b") as out:
            shutil.copyfileobj(fh, out, 1024 * 1024)
        _, props = guestconf.split_prop(values[key])
        props["size"] = storage.format_size(member.size)
        values[key] = guestconf.join_prop(volid, props)
        restored.add(key)
    missing = [k for k in disks if not k.startswith("unused") and k not in restored]
    if missing:
        raise RuntimeError(f"archive ended before disk {', '.join(missing)}")
    return {k: v for k, v in values.items() if not k.startswith("unused")}


def _restore_ct(log: Log, tar: tarfile.TarFile, vmid: int, storage_id: str | None,
                made: list[str]) -> dict[str, str]:
    values = _conf_member(tar, CT_CONF)
    first, props = guestconf.split_prop(values.get("rootfs", ""))
    target = storage_id or storage.split_volid(first or "")[0]
    size = storage.parse_size(props.get("size", "0"), "G")
    volid = storage.alloc(target, vmid, size, subvol=True)
    made.append(volid)
    root = storage.path(volid)
    while (member := tar.next()) is not None:
        tar.extract(member, str(root), filter="tar")
    values["rootfs"] = guestconf.join_prop(volid, props)
    for key in [k for k in values if k.startswith("mp") or k.startswith("unused")]:
        values.pop(key)  # mount points are not in the lab's archive
    return values


def stdio() -> tuple[BinaryIO, BinaryIO]:
    """The process's binary stdin and stdout (the archive's two ends)."""
    return sys.stdin.buffer, sys.stdout.buffer
