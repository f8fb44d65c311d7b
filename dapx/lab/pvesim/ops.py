"""Task bodies: what qm/pct/vzdump and the API's workers do. Each is fn(log, **args).

Run in a worker process for the API (tasks.spawn) or in the foreground by the CLI tools.
Messages follow PVE's task logs where the product or an admin may read them.
"""

from __future__ import annotations

import time
from typing import Callable

from . import guestconf, guests, storage
from .guestconf import GuestConf

Log = Callable[[str], None]


def _locked(node: str, kind: str, vmid: int, lock: str) -> GuestConf:
    conf = guests.require(node, kind, vmid)
    if conf.current.get("lock"):
        raise RuntimeError(f"VM is locked ({conf.current['lock']})")
    conf.current["lock"] = lock
    guests.write(node, kind, vmid, conf)
    return conf


def _unlock(node: str, kind: str, vmid: int) -> None:
    conf = guests.require(node, kind, vmid)
    conf.current.pop("lock", None)
    guests.write(node, kind, vmid, conf)


def start(log: Log, node: str, kind: str, vmid: int) -> None:
    """Mark the guest running (the lab has no hypervisor)."""
    conf = guests.require(node, kind, vmid)
    if conf.current.get("lock"):
        raise RuntimeError(f"VM is locked ({conf.current['lock']})")
    if guests.is_running(vmid):
        raise RuntimeError(f"VM {vmid} already running")
    guests.set_running(vmid, True)


def stop(log: Log, node: str, kind: str, vmid: int) -> None:
    """Mark the guest stopped."""
    guests.require(node, kind, vmid)
    guests.set_running(vmid, False)


def shutdown(log: Log, node: str, kind: str, vmid: int) -> None:
    """A clean shutdown: same as stop here; PVE fails when the guest is not running."""
    guests.require(node, kind, vmid)
    if not guests.is_running(vmid):
        raise RuntimeError(f"VM {vmid} not running")
    guests.set_running(vmid, False)


def snapshot(log: Log, node: str, kind: str, vmid: int, snapname: str, description: str = "",
             vmstate: int = 0) -> None:
    """Copy the current config into [snapname], snapshot every disk, set parent."""
    conf = guests.require(node, kind, vmid)
    if snapname in conf.snapshots:
        raise RuntimeError(f"snapshot name '{snapname}' already used")
    vols = guestconf.disk_volumes(conf.current)
    for key, volid in vols.items():
        if key.startswith("unused"):
            continue
        st = storage.get(storage.split_volid(volid)[0])
        if st.type not in ("zfspool", "btrfs"):
            raise RuntimeError("snapshot feature is not available")
    conf = _locked(node, kind, vmid, "snapshot")
    try:
        for key, volid in vols.items():
            if not key.startswith("unused"):
                log(f"snapshotting '{key}' ({volid})")
                storage.snapshot(volid, snapname)
    except Exception:
        _unlock(node, kind, vmid)
        raise
    snap = {k: v for k, v in conf.current.items() if k not in ("lock", "parent")}
    if conf.current.get("parent"):
        snap["parent"] = conf.current["parent"]
    snap["snaptime"] = str(int(time.time()))
    if description:
        snap["description"] = description
    conf.snapshots[snapname] = snap
    conf.current["parent"] = snapname
    conf.current.pop("lock", None)
    guests.write(node, kind, vmid, conf)


def delsnapshot(log: Log, node: str, kind: str, vmid: int, snapname: str, force: int = 0) -> None:
    """Remove [snapname] and its disk snapshots; re-link parents as PVE does."""
    conf = guests.require(node, kind, vmid)
    snap = conf.snapshots.get(snapname)
    if snap is None:
        raise RuntimeError(f"snapshot '{snapname}' does not exist")
    for key, volid in guestconf.disk_volumes(snap).items():
        try:
            storage.delsnapshot(volid, snapname)
        except Exception as exc:
            if not force:
                raise
            log(f"delete snapshot '{snapname}' of {volid} failed: {exc}")
    parent = snap.get("parent")
    for values in [conf.current, *conf.snapshots.values()]:
        if values.get("parent") == snapname:
            if parent:
                values["parent"] = parent
            else:
                values.pop("parent")
    del conf.snapshots[snapname]
    guests.write(node, kind, vmid, conf)


