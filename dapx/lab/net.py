"""The lab network: bridge dapx-br0 on the host, one netns + veth per node, vmbr* inside.

Only links named dapx-* are ever created or deleted on the host; no routes beyond the
bridge's own subnet, no forwarding, no NAT, no firewall rules.
"""

from __future__ import annotations

from pathlib import Path

from dapx.lab.common import BRIDGE, HOST_ADDRESS, NETNS_PREFIX, PREFIX_LEN, NodeSpec, sh


def netns_path(node: NodeSpec) -> Path:
    return Path("/run/netns") / node.netns


def _link_exists(name: str) -> bool:
    return sh(["ip", "link", "show", "dev", name], check=False).returncode == 0


def ensure_bridge() -> None:
    """Create dapx-br0 with the host address, up.

    IPv6 address generation is off on every lab link, so nothing but the lab's own IPv4
    addresses is ever used on the bridge.
    """
    if not _link_exists(BRIDGE):
        sh(["ip", "link", "add", BRIDGE, "type", "bridge"])
        sh(["ip", "link", "set", "dev", BRIDGE, "addrgenmode", "none"], check=False)
    addrs = sh(["ip", "-4", "-o", "addr", "show", "dev", BRIDGE]).stdout.decode()
    if f"{HOST_ADDRESS}/{PREFIX_LEN}" not in addrs:
        sh(["ip", "addr", "add", f"{HOST_ADDRESS}/{PREFIX_LEN}", "dev", BRIDGE])
    sh(["ip", "link", "set", "dev", BRIDGE, "up"])


def create_netns(node: NodeSpec) -> None:
    """netns dapx-<node> with lo up and eth0 (veth to the bridge) at the node's address."""
    sh(["ip", "netns", "add", node.netns])
    peer = f"{node.host_veth}p"
    sh(["ip", "link", "add", node.host_veth, "type", "veth", "peer", "name", peer])
    sh(["ip", "link", "set", "dev", node.host_veth, "addrgenmode", "none"], check=False)
    sh(["ip", "link", "set", "dev", peer, "netns", node.netns])
    sh(["ip", "link", "set", "dev", node.host_veth, "master", BRIDGE, "up"])
    inside = ["ip", "-n", node.netns]
    sh(inside + ["link", "set", "dev", peer, "name", "eth0"])
    sh(inside + ["link", "set", "dev", "eth0", "addrgenmode", "none"], check=False)
    sh(inside + ["link", "set", "dev", "lo", "up"])
    sh(inside + ["addr", "add", f"{node.address}/{PREFIX_LEN}", "dev", "eth0"])
    sh(inside + ["link", "set", "dev", "eth0", "up"])


def create_vm_bridges(node: NodeSpec, names: list[str]) -> None:
    """Bridges vmbr* inside a PVE node (no ports: guests are not really run)."""
    inside = ["ip", "-n", node.netns]
    for name in names:
        sh(inside + ["link", "add", name, "type", "bridge"])
        sh(inside + ["link", "set", "dev", name, "addrgenmode", "none"], check=False)
        sh(inside + ["link", "set", "dev", name, "up"])


def lab_netns() -> list[str]:
    """Names of netns that look like the lab's (dapx-*)."""
    out = sh(["ip", "netns", "list"], check=False).stdout.decode()
    names = [line.split()[0] for line in out.splitlines() if line.strip()]
    return [n for n in names if n.startswith(NETNS_PREFIX)]


def lab_links() -> list[str]:
    """Host links named dapx-* (bridge and host ends of veths)."""
    out = sh(["ip", "-o", "link", "show"], check=False).stdout.decode()
    names = [line.split(":")[1].strip().split("@")[0] for line in out.splitlines() if ":" in line]
    return [n for n in names if n.startswith(NETNS_PREFIX)]


def remove_network() -> None:
    """Delete every dapx-* netns and host link (deleting a netns removes its veth pair)."""
    for name in lab_netns():
        sh(["ip", "netns", "delete", name], check=False)
    for link in lab_links():
        sh(["ip", "link", "delete", "dev", link], check=False)
