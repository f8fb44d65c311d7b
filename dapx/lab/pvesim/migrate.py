"""Migration: within the cluster (config moves to the target node's directory in the shared
/etc/pve; local disks are piped `zfs send | ssh target zfs recv`, or btrfs send/receive, as the
cluster members trust each other over SSH) and remote_migrate to another site's API.
"""

from __future__ import annotations

import shlex
import subprocess

from . import guestconf, guests, paths, storage
from .ops import Log

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


def _move_volume(log: Log, volid: str, address: str) -> None:
    st = storage.get(storage.split_volid(volid)[0])
    vmid, name, _ = storage.parse_volname(storage.split_volid(volid)[1])
    log(f"copying local disk '{volid}' to target node")
    if st.type == "zfspool":
        ds = f"{st.opts['pool']}/{name}"
        subprocess.run(["zfs", "snapshot", f"{ds}@{SNAP}"], check=True)
        _pipe(["zfs", "send", "-R", f"{ds}@{SNAP}"], _ssh_argv(address, ["zfs", "recv", "-F", ds]))
        subprocess.run(_ssh_argv(address, ["zfs", "destroy", f"{ds}@{SNAP}"]), check=True)
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
    storage.free(volid)


def migrate(log: Log, node: str, kind: str, vmid: int, target: str, online: int = 0,
            with_local_disks: int = 0) -> None:
    """Move guest vmid from node to target (a member of this cluster)."""
    cfg = paths.node_config()
    members = cfg.get("cluster_nodes") or {}
    if target not in members or target == node:
        raise RuntimeError(f"target node '{target}' is not a cluster member" if target != node
                           else f"target is local node.")
    conf = guests.require(node, kind, vmid)
    if guests.is_running(vmid) and not online:
        raise RuntimeError(f"can't migrate running VM without --online")
    log(f"starting migration of {'VM' if kind == 'qemu' else 'CT'} {vmid} to node '{target}' ({members[target]})")
    local = [v for k, v in guestconf.disk_volumes(conf.current).items()
             if storage.get(storage.split_volid(v)[0]).type in ("zfspool", "btrfs", "dir")]
    for volid in local:
        _move_volume(log, volid, members[target])
    dst = guests.conf_path(target, kind, vmid)
    dst.parent.mkdir(parents=True, exist_ok=True)
    guests.conf_path(node, kind, vmid).rename(dst)
    running = guests.is_running(vmid)
    guests.set_running(vmid, False)
    if running:
        log("(lab) guest marked stopped on the source; start it on the target")
    log("migration finished successfully")


def remote_migrate(log: Log, node: str, kind: str, vmid: int, endpoint: dict, target_vmid: int,
                   target_storage: str, target_bridge: str, delete: int = 0) -> None:
    """Copy a guest to another site's PVE API (see remote.py); delete the source when asked."""
    from . import remote
    remote.copy_guest(log, node, kind, vmid, endpoint, target_vmid, target_storage, target_bridge)
    if delete:
        from .ops import destroy
        destroy(log, node, kind, vmid)
    log("migration finished successfully")
