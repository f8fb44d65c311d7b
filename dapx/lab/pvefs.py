"""Proxmox-shaped files in each node: /etc/pve, node.json, interfaces, hosts, user/token cfg.

pve1 and pve2 share one /etc/pve directory (as pmxcfs shares it in a cluster); the
node-local links (local, qemu-server, lxc) go through /etc/dapx-lab/pve-local, a symlink
that is different in each node, so they resolve to nodes/<this node>/ as on PVE.
"""

from __future__ import annotations

import json
import os
import shutil

from dapx.lab import tls
from dapx.lab.common import (NODES, PBS_DATASTORE, TOKEN_ID, NodeSpec, data_dir, write_file)
from dapx.lab.node import fs_dir

TLS_DIR = "/etc/dapx-lab"
DATASTORE_PATH = f"/datastore/{PBS_DATASTORE}"  # pbs1's /datastore is a node-private dir
ROOT_BASHRC = ("# ~/.bashrc: executed by bash(1) for non-login shells (dapx lab node).\n"
               "PS1='${debian_chroot:+($debian_chroot)}\\h:\\w\\$ '\numask 022\n")
ROOT_PROFILE = ("# ~/.profile: executed by Bourne-compatible login shells.\n"
                "if [ \"$BASH\" ]; then\n  if [ -f ~/.bashrc ]; then\n    . ~/.bashrc\n  fi\nfi\n"
                "mesg n 2> /dev/null || true\n")


def storage_cfg(pbs_fingerprint: str) -> str:
    """storage.cfg of the PVE nodes (tab-indented sections, as PVE writes it)."""
    pbs = NODES["pbs1"]
    sections = [
        ("dir: local", ["path /var/lib/vz", "content iso,vztmpl,backup,images",
                        "prune-backups keep-all=1"]),
        ("zfspool: local-zfs", ["pool rpool/data", "content images,rootdir", "sparse 1"]),
        ("btrfs: local-btrfs", ["path /var/lib/pve/local-btrfs", "content images,rootdir"]),
        ("pbs: pbs", [f"datastore {PBS_DATASTORE}", f"server {pbs.address}", "content backup",
                      f"fingerprint {pbs_fingerprint}", "prune-backups keep-all=1",
                      "username root@pam"]),
    ]
    return "\n".join(head + "\n" + "".join(f"\t{line}\n" for line in body)
                     for head, body in sections)


def corosync_conf(cluster: str) -> str:
    """A corosync.conf listing the cluster members (read by nothing but humans and tools)."""
    members = [n for n in NODES.values() if n.cluster == cluster]
    nodes = "".join(
        f"  node {{\n    name: {n.name}\n    nodeid: {i}\n    quorum_votes: 1\n"
        f"    ring0_addr: {n.address}\n  }}\n" for i, n in enumerate(members, 1))
    return (f"logging {{\n  debug: off\n  to_syslog: yes\n}}\n\nnodelist {{\n{nodes}}}\n\n"
            f"quorum {{\n  provider: corosync_votequorum\n  two_node: 1\n}}\n\n"
            f"totem {{\n  cluster_name: {cluster}\n  config_version: 2\n  interface {{\n"
            f"    linknumber: 0\n  }}\n  ip_version: ipv4-6\n  link_mode: passive\n"
            f"  secauth: on\n  version: 2\n}}\n")


def write_etc_pve(node: NodeSpec, secret: str, pbs_fingerprint: str) -> None:
    """/etc/pve content for node (idempotent for the shared cluster directory)."""
    root = fs_dir(node, "etc-pve")
    nd = root / "nodes" / node.name
    for sub in ("qemu-server", "lxc", "openvz", "priv"):
        (nd / sub).mkdir(parents=True, exist_ok=True)
    shutil.copyfile(tls.cert_paths(node)[0], nd / "pve-ssl.pem")
    write_file(nd / "pve-ssl.key", tls.cert_paths(node)[1].read_bytes(), 0o600)
    (root / "priv" / "storage").mkdir(parents=True, exist_ok=True)
    (root / "priv").chmod(0o700)
    write_file(root / "storage.cfg", storage_cfg(pbs_fingerprint))
    # token:<id>:<expire>:<privsep>:<comment>: -- privsep 0: the token has root's rights
    write_file(root / "user.cfg", f"user:root@pam:1:0:::root@localhost::\n"
                                  f"token:{TOKEN_ID}:0:0:dapx lab:\n")
    write_file(root / "priv" / "token.cfg", f"{TOKEN_ID} {secret}\n", 0o600)
    write_file(root / "priv" / "storage" / "pbs.pw", secret + "\n", 0o600)
    write_file(root / "datacenter.cfg", "keyboard: en-us\n")
    if node.cluster:
        write_file(root / "corosync.conf", corosync_conf(node.cluster))
    for link, target in (("local", "/etc/dapx-lab/pve-local"), ("qemu-server", "local/qemu-server"),
                         ("lxc", "local/lxc"), ("openvz", "local/openvz")):
        if not (root / link).is_symlink():
            os.symlink(target, root / link)
    local = fs_dir(node, "etc-dapx-lab") / "pve-local"
    local.parent.mkdir(parents=True, exist_ok=True)
    local.unlink(missing_ok=True)
    os.symlink(f"/etc/pve/nodes/{node.name}", local)


