"""Where the simulators find things: every path goes through here, under env DAPX_SIM_ROOT."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def root() -> Path:
    """The root prefix for every simulated path (env DAPX_SIM_ROOT, default "/")."""
    return Path(os.environ.get("DAPX_SIM_ROOT", "/"))


def sim_path(path: str) -> Path:
    """An absolute node path ("/etc/pve/storage.cfg") moved under the root prefix."""
    return root() / path.lstrip("/")


def node_config_path() -> Path:
    """The node.json file: env DAPX_SIM_NODE_CONFIG, default <root>/etc/dapx-lab/node.json."""
    explicit = os.environ.get("DAPX_SIM_NODE_CONFIG")
    return Path(explicit) if explicit else sim_path("/etc/dapx-lab/node.json")


def node_config() -> dict[str, Any]:
    """The parsed node.json of this node (lab contract); raises OSError/ValueError when unusable."""
    with open(node_config_path(), encoding="utf-8") as fh:
        return json.load(fh)


def node_name() -> str:
    """This node's name from node.json."""
    return str(node_config()["node"])


def pve_dir() -> Path:
    """The (possibly cluster-shared) /etc/pve directory."""
    return sim_path("/etc/pve")


def guest_dir(node: str, kind: str) -> Path:
    """/etc/pve/nodes/<node>/qemu-server or .../lxc (kind is "qemu" or "lxc")."""
    sub = "qemu-server" if kind == "qemu" else "lxc"
    return pve_dir() / "nodes" / node / sub


def tasks_dir() -> Path:
    """/var/log/pve/tasks, where PVE keeps task logs and the index."""
    return sim_path("/var/log/pve/tasks")
