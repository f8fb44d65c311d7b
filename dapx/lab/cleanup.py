"""Tear the lab down from any state: running, half-built, or after daemons were kill -9'd.

Order matters: kill every lab process (found by namespace, by the lab's environment mark
and by recorded pid), then unmount the namespace files (the kernel then drops every mount
made inside, which releases FUSE and loop-mounted filesystems), detach leftover loop
devices, delete the netns and links, remove per-run data and the host directories the lab
created. Each step tolerates finding nothing.
"""

from __future__ import annotations

import os
import shutil
import signal
import time
from pathlib import Path

from dapx.lab import btrfs, hostpaths, net
from dapx.lab.common import MARK_DIR, MARK_NODE, NODES, NS_DIR, RUN_DIR, data_dir, lab_dir, log, sh
from dapx.lab.node import recorded_pids


def _ns_inodes() -> set[str]:
    """'net:[ino]'-style ids of the lab's namespaces still bound to files."""
    ids = set()
    for kind, paths in (("net", Path("/run/netns").glob(net.NETNS_PREFIX + "*")),
                        ("mnt", NS_DIR.glob("*.mnt")), ("uts", NS_DIR.glob("*.uts"))):
        for p in paths:
            try:
                if os.path.ismount(p):
                    ids.add(f"{kind}:[{os.stat(p).st_ino}]")
            except OSError:
                pass
    return ids


def _is_lab_process(pid: int, ns_ids: set[str], mark: bytes) -> bool:
    for kind in ("net", "mnt", "uts"):
        try:
            if os.readlink(f"/proc/{pid}/ns/{kind}") in ns_ids:
                return True
        except OSError:
            return False
    try:
        env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return False
    return mark in env and any(e.startswith(MARK_NODE.encode() + b"=") for e in env)


def lab_pids() -> list[int]:
    """Every live (non-zombie) process that belongs to the lab."""
    ns_ids = _ns_inodes()
    mark = f"{MARK_DIR}={lab_dir()}".encode()
    me = os.getpid()
    found = {pid for n in NODES.values() for pid in recorded_pids(n).values()}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != me and _is_lab_process(int(entry), ns_ids, mark):
            found.add(int(entry))
    return sorted(p for p in found if _alive(p))


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    if state in ("Z", "X"):
        _reap(pid)
        return False
    return True


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def kill_processes(timeout: float = 10) -> None:
    """SIGKILL lab processes until none is left (data is discarded, no need to be gentle)."""
    deadline = time.monotonic() + timeout
    while pids := lab_pids():
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.05)
        for pid in pids:
            _reap(pid)
        if time.monotonic() > deadline:
            log.warning("lab processes still alive after %ss: %s", timeout, pids)
            return


def _host_lab_mounts() -> list[str]:
    """Host mount points that belong to the lab, deepest first."""
    roots = (str(RUN_DIR), str(lab_dir()), "/run/netns/" + net.NETNS_PREFIX)
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].replace("\\040", " ")
        if point.startswith(roots):
            points.append(point)
    return sorted(set(points), key=len, reverse=True)


def unmount_namespaces() -> None:
    """Delete lab netns, unmount the mount/UTS namespace files and /run/dapx-lab."""
    for name in net.lab_netns():
        sh(["ip", "netns", "delete", name], check=False)
    for point in _host_lab_mounts():
        sh(["umount", "-l", point], check=False)
    if RUN_DIR.exists() and not _host_lab_mounts():
        shutil.rmtree(RUN_DIR, ignore_errors=True)  # only empty namespace-file placeholders
    netns_dir = Path("/run/netns")
    if "/run/netns" in hostpaths.recorded() and netns_dir.is_dir() and not any(netns_dir.iterdir()):
        sh(["umount", "/run/netns"], check=False)  # ip netns made it a mount; we created it


def detach_loops(timeout: float = 10) -> None:
    """Wait for autoclear loop devices to go (the kernel drops the mounts lazily), then force."""
    deadline = time.monotonic() + timeout
    while (loops := btrfs.loop_devices()) and time.monotonic() < deadline:
        time.sleep(0.1)
    for dev in loops:
        sh(["losetup", "-d", dev], check=False)
    if btrfs.loop_devices():
        log.warning("loop devices still attached: %s", btrfs.loop_devices())


def remove_data() -> None:
    """Remove per-run node data (images, bind sources) and the shared cluster dirs."""
    for node in NODES:
        shutil.rmtree(data_dir(node), ignore_errors=True)
    shutil.rmtree(lab_dir() / "clusters", ignore_errors=True)


def clear() -> None:
    """Everything above, in order; identity (keys, certs, token) is kept."""
    kill_processes()
    unmount_namespaces()
    net.remove_network()
    detach_loops()
    remove_data()
    hostpaths.remove_created()