def rollback(log: Log, node: str, kind: str, vmid: int, snapname: str, start: int = 0) -> None:
    """Disks back to snapname, config back to the snapshot's (guest stopped first)."""
    conf = guests.require(node, kind, vmid)
    snap = conf.snapshots.get(snapname)
    if snap is None:
        raise RuntimeError(f"snapshot '{snapname}' does not exist")
    guests.set_running(vmid, False)
    for key, volid in guestconf.disk_volumes(snap).items():
        log(f"rollback '{key}' ({volid}) to '{snapname}'")
        storage.rollback(volid, snapname)
    current = {k: v for k, v in snap.items() if k not in ("snaptime", "description", "vmstate", "parent")}
    current["parent"] = snapname
    conf.current = current
    guests.write(node, kind, vmid, conf)
    if start:
        guests.set_running(vmid, True)


def destroy(log: Log, node: str, kind: str, vmid: int, purge: int = 0, unreferenced: int = 0) -> None:
    """Free every volume the guest owns (current, snapshots, unused), then remove its config;
    with ``unreferenced`` also the volumes of this VMID no config names (a killed restore's)."""
    conf = guests.require(node, kind, vmid)
    if guests.is_running(vmid):
        raise RuntimeError(f"VM {vmid} is running - destroy failed")
    if conf.current.get("protection") == "1":
        raise RuntimeError("can't remove VM " + str(vmid) + " - protection mode enabled")
    vols = set(guestconf.disk_volumes(conf.current).values())
    for snap in conf.snapshots.values():
        vols |= set(guestconf.disk_volumes(snap).values())
    for volid in sorted(vols):
        if storage.volume_vmid(volid) != vmid:
            continue  # a disk of another guest (linked or shared): PVE leaves it
        try:
            storage.free(volid)
            log(f"Removed volume '{volid}'")
        except Exception as exc:
            log(f"Could not remove disk '{volid}', check manually: {exc}")
    if unreferenced:
        _free_unreferenced(log, vmid, vols)
    guests.conf_path(node, kind, vmid).unlink()


def _free_unreferenced(log: Log, vmid: int, referenced: set[str]) -> None:
    for sid, st in storage.load().items():
        if st.type == "pbs" or not ({"images", "rootdir"} & set(st.content)):
            continue
        try:
            found = storage.list_volumes(sid, vmid)
        except Exception:  # an unreachable storage is skipped, as PVE warns and goes on
            continue
        for vol in found:
            if vol["volid"] not in referenced:
                storage.free(vol["volid"])
                log(f"Removed volume '{vol['volid']}' (not referenced)")


def create(log: Log, node: str, kind: str, vmid: int, values: dict[str, str]) -> None:
    """Allocate new disks ('STORAGE:SIZE'), fill PVE's defaults, write the config."""
    if guests.locate(vmid):
        raise RuntimeError(f"unable to create VM {vmid} - VM {vmid} already exists on node '{guests.locate(vmid)[0]}'")
    values = dict(values)
    guests.conf_path(node, kind, vmid).parent.mkdir(parents=True, exist_ok=True)
    guests.write(node, kind, vmid, GuestConf({"lock": "create"}))
    try:
        for volid in guests.alloc_new_disks(kind, vmid, values):
            log(f"created volume '{volid}'")
        guests.fill_defaults(kind, values)
    except Exception:
        guests.conf_path(node, kind, vmid).unlink()
        raise
    guests.write(node, kind, vmid, GuestConf(values))


def _registry() -> dict[str, Callable]:
    from . import backup, migrate
    return {"start": start, "stop": stop, "shutdown": shutdown, "snapshot": snapshot,
            "delsnapshot": delsnapshot, "rollback": rollback, "destroy": destroy, "create": create,
            "vzdump": backup.vzdump, "restore": backup.restore, "migrate": migrate.migrate,
            "remote_migrate": migrate.remote_migrate}


class _Ops(dict):
    def __missing__(self, key: str) -> Callable:
        self.update(_registry())
        return dict.__getitem__(self, key)


OPS: dict[str, Callable] = _Ops()
