"""vzdump to a PBS storage and restore from it (qmrestore / POST .../qemu with archive=).

Archive layout on the PBS side (see pbsstore.py): qemu-server.conf.blob (config text, snapshot
sections dropped), drive-<key>.img.fidx (raw disk bytes) per disk; for containers pct.conf.blob
and root.pxar.didx (a tar of the rootfs; mount points are not backed up in the lab).
"""

from __future__ import annotations

import datetime as dt
import io
import os
import tarfile
import tempfile
import time
from pathlib import Path

from . import guestconf, guests, pbsclient, storage
from .guestconf import GuestConf
from .ops import Log, _unlock

MIB = 1024 * 1024


def _stamp(epoch: float) -> str:
    return dt.datetime.fromtimestamp(epoch).strftime("%Y-%m-%d %H:%M:%S")


def vzdump(log: Log, node: str, vmids: list[int], storage_id: str, mode: str = "snapshot",
           notes: str = "", cmdline: str = "") -> None:
    """Back up each guest of this node to the pbs storage; 'job errors' when any failed."""
    st = storage.get(storage_id)
    log(f"INFO: starting new backup job: {cmdline or 'vzdump ' + ' '.join(map(str, vmids))}")
    if st.type != "pbs":
        raise RuntimeError(f"storage '{storage_id}' is not a Proxmox Backup Server storage (lab supports pbs only)")
    external = sorted(v for v in vmids if (guests.locate(v) or (node,))[0] != node)
    if external:  # PVE backs up local guests only; others are skipped, the task still ends OK
        log(f"INFO: skip external VMs: {', '.join(map(str, external))}")
    failed = 0
    for vmid in (v for v in vmids if v not in external):
        try:
            _backup_one(log, node, vmid, st, mode, notes)
        except Exception as exc:  # one guest failing does not stop the others, as vzdump does
            log(f"ERROR: Backup of VM {vmid} failed - {exc}")
            failed += 1
    if failed:
        raise RuntimeError("job errors")
    log("INFO: Backup job finished successfully")


def _backup_one(log: Log, node: str, vmid: int, st: storage.Storage, mode: str, notes: str) -> None:
    where = guests.locate(vmid)
    if where is None or where[0] != node:
        raise RuntimeError(f"guest {vmid} does not exist on node '{node}'")
    kind = where[1]
    t0 = time.time()
    log(f"INFO: Starting Backup of VM {vmid} ({kind})")
    log(f"INFO: Backup started at {_stamp(t0)}")
    conf = guests.require(node, kind, vmid)
    if conf.current.get("lock"):
        raise RuntimeError(f"VM is locked ({conf.current['lock']})")
    log(f"INFO: status = {'running' if guests.is_running(vmid) else 'stopped'}")
    log(f"INFO: backup mode: {mode if guests.is_running(vmid) else 'stop'}")
    if kind == "qemu" and conf.current.get("bios") == "ovmf" and "efidisk0" not in conf.current:
        log("WARN: no efidisk configured! Using temporary efivars disk.")
    text = guestconf.format_conf(GuestConf(dict(conf.current)))
    conf.current["lock"] = "backup"
    guests.write(node, kind, vmid, conf)
    try:
        epoch = int(t0)
        btype = "vm" if kind == "qemu" else "ct"
        log(f"INFO: creating Proxmox Backup Server archive '{btype}/{vmid}/{_iso(epoch)}'")
        total = _send_archives(log, st, btype, vmid, epoch, kind, conf.current, text)
        pbsclient.finish(st, btype, str(vmid), epoch, notes)
        secs = max(time.time() - t0, 0.001)
        log(f"INFO: transferred {total / MIB:.2f} MiB in {int(secs)} seconds ({total / MIB / secs:.1f} MiB/s)")
    finally:
        _unlock(node, kind, vmid)
    log(f"INFO: Finished Backup of VM {vmid} ({time.strftime('%H:%M:%S', time.gmtime(time.time() - t0))})")
    log(f"INFO: Backup finished at {_stamp(time.time())}")


