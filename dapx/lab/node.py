"""A node's namespaces: persistent mount+UTS namespaces bound to files, entered with nsenter.

The net namespace is `ip netns` dapx-<node>; mount and UTS namespaces are kept alive by
bind mounts of their nsfs files under /run/dapx-lab/ns (a private bind mount, as unshare
requires), so daemons can be started in them at any time and `down` only has to kill
processes and unmount those files for the kernel to drop every mount made inside.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from dapx.errors import InputError
from dapx.lab import hostpaths
from dapx.lab.common import (MARK_DIR, MARK_NODE, NODE_PATH, NODES, NS_DIR, RUN_DIR, LabError,
                             NodeSpec, data_dir, lab_dir, log_dir, sh)
from dapx.lab.net import netns_path

# (source name under data/fs, target inside the node). Sources are node-private except
# etc-pve of cluster members, which is one shared directory (as pmxcfs shares it).
COMMON_BINDS = [
    ("etc-dapx-lab", "/etc/dapx-lab"),
    ("root-ssh", "/root/.ssh"),
    ("etc-sanoid", "/etc/sanoid"),
    ("var-cache-sanoid", "/var/cache/sanoid"),  # sanoid caches `zfs list` here, per host
    ("etc-network", "/etc/network"),
    ("var-lib-zfs", "/var/lib/zfs"),
    ("var-log-pve", "/var/log/pve"),
    ("bin", "/usr/local/sbin"),
    # zfs-fuse mounts rpool here; a private directory below keeps a failed or late mount
    # from writing into the host's /rpool, which every node would share.
    ("rpool-mnt", "/rpool"),
]
PVE_BINDS = [("var-lib-vz", "/var/lib/vz"), ("var-lib-pve", "/var/lib/pve")]
PBS_BINDS = [("datastore", "/datastore"), ("etc-proxmox-backup", "/etc/proxmox-backup")]
FILE_BINDS = [("hosts", "/etc/hosts"), ("hostname", "/etc/hostname")]
# /root is shared with the host (the venv's python lives under it), but a node's root gets
# Debian's default shell startup files, not the host's (pyenv, cargo: slow and foreign).
OPTIONAL_FILE_BINDS = [("root-bashrc", "/root/.bashrc"), ("root-profile", "/root/.profile")]
# Directories the node needs on its private /run (a tmpfs): sshd privsep, zfs socket and lock.
RUN_DIRS = ["/run/lock/zfs", "/run/zfs", "/run/sshd"]


def mnt_file(node: NodeSpec) -> Path:
    return NS_DIR / f"{node.name}.mnt"


def uts_file(node: NodeSpec) -> Path:
    return NS_DIR / f"{node.name}.uts"


def fs_dir(node: NodeSpec, name: str) -> Path:
    """Host path of one bind-mount source of ``node``."""
    if name == "etc-pve" and node.cluster:
        return lab_dir() / "clusters" / node.cluster / "etc-pve"
    return data_dir(node.name) / "fs" / name


def binds(node: NodeSpec) -> list[tuple[str, str]]:
    """Directory bind mounts (source name, target) for this node's kind."""
    extra = PVE_BINDS + [("etc-pve", "/etc/pve")] if node.kind == "pve" else PBS_BINDS
    return COMMON_BINDS + extra


def node_env(node: NodeSpec) -> dict[str, str]:
    """Environment for processes in a node: a root login's basics plus the lab marks."""
    return {"PATH": NODE_PATH, "HOME": "/root", "USER": "root", "LOGNAME": "root",
            "LANG": "C.UTF-8", "SHELL": "/bin/sh",
            MARK_NODE: node.name, MARK_DIR: str(lab_dir())}


def nsenter_argv(node: NodeSpec, argv: list[str]) -> list[str]:
    """argv that runs ``argv`` inside the node's net, mount and UTS namespaces."""
    return ["nsenter", f"--net={netns_path(node)}", f"--mount={mnt_file(node)}",
            f"--uts={uts_file(node)}", "--", *argv]


def run(node: NodeSpec, argv: list[str], *, input: bytes | str | None = None, timeout: float = 120,
        check: bool = False, text: bool = True) -> subprocess.CompletedProcess:
    """Run argv in the node (cwd /, root, PATH with the node's tools); output captured.

    ``text`` decodes stdout/stderr (and encodes a str input). Raises LabError if ``check``
    and the status is not 0, or on timeout.
    """
    if isinstance(input, str):
        input = input.encode()
    try:
        cp = subprocess.run(nsenter_argv(node, argv), input=input, capture_output=True,
                            timeout=timeout, env=node_env(node), cwd="/",
                            stdin=None if input is not None else subprocess.DEVNULL)
    except subprocess.TimeoutExpired as exc:
        raise LabError(f"{node.name}: {argv[0]} timed out after {timeout}s") from exc
    if text:
        cp.stdout = cp.stdout.decode(errors="replace")
        cp.stderr = cp.stderr.decode(errors="replace")
    if check and cp.returncode != 0:
        err = cp.stderr if text else cp.stderr.decode(errors="replace")
        raise LabError(f"{node.name}: command failed ({cp.returncode}): "
                       f"{' '.join(argv)[:200]}: {err.strip()[-400:]}")
    return cp


