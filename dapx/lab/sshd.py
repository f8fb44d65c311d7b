"""SSH in the lab: keys, one real OpenSSH server per node, the trust between nodes.

Each node has its own ed25519 host key and root key (kept across down/up). The admin key
is authorised on every node. Cluster members (pve1, pve2) trust each other's root keys
through the shared /etc/pve/priv/authorized_keys, as PVE does; no other trust exists.
"""

from __future__ import annotations

import socket
import time
from pathlib import Path

from dapx.lab.common import NODES, LabError, NodeSpec, data_dir, keys_dir, lab_dir, sh, write_file
from dapx.lab.node import fs_dir, run, spawn

SSHD = "/usr/sbin/sshd"


def admin_key() -> Path:
    return lab_dir() / "admin_ed25519"


def known_hosts_file() -> Path:
    return lab_dir() / "known_hosts"


def host_key(node: NodeSpec) -> Path:
    return keys_dir(node.name) / "ssh_host_ed25519_key"


def root_key(node: NodeSpec) -> Path:
    return keys_dir(node.name) / "root_id_ed25519"


def ensure_keypair(path: Path, comment: str) -> None:
    """ssh-keygen an unencrypted ed25519 pair at path (+.pub) unless it exists."""
    if path.exists() and path.with_name(path.name + ".pub").exists():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    sh(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)])


def public(path: Path) -> str:
    """'ssh-ed25519 AAAA...' of a key pair (comment dropped)."""
    return " ".join(path.with_name(path.name + ".pub").read_text().split()[:2])


def ensure_keys() -> None:
    """Admin key plus every node's host and root keys (created once)."""
    ensure_keypair(admin_key(), "dapx-lab-admin")
    for node in NODES.values():
        ensure_keypair(host_key(node), f"root@{node.name}")
        ensure_keypair(root_key(node), f"root@{node.name}")


def known_hosts_lines(nodes: list[NodeSpec]) -> str:
    return "".join(f"{n.name},{n.address} {public(host_key(n))}\n" for n in nodes)


def write_known_hosts() -> None:
    """The admin's lab known_hosts with every node's pinned host key."""
    write_file(known_hosts_file(), known_hosts_lines(list(NODES.values())))


def cluster_members(node: NodeSpec) -> list[NodeSpec]:
    return [n for n in NODES.values() if node.cluster and n.cluster == node.cluster]


def setup_root_ssh(node: NodeSpec) -> None:
    """Node's /root/.ssh: admin key authorised, own root key, cluster members' host keys."""
    d = fs_dir(node, "root-ssh")
    d.mkdir(parents=True, exist_ok=True)
    d.chmod(0o700)
    write_file(d / "authorized_keys", public(admin_key()) + " dapx-lab-admin\n", 0o600)
    write_file(d / "id_ed25519", root_key(node).read_bytes(), 0o600)
    write_file(d / "id_ed25519.pub", public(root_key(node)) + f" root@{node.name}\n")
    write_file(d / "known_hosts", known_hosts_lines(cluster_members(node)), 0o600)
    if node.cluster:
        priv = fs_dir(node, "etc-pve") / "priv"
        members = cluster_members(node)
        write_file(priv / "authorized_keys",
                   "".join(f"{public(root_key(n))} root@{n.name}\n" for n in members), 0o600)
        write_file(priv / "known_hosts", known_hosts_lines(members), 0o600)
        priv.chmod(0o700)


def write_config(node: NodeSpec) -> Path:
    """sshd_config for the node: its address, its host key, key-only root login."""
    auth = ".ssh/authorized_keys" + (" /etc/pve/priv/authorized_keys" if node.cluster else "")
    text = "\n".join([
        f"ListenAddress {node.address}:22",
        f'HostKey "{host_key(node)}"',
        "PidFile /run/sshd.pid",
        "PermitRootLogin prohibit-password",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        "PubkeyAuthentication yes",
        f"AuthorizedKeysFile {auth}",
        "StrictModes yes",
        "UsePAM no",  # no PAM stack in the namespaces (no loginuid, no systemd-logind)
        "UseDNS no",
        "PrintMotd no",
        "X11Forwarding no",
        "AcceptEnv LANG LC_*",
        "MaxStartups 100:30:200",
        "MaxSessions 100",
        "Subsystem sftp /usr/lib/openssh/sftp-server",
        "",
    ])
    path = data_dir(node.name) / "sshd_config"
    write_file(path, text, 0o600)
    return path


def start(node: NodeSpec) -> None:
    """Start sshd in the node (foreground, logging to the node's log)."""
    cfg = write_config(node)
    run(node, [SSHD, "-t", "-f", str(cfg)], check=True)
    spawn(node, [SSHD, "-D", "-e", "-f", str(cfg)], "sshd")


def wait_port(address: str, port: int, timeout: float = 15) -> None:
    """Wait until TCP address:port accepts (LabError after ``timeout``)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((address, port), timeout=1):
                return
        except OSError as exc:
            if time.monotonic() > deadline:
                raise LabError(f"{address}:{port} does not answer: {exc}") from exc
            time.sleep(0.05)
