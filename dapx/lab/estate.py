"""The lab's public API: preflight, up, down, status, reset, run, ssh_argv, nsenter_argv.

`dapx lab ...` and tests/lab use only these. All need root. State lives in
$DAPX_LAB_DIR/state.json (default /var/lib/dapx-lab), written by `up` (see README.md).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import shlex
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from dapx.lab import build, cleanup, node, sim, sshd
from dapx.lab.common import NODES, LabError, lab_dir, log, spec, write_file
from dapx.lab.preflight import preflight, require_root

__all__ = ["preflight", "up", "down", "status", "reset", "run", "ssh_argv", "nsenter_argv",
           "load_state", "state_file", "LabError"]


def state_file() -> Path:
    return lab_dir() / "state.json"


def load_state() -> dict:
    """The last state.json written by up/down; LabError if the lab was never built."""
    try:
        return json.loads(state_file().read_text())
    except FileNotFoundError:
        raise LabError(f"no lab state at {state_file()}: run `dapx lab up`") from None


@contextlib.contextmanager
def _locked(create: bool = True) -> Iterator[None]:
    """One lab operation at a time on this machine (up/down/reset).

    With ``create`` False and no lab directory yet, runs unlocked rather than leave one.
    """
    if not create and not lab_dir().exists():
        yield
        return
    lab_dir().mkdir(parents=True, exist_ok=True)
    with open(lab_dir() / ".lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        yield


def _port_open(address: str, port: int) -> bool:
    try:
        with socket.create_connection((address, port), timeout=1):
            return True
    except OSError:
        return False


def _node_running(name: str) -> bool:
    """Namespaces in place, daemons alive, sshd (and API, if built) answering."""
    n = NODES[name]
    if not node.ns_alive(n):
        return False
    daemons = node.recorded_pids(n)
    want = {"zfs-fuse", "sshd"} | ({"api"} if sim.simulator_available(n) else set())
    if not want <= daemons.keys():
        return False
    return _port_open(n.address, 22) and ("api" not in want or _port_open(n.address, n.api_port))


def _healthy() -> bool:
    try:
        st = load_state()
    except LabError:
        return False
    return (set(st.get("nodes", {})) == set(NODES)
            and all(v.get("state") == "running" for v in st["nodes"].values())
            and all(_node_running(name) for name in NODES))


def up() -> dict:
    """Bring the lab up and return its state; a healthy running lab is left as it is.

    Anything else (stopped, half-built, crashed) is cleared first, then rebuilt from
    scratch with freshly seeded guests; keys, certificates and the token are kept.
    Raises LabPreflightError (machine cannot run it) or LabError (a step failed).
    """
    preflight()
    node.check_lab_dir_visible()
    with _locked():
        if _healthy():
            return load_state()
        t0 = time.monotonic()
        cleanup.clear()
        try:
            state = build.build()
        except BaseException:
            log.error("lab build failed; clearing the half-built lab")
            cleanup.clear()
            raise
        write_file(state_file(), json.dumps(state, indent=2) + "\n", 0o600)
        log.info("lab up in %.1fs", time.monotonic() - t0)
        return state


def down(purge: bool = False) -> None:
    """Stop and remove the lab: no process, mount, loop device, netns or link is left.

    Keys, certificates and the token stay in $DAPX_LAB_DIR unless ``purge`` removes the
    whole directory. Works on a half-built or crashed lab, and needs only root (not the
    packages: a machine that lost zfs-fuse can still be cleaned).
    """
    require_root()
    with _locked(create=False):
        cleanup.clear()
        if state_file().exists():
            st = load_state()
            for rec in st.get("nodes", {}).values():
                rec["state"] = "stopped"
            st["guests"] = {}
            write_file(state_file(), json.dumps(st, indent=2) + "\n", 0o600)
    if purge:
        shutil.rmtree(lab_dir(), ignore_errors=True)


def reset() -> dict:
    """down() then up(): a fresh estate with freshly seeded guests."""
    down()
    return up()


def status() -> dict:
    """{"lab_dir", "nodes": {name: {name, kind, address, state, api_url}}} (state running|stopped)."""
    nodes = {}
    for name, n in NODES.items():
        running = node.ns_alive(n) and _node_running(name)
        nodes[name] = {"name": name, "kind": n.kind, "address": n.address,
                       "state": "running" if running else "stopped", "api_url": n.api_url}
    return {"lab_dir": str(lab_dir()), "nodes": nodes}


def run(node_name: str, argv: list[str], input: bytes | str | None = None, timeout: float = 120,
        check: bool = False, text: bool = True) -> subprocess.CompletedProcess:
    """Run argv as root inside a node's namespaces (PATH has the node's qm/pct/... tools).

    Output is captured (str if ``text`` else bytes). Raises InputError for an unknown node,
    LabError if the node is not running, on timeout, or (with ``check``) on non-zero exit.
    """
    n = spec(node_name)
    if not node.ns_alive(n):
        raise LabError(f"lab node {node_name} is not running: run `dapx lab up`")
    return node.run(n, argv, input=input, timeout=timeout, check=check, text=text)


def nsenter_argv(node_name: str, argv: list[str]) -> list[str]:
    """argv that runs ``argv`` inside the node (for Popen pipelines in tests)."""
    return node.nsenter_argv(spec(node_name), argv)


def ssh_argv(node_name: str, argv: list[str] | None = None) -> list[str]:
    """The ssh command line an admin would use: admin key, host key pinned via known_hosts.

    ``argv`` (if any) is quoted once with shlex.join, so the remote shell sees it exactly.
    Without ``argv`` it opens an interactive login shell.
    """
    n = spec(node_name)
    cmd = ["ssh", "-F", "none", "-i", str(sshd.admin_key()), "-o", "IdentitiesOnly=yes",
           # quoted: ssh splits this option's value on spaces (it takes a list of files)
           "-o", f'UserKnownHostsFile="{sshd.known_hosts_file()}"',
           "-o", "GlobalKnownHostsFile=/dev/null", "-o", "StrictHostKeyChecking=yes",
           "-o", "BatchMode=yes", "-o", "ConnectTimeout=10", "-o", "LogLevel=ERROR",
           "-p", "22", "-l", "root", n.address]
    return cmd + (["--", shlex.join(argv)] if argv else [])