def spawn(node: NodeSpec, argv: list[str], logname: str,
          extra_env: dict[str, str] | None = None) -> subprocess.Popen:
    """Start a daemon in the node (own session, output to logs/<node>-<logname>.log).

    The pid is recorded in data/pids.json so `down` finds it even without namespaces.
    """
    log_dir().mkdir(parents=True, exist_ok=True)
    logf = open(log_dir() / f"{node.name}-{logname}.log", "ab")
    env = node_env(node) | (extra_env or {})
    try:
        proc = subprocess.Popen(nsenter_argv(node, argv), stdin=subprocess.DEVNULL, stdout=logf,
                                stderr=subprocess.STDOUT, env=env, cwd="/",
                                start_new_session=True)
    finally:
        logf.close()
    _record_pid(node, logname, proc.pid)
    return proc


def pids_file(node: NodeSpec) -> Path:
    return data_dir(node.name) / "pids.json"


def _record_pid(node: NodeSpec, name: str, pid: int) -> None:
    path = pids_file(node)
    pids = json.loads(path.read_text()) if path.exists() else {}
    pids[name] = {"pid": pid, "start": proc_start_time(pid)}
    path.write_text(json.dumps(pids))


def proc_start_time(pid: int) -> str | None:
    """Start time (clock ticks since boot) of pid, to tell a reused pid from ours."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def recorded_pids(node: NodeSpec) -> dict[str, int]:
    """Daemons recorded for node that are still the same live processes (name -> pid)."""
    path = pids_file(node)
    if not path.exists():
        return {}
    alive = {}
    for name, rec in json.loads(path.read_text()).items():
        if rec["start"] and proc_start_time(rec["pid"]) == rec["start"] and not _zombie(rec["pid"]):
            alive[name] = rec["pid"]
    return alive


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except OSError:
        return True


def ensure_ns_dir() -> None:
    """/run/dapx-lab/ns as a private bind mount of itself (unshare refuses shared parents)."""
    hostpaths.remember(RUN_DIR)
    NS_DIR.mkdir(parents=True, exist_ok=True)
    if not os.path.ismount(NS_DIR):
        sh(["mount", "--bind", str(NS_DIR), str(NS_DIR)])
    sh(["mount", "--make-private", str(NS_DIR)])


def create_namespaces(node: NodeSpec) -> None:
    """Persistent mount+UTS namespaces for node, with hostname and node-private mounts."""
    for f in (mnt_file(node), uts_file(node)):
        f.touch()
    sh(["unshare", f"--mount={mnt_file(node)}", f"--uts={uts_file(node)}",
        "--propagation", "private", "true"])

    def inside(argv: list[str]) -> None:
        run(node, argv, check=True)

    # Drop this namespace's copies of other nodes' namespace files: they would pin them.
    for path in ("/run/netns", str(NS_DIR)):
        if os.path.exists(path):
            run(node, ["umount", "-R", "-l", path])
    inside(["mount", "-t", "tmpfs", "-o", "mode=0755", "dapx-run", "/run"])
    inside(["mkdir", "-p", *RUN_DIRS])
    inside(["hostname", node.name])
    for name, target in binds(node):
        src = fs_dir(node, name)
        src.mkdir(parents=True, exist_ok=True)
        hostpaths.ensure_dir(Path(target))
        inside(["mount", "--bind", str(src), target])
    for name, target in FILE_BINDS + OPTIONAL_FILE_BINDS:
        if os.path.exists(target):  # never create files on the host for this
            inside(["mount", "--bind", str(data_dir(node.name) / "fs" / name), target])


def check_lab_dir_visible() -> None:
    """InputError if $DAPX_LAB_DIR, or the Python environment and DAPX code the nodes run,
    lie under a directory the nodes mount over (e.g. /run): nodes must see them."""
    targets = {t for n in NODES.values() for _, t in binds(n)} | {"/run"}
    needed = {"DAPX_LAB_DIR": str(lab_dir()), "the Python environment": sys.prefix,
              "the dapx package": str(Path(__file__).resolve().parents[1])}
    for what, path in needed.items():
        for t in sorted(targets):
            if path == t or path.startswith(t.rstrip("/") + "/"):
                raise InputError(f"{what} ({path}) is under {t}, which every lab node mounts "
                                 "over; move it elsewhere (the lab's default is /var/lib/dapx-lab)")


def ns_alive(node: NodeSpec) -> bool:
    """True if the node's netns and mount/UTS namespace files are all in place."""
    return (netns_path(node).exists() and os.path.ismount(mnt_file(node))
            and os.path.ismount(uts_file(node)))