def node_json(node: NodeSpec, secret: str, fingerprints: dict[str, str]) -> dict:
    """The simulators' node config (/etc/dapx-lab/node.json), per the lab contract."""
    pbs = NODES["pbs1"]
    members = {n.name: n.address for n in NODES.values()
               if node.cluster and n.cluster == node.cluster}
    return {"node": node.name, "kind": node.kind, "address": node.address,
            "cluster": node.cluster, "cluster_nodes": members,
            "nodes": {n.name: n.address for n in NODES.values()},
            "pbs": {"address": pbs.address, "port": pbs.api_port, "datastore": PBS_DATASTORE,
                    "path": DATASTORE_PATH,
                    "fingerprint": fingerprints["pbs1"], "token_id": TOKEN_ID,
                    "token_secret": secret},
            "tokens": {TOKEN_ID: secret},
            "tls_cert": f"{TLS_DIR}/tls.pem", "tls_key": f"{TLS_DIR}/tls.key",
            "tls_fingerprint": fingerprints[node.name],
            "cluster_fingerprints": {n: fingerprints[n] for n in members if n != node.name}}


def write_node_files(node: NodeSpec, secret: str, fingerprints: dict[str, str]) -> None:
    """node.json + TLS files, hosts/hostname, interfaces, log dirs, PBS datastore."""
    etc = fs_dir(node, "etc-dapx-lab")
    cfg = node_json(node, secret, fingerprints)
    write_file(etc / "node.json", json.dumps(cfg, indent=2) + "\n", 0o600)
    shutil.copyfile(tls.cert_paths(node)[0], etc / "tls.pem")
    write_file(etc / "tls.key", tls.cert_paths(node)[1].read_bytes(), 0o600)
    fs = data_dir(node.name) / "fs"
    hosts = "127.0.0.1 localhost\n" + "".join(
        f"{n.address} {n.name}.lab {n.name}\n" for n in NODES.values())
    write_file(fs / "hosts", hosts)
    write_file(fs / "hostname", node.name + "\n")
    write_file(fs / "root-bashrc", ROOT_BASHRC)
    write_file(fs / "root-profile", ROOT_PROFILE)
    write_file(fs_dir(node, "etc-network") / "interfaces", interfaces(node))
    fs_dir(node, "var-log-pve").joinpath("tasks").mkdir(parents=True, exist_ok=True)
    if node.kind == "pbs":
        # Where a real PBS keeps the certificate its proxy serves (the node test reads it).
        backup_etc = fs_dir(node, "etc-proxmox-backup")
        write_file(backup_etc / "proxy.pem", tls.cert_paths(node)[0].read_bytes(), 0o640)
        write_file(backup_etc / "proxy.key", tls.cert_paths(node)[1].read_bytes(), 0o600)
        (fs_dir(node, "datastore") / PBS_DATASTORE).mkdir(parents=True, exist_ok=True)
        write_file(fs_dir(node, "etc-proxmox-backup") / "datastore.cfg",
                   f"datastore: {PBS_DATASTORE}\n\tpath {DATASTORE_PATH}\n"
                   "\tgc-schedule daily\n\tprune-schedule daily\n")
    else:
        for sub in ("images", "dump", "template/iso", "template/cache"):
            (fs_dir(node, "var-lib-vz") / sub).mkdir(parents=True, exist_ok=True)


def vm_bridges(node: NodeSpec) -> list[str]:
    """vmbr0 on every PVE node, vmbr1 only on pve3 (another site, another layout)."""
    if node.kind != "pve":
        return []
    return ["vmbr0", "vmbr1"] if node.name == "pve3" else ["vmbr0"]


def interfaces(node: NodeSpec) -> str:
    """/etc/network/interfaces in PVE's style, matching the node's real links.

    Unlike a real PVE host the address sits on eth0 (the veth to the lab bridge) and the
    vmbr* bridges have no ports: guests are never really started.
    """
    text = (f"auto lo\niface lo inet loopback\n\nauto eth0\niface eth0 inet static\n"
            f"\taddress {node.address}/24\n")
    for br in vm_bridges(node):
        text += (f"\nauto {br}\niface {br} inet manual\n"
                 "\tbridge-ports none\n\tbridge-stp off\n\tbridge-fd 0\n")
    return text