def _iso(epoch: int) -> str:
    return dt.datetime.fromtimestamp(epoch, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _send_archives(log: Log, st: storage.Storage, btype: str, vmid: int, epoch: int, kind: str,
                   current: dict[str, str], text: str) -> int:
    bid = str(vmid)
    blob = "qemu-server.conf.blob" if kind == "qemu" else "pct.conf.blob"
    data = text.encode()
    pbsclient.upload(st, btype, bid, epoch, blob, io.BytesIO(data), len(data))
    total = 0
    for key, volid in guestconf.disk_volumes(current).items():
        if key.startswith("unused"):
            continue
        p = storage.path(volid)
        if kind == "lxc":
            if key != "rootfs":
                log(f"INFO: excluding volume mount point {key} ('{volid}') from backup (lab)")
                continue
            total += _send_tar(st, btype, bid, epoch, p)
            continue
        size = p.stat().st_size
        log(f"INFO: {key}: dirty-bitmap status: created new")
        with open(p, "rb") as fh:
            pbsclient.upload(st, btype, bid, epoch, f"drive-{key}.img.fidx", fh, size)
        total += size
    return total


def _send_tar(st: storage.Storage, btype: str, bid: str, epoch: int, rootdir: Path) -> int:
    with tempfile.TemporaryFile() as tmp:
        with tarfile.open(fileobj=tmp, mode="w") as tar:
            tar.add(str(rootdir), arcname=".")
        size = tmp.tell()
        tmp.seek(0)
        pbsclient.upload(st, btype, bid, epoch, "root.pxar.didx", tmp, size)
    return size


def restore(log: Log, node: str, kind: str, vmid: int, archive: str, storage_id: str | None = None,
            force: int = 0, unique: int = 0) -> None:
    """Create guest vmid on node from a PBS archive, disks on storage_id (default: the original)."""
    sid, volname = storage.split_volid(archive)
    st = storage.get(sid)
    btype, bid, epoch = pbsclient.parse_backup_volname(volname)
    existing = guests.locate(vmid)
    if existing and not force:
        raise RuntimeError(f"unable to restore VM {vmid} - VM {vmid} already exists on node '{existing[0]}'")
    if existing:
        from .ops import destroy
        destroy(log, existing[0], existing[1], vmid)
    log(f"restore {archive} to VM {vmid}")
    blob = "qemu-server.conf.blob" if kind == "qemu" else "pct.conf.blob"
    buf = io.BytesIO()
    pbsclient.download(st, btype, bid, epoch, blob, buf)
    values = guestconf.parse(buf.getvalue().decode()).current
    values.pop("lock", None)
    guests.write(node, kind, vmid, GuestConf({"lock": "create"}))
    made: list[str] = []
    try:
        for key, old in guestconf.disk_volumes(values).items():
            values[key] = _restore_disk(log, st, btype, bid, epoch, kind, vmid, key, old, values[key], storage_id,
                                        made)
    except Exception:  # as PVE: the volumes restored so far are destroyed, then the config
        for volid in made:
            try:
                storage.free(volid)
                log(f"temporary volume '{volid}' successfully removed")
            except Exception as exc:  # noqa: BLE001 - cleanup reports and goes on
                log(f"removing volume '{volid}' failed: {exc}")
        guests.conf_path(node, kind, vmid).unlink()
        raise
    if unique:
        values.pop("vmgenid", None)
        _drop_macs(kind, values)
        guests.fill_defaults(kind, values)
    guests.write(node, kind, vmid, GuestConf(values))
    log("restore done")


def _restore_disk(log: Log, st: storage.Storage, btype: str, bid: str, epoch: int, kind: str, vmid: int,
                  key: str, old: str, value: str, storage_id: str | None, made: list[str]) -> str:
    target = storage_id or storage.split_volid(old)[0]
    _, props = guestconf.split_prop(value)
    if kind == "lxc":
        if key != "rootfs":
            return value
        size = storage.parse_size(props.get("size", "0"), "G")
        volid = storage.alloc(target, vmid, size, subvol=True)
        made.append(volid)
        with tempfile.TemporaryFile() as tmp:
            pbsclient.download(st, btype, bid, epoch, "root.pxar.didx", tmp)
            tmp.seek(0)
            with tarfile.open(fileobj=tmp) as tar:
                tar.extractall(str(storage.path(volid)), filter="tar")
    else:
        size = next(f["size"] for f in pbsclient.files(st, btype, bid, epoch)
                    if f["filename"] == f"drive-{key}.img.fidx")
        volid = storage.alloc(target, vmid, size)
        made.append(volid)
        log(f"new volume ID is '{volid}'")
        with open(storage.path(volid), "r+b") as fh:
            pbsclient.download(st, btype, bid, epoch, f"drive-{key}.img.fidx", fh)
            fh.flush()
            os.fsync(fh.fileno())
    props["size"] = storage.format_size(size)
    return guestconf.join_prop(volid, props)


def _drop_macs(kind: str, values: dict[str, str]) -> None:
    """Remove each network device's MAC so fill_defaults gives it a new one (restore unique)."""
    for key, value in list(values.items()):
        if not (key.startswith("net") and key[3:].isdigit()):
            continue
        first, props = guestconf.split_prop(value)
        if kind == "lxc":
            props.pop("hwaddr", None)
        else:
            model = next((m for m in ("virtio", "e1000", "rtl8139", "vmxnet3", "e1000e") if m in props), None)
            if model:
                props[model] = ""
        values[key] = guestconf.join_prop(first, props)


def extract_config(volid: str) -> str:
    """The guest config a PBS backup holds (GET /nodes/{node}/vzdump/extractconfig)."""
    sid, volname = storage.split_volid(volid)
    st = storage.get(sid)
    if st.type != "pbs":
        raise RuntimeError(f"storage '{sid}' is not a Proxmox Backup Server storage (lab supports pbs only)")
    btype, bid, epoch = pbsclient.parse_backup_volname(volname)
    buf = io.BytesIO()
    pbsclient.download(st, btype, bid, epoch, "qemu-server.conf.blob" if btype == "vm" else "pct.conf.blob", buf)
    return buf.getvalue().decode()
