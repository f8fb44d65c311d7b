"""Shared pieces of the lab: the estate's shape, its paths, the command runner and LabError.

Everything here is about the host side. Node-side commands go through ``node.run``.
"""

from __future__ import annotations

import logging
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from dapx.errors import InputError, PermanentError

log = logging.getLogger("dapx.lab")

SUBNET = "198.18.213.0/24"
PREFIX_LEN = 24
BRIDGE = "dapx-br0"
HOST_ADDRESS = "198.18.213.1"
CLUSTER = "lab"
TOKEN_ID = "root@pam!dapx"
PBS_DATASTORE = "store1"
NETNS_PREFIX = "dapx-"
RUN_DIR = Path("/run/dapx-lab")  # persistent namespace files (on a private bind mount)
NS_DIR = RUN_DIR / "ns"
NODE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# Marks every process the lab starts, so a later `down` finds them even when their
# namespaces are already gone (crash, half-finished cleanup).
MARK_NODE = "DAPX_LAB_NODE"
MARK_DIR = "DAPX_LAB_DIR"


class LabError(PermanentError):
    """The lab cannot be built, reached or cleaned; the message says why and what to do."""


class LabPreflightError(LabError, InputError):
    """This machine cannot run the lab (not root, package missing, no FUSE or loop devices)."""


@dataclass(frozen=True)
class NodeSpec:
    """One node of the default estate (name, kind pve|pbs, address, cluster or None)."""

    name: str
    kind: str
    address: str
    cluster: str | None

    @property
    def api_port(self) -> int:
        return 8006 if self.kind == "pve" else 8007

    @property
    def api_url(self) -> str:
        return f"https://{self.address}:{self.api_port}"

    @property
    def netns(self) -> str:
        return NETNS_PREFIX + self.name

    @property
    def host_veth(self) -> str:
        return NETNS_PREFIX + self.name  # 9 chars, under IFNAMSIZ


NODES: dict[str, NodeSpec] = {
    n.name: n
    for n in (
        NodeSpec("pve1", "pve", "198.18.213.11", CLUSTER),
        NodeSpec("pve2", "pve", "198.18.213.12", CLUSTER),
        NodeSpec("pve3", "pve", "198.18.213.13", None),
        NodeSpec("pbs1", "pbs", "198.18.213.21", None),
    )
}


def spec(node: str) -> NodeSpec:
    """The NodeSpec of ``node``; raises InputError for a name that is not a lab node."""
    try:
        return NODES[node]
    except KeyError:
        raise InputError(f"unknown lab node {node!r}; lab nodes are {', '.join(NODES)}") from None


def lab_dir() -> Path:
    """$DAPX_LAB_DIR or /var/lib/dapx-lab (absolute)."""
    return Path(os.environ.get("DAPX_LAB_DIR", "/var/lib/dapx-lab")).absolute()


def node_dir(node: str) -> Path:
    """Where everything of one node lives on the host."""
    return lab_dir() / "nodes" / node


def keys_dir(node: str) -> Path:
    """Per-node identity kept across down/up (host keys, TLS, root key)."""
    return node_dir(node) / "keys"


def data_dir(node: str) -> Path:
    """Per-node data rebuilt on every fresh up (bind-mount sources, images); removed on down."""
    return node_dir(node) / "data"


def log_dir() -> Path:
    return lab_dir() / "logs"


def sh(argv: list[str], *, check: bool = True, input: bytes | None = None,
       timeout: float = 60, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run argv on the host and capture output (bytes).

    Raises LabError with the stderr tail when ``check`` and the exit status is not 0.
    """
    try:
        cp = subprocess.run(argv, input=input, capture_output=True, timeout=timeout, env=env,
                            stdin=None if input is not None else subprocess.DEVNULL)
    except FileNotFoundError as exc:
        raise LabError(f"{argv[0]} not found: {exc}") from exc
    except subprocess.TimeoutExpired as exc:
        raise LabError(f"{argv[0]} timed out after {timeout}s") from exc
    if check and cp.returncode != 0:
        tail = cp.stderr.decode(errors="replace").strip()[-400:]
        raise LabError(f"command failed ({cp.returncode}): {' '.join(argv)[:200]}: {tail}")
    return cp


def write_file(path: Path, text: str | bytes, mode: int = 0o644) -> None:
    """Write ``text`` to ``path`` (parents created) with ``mode``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = text.encode() if isinstance(text, str) else text
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.chmod(path, mode)
