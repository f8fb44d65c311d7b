"""Build the estate from nothing (the caller has cleared leftovers first).

Host-side files first (keys, certs, /etc/pve, node.json), then network and namespaces
one node at a time (cheap, and each namespace drops its copies of the others' namespace
files), then every node's daemons and seeded guests in parallel.
"""

from __future__ import annotations

import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from dapx.lab import btrfs, hostpaths, net, node, pvefs, seed, sim, sshd, tls, zfs
from dapx.lab.common import NODES, NodeSpec, lab_dir, log, write_file


def token_secret() -> str:
    """The lab's API token secret (uuid4), created once and kept across rebuilds."""
    path = lab_dir() / "token_secret"
    if not path.exists():
        write_file(path, str(uuid.uuid4()) + "\n", 0o600)
    return path.read_text().strip()


def prepare_files(secret: str) -> dict[str, str]:
    """Keys, certs and every node's files on the host; returns TLS fingerprints per node."""
    sshd.ensure_keys()
    for n in NODES.values():
        tls.ensure_cert(n)
    fps = {name: tls.fingerprint(n) for name, n in NODES.items()}
    sshd.write_known_hosts()
    for n in NODES.values():
        if n.kind == "pve":
            pvefs.write_etc_pve(n, secret, fps["pbs1"])
        pvefs.write_node_files(n, secret, fps)
        sshd.setup_root_ssh(n)
        sim.write_tools(n)
    return fps


def create_hosts() -> None:
    """Bridge, then per node: netns with veth, vmbr*, mount+UTS namespaces with binds."""
    hostpaths.remember(Path("/run/netns"))
    net.ensure_bridge()
    node.ensure_ns_dir()
    for n in NODES.values():
        net.create_netns(n)
        net.create_vm_bridges(n, pvefs.vm_bridges(n))
        node.create_namespaces(n)


def start_node(n: NodeSpec, fingerprint: str) -> dict[str, dict]:
    """ZFS, BTRFS, sshd, API simulator and seeded guests of one node; returns its guests."""
    zfs.start_daemon(n)
    zfs.create_pool(n)
    if n.kind == "pve":
        btrfs.create_and_mount(n)
    sshd.start(n)
    started = sim.start_api(n)
    guests = seed.seed_node(n)
    sshd.wait_port(n.address, 22)
    if started:
        sim.wait_api(n, fingerprint)
    return guests


def build() -> dict:
    """Build everything; returns the state dict (not yet written)."""
    t0 = time.monotonic()
    secret = token_secret()
    fps = prepare_files(secret)
    create_hosts()
    log.info("lab: files and namespaces ready in %.1fs", time.monotonic() - t0)
    with ThreadPoolExecutor(len(NODES)) as pool:
        futures = {name: pool.submit(start_node, n, fps[name]) for name, n in NODES.items()}
        guests = {}
        for name, fut in futures.items():
            guests |= fut.result()
    log.info("lab: nodes started in %.1fs", time.monotonic() - t0)
    return make_state(secret, fps, guests)


# The main guest storage each node's block declares (pve2 keeps VM 200 on BTRFS), so that
# `dapx job create replica` picks btrfs-replica for it; pbs1's is its datastore's "other".
STORAGE_KINDS = {"pve2": "btrfs", "pbs1": "other"}


def make_state(secret: str, fps: dict[str, str], guests: dict) -> dict:
    """state.json content per the lab contract, plus guests and file locations."""
    from dapx.lab.common import BRIDGE, HOST_ADDRESS, SUBNET, TOKEN_ID
    nodes = {}
    for name, n in NODES.items():
        nodes[name] = {
            "name": name, "kind": n.kind, "address": n.address, "ssh_port": 22,
            "ssh_host_key": sshd.public(sshd.host_key(n)), "storage_kind": STORAGE_KINDS.get(name, "zfs"),
            "cluster": n.cluster, "api_url": n.api_url, "api_token_id": TOKEN_ID,
            "api_token_secret": secret, "tls_fingerprint": fps[name], "state": "running",
            "root_public_key": sshd.public(sshd.root_key(n)),
            "tls_cert": str(tls.cert_paths(n)[0]),  # self-signed: usable as its own CA file
        }
    return {"subnet": SUBNET, "bridge": BRIDGE, "host_address": HOST_ADDRESS,
            "admin_key": str(sshd.admin_key()), "known_hosts": str(sshd.known_hosts_file()),
            "lab_dir": str(lab_dir()), "token_id": TOKEN_ID, "token_secret": secret,
            "nodes": nodes, "guests": guests}
