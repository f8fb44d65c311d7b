"""The Proxmox simulators in a node: API daemons and the CLI tools on the node's PATH.

The simulators themselves live in dapx.lab.pvesim (another part of the lab); here they are
only started, given wrappers on PATH (/usr/local/sbin inside the node) and waited for.
"""

from __future__ import annotations

import importlib.util
import shlex
import socket
import ssl
import sys
import time

from dapx.lab import zfsshim
from dapx.lab.common import LabError, NodeSpec, log, log_dir, write_file
from dapx.lab.node import fs_dir, recorded_pids, spawn
from dapx.lab.tls import fingerprint_of_der

PVE_TOOLS = ["qm", "pct", "pvesh", "pvesm", "vzdump", "qmrestore"]


def api_module(node: NodeSpec) -> str:
    return "dapx.lab.pvesim.pveapi" if node.kind == "pve" else "dapx.lab.pvesim.pbsapi"


def simulator_available(node: NodeSpec) -> bool:
    """True if the simulator module for this node's kind can be imported."""
    try:
        return importlib.util.find_spec(api_module(node)) is not None
    except ModuleNotFoundError:
        return False


def _wrapper(argv: list[str]) -> str:
    return "#!/bin/sh\nexec " + shlex.join(argv) + ' "$@"\n'


def write_tools(node: NodeSpec) -> None:
    """Tool wrappers and the systemctl shim in the node's /usr/local/sbin."""
    bindir = fs_dir(node, "bin")
    bindir.mkdir(parents=True, exist_ok=True)
    py = sys.executable
    tools = PVE_TOOLS if node.kind == "pve" else []
    for tool in tools:
        write_file(bindir / tool, _wrapper([py, "-m", "dapx.lab.pvesim.tools", tool]), 0o755)
    write_file(bindir / "systemctl", _wrapper([py, "-m", "dapx.lab.systemctl"]), 0o755)
    write_file(bindir / "zfs", zfsshim.front_script(py), 0o755)


def start_api(node: NodeSpec) -> bool:
    """Start the node's API simulator; False (and a warning) if the module is missing."""
    if not simulator_available(node):
        log.warning("%s: %s not available, API simulator not started", node.name, api_module(node))
        return False
    spawn(node, [sys.executable, "-m", api_module(node)], "api")
    return True


def wait_api(node: NodeSpec, fingerprint: str, timeout: float = 20) -> None:
    """Wait until the node's API answers HTTP over TLS with the pinned certificate.

    Raises LabError (with the log tail) if it dies or does not answer in time, and
    TLS-pinning failure as LabError too (it would mean a stale certificate).
    """
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if "api" not in recorded_pids(node):
            raise LabError(f"{node.name}: API simulator exited: {_log_tail(node)}")
        try:
            _probe(node, fingerprint)
            return
        except (OSError, ssl.SSLError) as exc:
            last = exc
            time.sleep(0.1)
    raise LabError(f"{node.name}: API {node.api_url} does not answer ({last}): {_log_tail(node)}")


def _probe(node: NodeSpec, fingerprint: str) -> None:
    """One TLS connection: check the certificate fingerprint, get an HTTP status line."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    # The certificate is self-signed: trust comes from the pinned fingerprint checked below.
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with socket.create_connection((node.address, node.api_port), timeout=2) as raw:
        with ctx.wrap_socket(raw) as tls:
            der = tls.getpeercert(binary_form=True) or b""
            if fingerprint_of_der(der) != fingerprint:
                raise LabError(f"{node.name}: API certificate does not match the pinned "
                               "fingerprint (stale lab? run `dapx lab reset`)")
            tls.sendall(b"GET /api2/json/version HTTP/1.0\r\nHost: lab\r\n\r\n")
            if not tls.recv(64).startswith(b"HTTP/"):
                raise OSError("no HTTP answer yet")


def _log_tail(node: NodeSpec) -> str:
    try:
        return (log_dir() / f"{node.name}-api.log").read_text(errors="replace")[-600:]
    except OSError:
        return "(no log)"
