"""Migration: within the cluster (config moves to the target node's directory in the shared
/etc/pve; local disks are piped `zfs send | ssh target zfs recv`, or btrfs send/receive, or
their bytes, as the cluster members trust each other over SSH) and remote_migrate to another
site's API.

As on PVE the guest holds the ``migrate`` lock meanwhile and a failure leaves it on the
source as it was. A storage map (``targetstorage`` / ``target-storage``) sends disks to other
storages: a disk whose storage changes is allocated on the target (`pvesm alloc`) and its
bytes (a container's files) are copied. A running VM moved ``online`` and a container moved
in ``restart`` mode run on the target afterwards.
"""

from __future__ import annotations

import shlex
import subprocess

from . import guestconf, guests, paths, storage
from .ops import Log, _locked, _unlock

SNAP = "__migration__"


def _ssh_argv(address: str, argv: list[str]) -> list[str]:
    # the lab pins cluster members' host keys in root's known_hosts, as pvecm does
    return ["ssh", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes", f"root@{address}", shlex.join(argv)]


def _pipe(send: list[str], recv: list[str]) -> None:
    """send | recv, both argv; raises with stderr of the side that failed."""
    src = subprocess.Popen(send, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    dst = subprocess.run(recv, stdin=src.stdout, capture_output=True, check=False)
    assert src.stdout is not None
    src.stdout.close()
    src_err = src.stderr.read() if src.stderr else b""
    if src.wait() != 0 or dst.returncode != 0:
        err = (src_err + dst.stderr).decode("utf-8", "replace").strip()
        raise RuntimeError(f"storage migration failed: {err}")


def pairs(spec: str) -> dict[str, str]:
    """PVE's storage-pair-list / bridge-pair-list: 'a:b,c:d'; one id maps everything to it
    ('*'); '1' (or nothing) maps each to itself ({})."""
    spec = (spec or "").strip()
    if spec in ("", "1"):
        return {}
    items = [p.split(":", 1) for p in spec.split(",") if p]
    if len(items) == 1 and len(items[0]) == 1:
        return {"*": items[0][0]}
    return {a: b for a, b in (i if len(i) == 2 else (i[0], i[0]) for i in items)}


def mapped(mapping: dict[str, str], sid: str) -> str:
    return mapping.get(sid, mapping.get("*", sid))


def _move_volume(log: Log, volid: str, address: str) -> None:
    st = storage.get(storage.split_volid(volid)[0])
    vmid, name, _ = storage.parse_volname(storage.split_volid(volid)[1])
    log(f"copying local disk '{volid}' to target node")
    if st.type == "zfspool":
        ds = f"{st.opts['pool']}/{name}"
        subprocess.run(["zfs", "snapshot", f"{ds}@{SNAP}"], check=True)
        _pipe(["zfs", "send", "-R", f"{ds}@{SNAP}"], _ssh_argv(address, ["zfs", "recv", "-F", ds]))
        subprocess.run(_ssh_argv(address, ["zfs", "destroy", f"{ds}@{SNAP}"]), check=True)
        subprocess.run(["zfs", "destroy", f"{ds}@{SNAP}"], check=False)
    elif st.type == "btrfs":
        sub = storage.path(volid).parent if not name.startswith("subvol-") else storage.path(volid)
        snap = f"{sub}@{SNAP}"
        subprocess.run(["btrfs", "subvolume", "snapshot", "-r", str(sub), snap], check=True)
        parent = str(sub.parent)
        subprocess.run(_ssh_argv(address, ["mkdir", "-p", parent]), check=True)
        _pipe(["btrfs", "send", snap], _ssh_argv(address, ["btrfs", "receive", parent]))
        subprocess.run(_ssh_argv(address, ["btrfs", "subvolume", "snapshot", snap, str(sub)]), check=True)
        subprocess.run(_ssh_argv(address, ["btrfs", "subvolume", "delete", snap]), check=True)
        subprocess.run(["btrfs", "subvolume", "delete", snap], check=True)
    else:
        p = storage.path(volid)
        subprocess.run(_ssh_argv(address, ["mkdir", "-p", str(p.parent)]), check=True)
        _pipe(["cat", str(p)], _ssh_argv(address, ["dd", f"of={p}", "bs=1M", "status=none"]))


def _copy_to_storage(log: Log, volid: str, target_sid: str, vmid: int, address: str) -> str:
    """Copy a volume to another storage of the target node; the new volume id."""
    subvol = storage.parse_volname(storage.split_volid(volid)[1])[2]
    src = storage.path(volid)
    size = storage.size_of(volid)
    log(f"copying local disk '{volid}' to storage '{target_sid}' on the target node")
    alloc = ["pvesm", "alloc", target_sid, str(vmid), "", f"{max(size // 1024, 1)}K"]
    out = subprocess.run(_ssh_argv(address, alloc + (["--format", "subvol"] if subvol else [])),
                         capture_output=True, text=True, check=True).stdout
    new = out.strip().split("'")[1]
    path = subprocess.run(_ssh_argv(address, ["pvesm", "path", new]), capture_output=True,
                          text=True, check=True).stdout.strip()
    if subvol:
        _pipe(["tar", "-C", str(src), "-cf", "-", "."], _ssh_argv(address, ["tar", "-C", path, "-xf", "-"]))
    else:
        _pipe(["cat", str(src)], _ssh_argv(address, ["dd", f"of={path}", "bs=1M", "conv=notrunc",
                                                      "status=none"]))
    return new


def migrate(log: Log, node: str, kind: str, vmid: int, target: str, online: int = 0,
            restart: int = 0, storage_map: str = "") -> None:
    """Move guest vmid from node to target (a member of this cluster)."""
    cfg = paths.node_config()
    members = cfg.get("cluster_nodes") or {}
    if target not in members or target == node:
        raise RuntimeError(f"target node '{target}' is not a cluster member" if target != node
                           else "target is local node.")
    running = guests.is_running(vmid)
    if running and kind == "lxc" and not restart:
        raise RuntimeError("running container can only be migrated in restart mode")
    conf = _locked(node, kind, vmid, "migrate")
    noun = "VM" if kind == "qemu" else "CT"
    log(f"starting migration of {noun} {vmid} to node '{target}' ({members[target]})")
    try:
        if running and kind == "lxc":
            log(f"shutdown CT {vmid}")
            guests.set_running(vmid, False)
        new = _move_disks(log, conf.current, vmid, members[target], pairs(storage_map))
    except Exception:
        if running and kind == "lxc":
            guests.set_running(vmid, True)
        _unlock(node, kind, vmid)
        raise
    conf.current.update(new)
    conf.current.pop("lock", None)
    guests.write(node, kind, vmid, conf)
    dst = guests.conf_path(target, kind, vmid)
    dst.parent.mkdir(parents=True, exist_ok=True)
    guests.conf_path(node, kind, vmid).rename(dst)
    guests.set_running(vmid, False)
    if running and (online or restart):
        log(f"start {noun} {vmid} on the target node")
        subprocess.run(_ssh_argv(members[target], ["qm" if kind == "qemu" else "pct", "start",
                                                   str(vmid)]), check=True, capture_output=True)
    log("migration finished successfully")


def _move_disks(log: Log, current: dict[str, str], vmid: int, address: str,
                mapping: dict[str, str]) -> dict[str, str]:
    """Copy every local disk to the target; the config values that changed (new volumes);
    the source volumes are freed once every disk is across."""
    changed, moved = {}, []
    for key, volid in guestconf.disk_volumes(current).items():
        sid = storage.split_volid(volid)[0]
        if storage.get(sid).type not in ("zfspool", "btrfs", "dir"):
            continue
        target_sid = mapped(mapping, sid)
        if target_sid == sid:
            _move_volume(log, volid, address)
        else:
            first, props = guestconf.split_prop(current[key])
            changed[key] = guestconf.join_prop(_copy_to_storage(log, volid, target_sid, vmid, address),
                                               props)
        moved.append(volid)
    for volid in moved:
        storage.free(volid)
    return changed


def remote_migrate(log: Log, node: str, kind: str, vmid: int, endpoint: dict, target_vmid: int,
                   target_storage: str, target_bridge: str, delete: int = 0, online: int = 0,
                   restart: int = 0) -> None:
    """Copy a guest to another site's PVE API (see remote.py); delete the source when asked.
    A running guest (online / restart) runs on the target afterwards."""
    from . import remote
    conf = guests.require(node, kind, vmid)
    if conf.snapshots:
        raise RuntimeError("remote migration with snapshots not supported yet")
    running = guests.is_running(vmid)
    _locked(node, kind, vmid, "migrate")
    try:
        remote.copy_guest(log, node, kind, vmid, endpoint, target_vmid, pairs(target_storage),
                          pairs(target_bridge), start=running and bool(online or restart))
    finally:
        _unlock(node, kind, vmid)
    if delete:
        from .ops import destroy
        guests.set_running(vmid, False)
        destroy(log, node, kind, vmid)
    log("migration finished successfully")
