"""The lab estate itself: hosts, SSH trust, ZFS/BTRFS, files, idempotency and clean teardown.

Runs as root against the real lab (see conftest). Tests later in this file change the lab
(crash recovery rebuilds it, the last one takes it down and up again), so order matters.
"""

from __future__ import annotations

import json
import shlex
import socket
import ssl
import subprocess
import time
from pathlib import Path

import pytest

from dapx.lab import estate
from dapx.lab import preflight as preflight_mod
from dapx.lab.common import LabPreflightError
from dapx.lab.tls import fingerprint_of_der
from tests.helpers.lab import lab_processes, machine_snapshot

pytestmark = pytest.mark.lab
NODES = ["pve1", "pve2", "pve3", "pbs1"]


def ssh(node: str, argv: list[str], **kw) -> subprocess.CompletedProcess:
    """Run argv on node through the real ssh client, as an admin would."""
    return subprocess.run(estate.ssh_argv(node, argv), capture_output=True, text=True,
                          timeout=30, **kw)


def in_node(node: str, argv: list[str], **kw) -> subprocess.CompletedProcess:
    return estate.run(node, argv, check=True, **kw)


def test_preflight_names_missing_package_and_install_command(monkeypatch) -> None:
    real_which = preflight_mod.shutil.which
    def which(prog: str, path: str | None = None) -> str | None:
        return None if prog == "mkfs.btrfs" else real_which(prog, path=path)

    monkeypatch.setattr(preflight_mod.shutil, "which", which)
    with pytest.raises(LabPreflightError, match=r"btrfs-progs \(no mkfs.btrfs\).*"
                                                r"apt-get install -y btrfs-progs"):
        estate.preflight()


def test_preflight_refuses_non_root(monkeypatch) -> None:
    monkeypatch.setattr(preflight_mod.os, "geteuid", lambda: 1000)
    with pytest.raises(LabPreflightError, match="needs root"):
        estate.preflight()


def test_state_follows_contract(lab: dict) -> None:
    assert lab["subnet"] == "198.18.213.0/24" and lab["bridge"] == "dapx-br0"
    addresses = {n: lab["nodes"][n]["address"] for n in NODES}
    assert addresses == {"pve1": "198.18.213.11", "pve2": "198.18.213.12",
                         "pve3": "198.18.213.13", "pbs1": "198.18.213.21"}
    assert lab["nodes"]["pve1"]["cluster"] == lab["nodes"]["pve2"]["cluster"] == "lab"
    assert lab["nodes"]["pve3"]["cluster"] is None
    assert lab["nodes"]["pbs1"]["api_url"] == "https://198.18.213.21:8007"
    for rec in lab["nodes"].values():
        assert rec["state"] == "running" and rec["ssh_host_key"].startswith("ssh-ed25519 ")
        assert len(rec["tls_fingerprint"].split(":")) == 32


@pytest.mark.parametrize("node", NODES)
def test_node_reachable_by_ssh_with_own_hostname(lab: dict, node: str) -> None:
    cp = ssh(node, ["sh", "-c", "hostname; echo $SSH_CONNECTION"])
    assert cp.returncode == 0, cp.stderr
    hostname, conn = cp.stdout.split("\n")[:2]
    assert hostname == node
    assert conn.split()[2] == lab["nodes"][node]["address"]  # server side of the connection


def test_each_node_has_its_own_rpool(lab: dict) -> None:
    guids = {}
    for node in NODES:
        cp = ssh(node, ["zfs", "get", "-H", "-o", "value", "mounted,mountpoint", "rpool/data"])
        assert cp.stdout.split() == ["yes", "/rpool/data"], cp.stderr
        guids[node] = ssh(node, ["zpool", "list", "-H", "-o", "guid", "rpool"]).stdout.strip()
    assert all(guids.values()) and len(set(guids.values())) == len(NODES), guids


def test_seeded_guest_disks_match_checksums(lab: dict) -> None:
    for vmid, guest in lab["guests"].items():
        records = list(guest.get("disks", {}).values())
        records += [{"path": f"{guest['rootfs']['path']}/{rel}", **r}
                    for rel, r in guest.get("files", {}).items()] if "rootfs" in guest else []
        for rec in records:
            out = in_node(guest["node"], ["sha256sum", rec["path"]]).stdout
            assert out.split()[0] == rec["sha256"], (vmid, rec["path"])


def test_guest_configs_and_cluster_filesystem(lab: dict) -> None:
    conf = in_node("pve1", ["cat", "/etc/pve/qemu-server/100.conf"]).stdout
    assert "scsi0: local-zfs:vm-100-disk-0,iothread=1,size=32M\n" in conf
    assert "net0: virtio=BC:24:11:5A:10:64,bridge=vmbr0,firewall=1\n" in conf
    # pve2 shares /etc/pve with pve1 but its qemu-server link points at its own node dir
    assert in_node("pve2", ["test", "-f", "/etc/pve/nodes/pve1/qemu-server/100.conf"])
    assert in_node("pve2", ["ls", "/etc/pve/qemu-server/"]).stdout.split() == ["200.conf"]
    assert estate.run("pve3", ["test", "-e", "/etc/pve/nodes/pve1"]).returncode == 1
    assert "rootfs: local-zfs:subvol-101-disk-0,size=1G" in in_node(
        "pve1", ["cat", "/etc/pve/lxc/101.conf"]).stdout
    assert "scsi0: local:300/vm-300-disk-0.raw" in in_node(
        "pve3", ["cat", "/etc/pve/qemu-server/300.conf"]).stdout
    storage = in_node("pve3", ["cat", "/etc/pve/storage.cfg"]).stdout
    for head in ("dir: local", "zfspool: local-zfs", "btrfs: local-btrfs", "pbs: pbs"):
        assert head + "\n" in storage
    assert f"\tfingerprint {lab['nodes']['pbs1']['tls_fingerprint']}\n" in storage


def test_node_json_and_network_files(lab: dict) -> None:
    cfg = json.loads(in_node("pve2", ["cat", "/etc/dapx-lab/node.json"]).stdout)
    assert cfg["node"] == "pve2" and cfg["cluster_nodes"] == {"pve1": "198.18.213.11",
                                                             "pve2": "198.18.213.12"}
    assert cfg["tokens"] == {"root@pam!dapx": lab["token_secret"]}
    assert cfg["pbs"]["fingerprint"] == lab["nodes"]["pbs1"]["tls_fingerprint"]
    assert in_node("pve3", ["ip", "-o", "link", "show", "vmbr1"]).returncode == 0
    assert estate.run("pve1", ["ip", "link", "show", "vmbr1"]).returncode != 0
    assert "auto vmbr1\niface vmbr1 inet manual\n\tbridge-ports none\n" in in_node(
        "pve3", ["cat", "/etc/network/interfaces"]).stdout


def test_btrfs_mounted_in_pve_nodes(lab: dict) -> None:
    for node in ("pve1", "pve2", "pve3"):
        out = in_node(node, ["findmnt", "-n", "-o", "FSTYPE", "/var/lib/pve/local-btrfs"]).stdout
        assert out.strip() == "btrfs"


def _authorise_test_key(src: str, dst: str, lab: dict) -> tuple[str, str]:
    """A fresh key on src authorised on dst, and a known_hosts on src pinning dst."""
    key, known = "/root/.ssh/lab_test_ed25519", "/root/.ssh/lab_test_known_hosts"
    in_node(src, ["rm", "-f", key, key + ".pub"])
    in_node(src, ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "lab-test", "-f", key])
    pub = in_node(src, ["cat", key + ".pub"]).stdout
    in_node(dst, ["tee", "-a", "/root/.ssh/authorized_keys"], input=pub)
    line = f"{lab['nodes'][dst]['address']} {lab['nodes'][dst]['ssh_host_key']}\n"
    in_node(src, ["tee", known], input=line)
    return key, known


def test_btrfs_send_receive_between_nodes_by_hand(lab: dict) -> None:
    disk = lab["guests"]["200"]["disks"]["scsi0"]
    base = "/var/lib/pve/local-btrfs"
    snap = f"{base}/images/200/lab-test-snap"
    key, known = _authorise_test_key("pve2", "pve3", lab)
    in_node("pve2", ["btrfs", "-q", "subvolume", "snapshot", "-r", disk["subvolume"], snap])
    in_node("pve3", ["mkdir", "-p", f"{base}/recv"])
    remote = shlex.join(["btrfs", "receive", f"{base}/recv"])
    ssh_cmd = ["ssh", "-i", key, "-o", f"UserKnownHostsFile={known}", "-o", "BatchMode=yes",
               f"root@{lab['nodes']['pve3']['address']}", remote]
    send = subprocess.Popen(estate.nsenter_argv("pve2", ["btrfs", "send", "-q", snap]),
                            stdout=subprocess.PIPE)
    recv = subprocess.run(estate.nsenter_argv("pve2", ssh_cmd), stdin=send.stdout,
                          capture_output=True, text=True, timeout=60)
    send.stdout.close()
    assert send.wait(timeout=30) == 0 and recv.returncode == 0, recv.stderr
    got = in_node("pve3", ["sha256sum", f"{base}/recv/lab-test-snap/disk.raw"]).stdout
    assert got.split()[0] == disk["sha256"]
    in_node("pve3", ["btrfs", "-q", "subvolume", "delete", f"{base}/recv/lab-test-snap"])
    in_node("pve2", ["btrfs", "-q", "subvolume", "delete", snap])
    in_node("pve3", ["sed", "-i", "/ lab-test$/d", "/root/.ssh/authorized_keys"])


def _ssh_between(src: str, dst: str, lab: dict,
                 known: str | None = None) -> subprocess.CompletedProcess:
    opts = ["-o", "BatchMode=yes", "-o", "ConnectTimeout=5"]
    if known:
        opts += ["-o", f"UserKnownHostsFile={known}"]
    return estate.run(src, ["ssh", *opts, f"root@{lab['nodes'][dst]['address']}", "hostname"],
                      timeout=30)


def test_cluster_members_trust_each_other(lab: dict) -> None:
    assert _ssh_between("pve1", "pve2", lab).stdout.strip() == "pve2"
    assert _ssh_between("pve2", "pve1", lab).stdout.strip() == "pve1"


def test_other_nodes_do_not_trust_each_other(lab: dict) -> None:
    for src, dst in (("pve1", "pve3"), ("pve3", "pve1"), ("pve1", "pbs1")):
        known = "/root/.ssh/lab_test_known"  # node-private
        line = f"{lab['nodes'][dst]['address']} {lab['nodes'][dst]['ssh_host_key']}\n"
        in_node(src, ["tee", known], input=line)
        cp = _ssh_between(src, dst, lab, known)
        assert cp.returncode == 255 and "Permission denied" in cp.stderr, (src, dst, cp.stderr)


def test_admin_ssh_pins_host_key(lab: dict) -> None:
    argv = estate.ssh_argv("pve1", ["true"])
    # The lab's own ssh command line pins host keys like the product does: checked here.
    assert "StrictHostKeyChecking=yes" in argv and "StrictHostKeyChecking=no" not in argv
    known = open(lab["known_hosts"]).read()
    assert f"pve1,198.18.213.11 {lab['nodes']['pve1']['ssh_host_key']}" in known


@pytest.mark.parametrize("node", NODES)
def test_api_answers_tls_with_pinned_certificate(lab: dict, node: str) -> None:
    rec = lab["nodes"][node]
    port = int(rec["api_url"].rsplit(":", 1)[1])
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # test pins the fingerprint below instead
    with socket.create_connection((rec["address"], port), timeout=5) as raw:
        with ctx.wrap_socket(raw) as tls:
            assert fingerprint_of_der(tls.getpeercert(binary_form=True)) == rec["tls_fingerprint"]


def test_pve_api_answers_through_proxmoxer_with_token(lab: dict) -> None:
    from proxmoxer import ProxmoxAPI

    rec = lab["nodes"]["pve2"]
    secret = rec["api_token_secret"]
    api = ProxmoxAPI(rec["address"], port=8006, user="root@pam", token_name="dapx",
                     token_value=secret, verify_ssl=rec["tls_cert"], timeout=15)
    assert {n["node"] for n in api.nodes.get()} == {"pve1", "pve2"}  # the cluster's members


def test_backup_to_pbs_and_restore_on_other_site_keeps_bytes(lab: dict) -> None:
    disks = lab["guests"]["100"]["disks"]
    cp = ssh("pve1", ["vzdump", "100", "--storage", "pbs", "--mode", "snapshot"])
    assert cp.returncode == 0 and "TASK OK" in cp.stdout, cp.stdout + cp.stderr
    volid = ssh("pve1", ["pvesm", "list", "pbs"]).stdout.splitlines()[-1].split()[0]
    assert volid.startswith("pbs:backup/vm/100/")
    backup_dir = "/datastore/store1/" + volid.split(":backup/", 1)[1]  # this backup's own
    stored = in_node("pbs1", ["find", backup_dir, "-name", "*.fidx"]).stdout
    assert sorted(p.rsplit("/", 1)[1] for p in stored.split()) == [
        "drive-scsi0.img.fidx", "drive-scsi1.img.fidx"]
    cp = ssh("pve3", ["qmrestore", volid, "190", "--storage", "local-zfs"])
    assert cp.returncode == 0, cp.stdout + cp.stderr
    try:
        for i, slot in enumerate(("scsi0", "scsi1")):
            got = in_node("pve3", ["sha256sum", f"/rpool/data/vm-190-disk-{i}/disk.raw"]).stdout
            assert got.split()[0] == disks[slot]["sha256"], slot
    finally:
        ssh("pve3", ["qm", "destroy", "190"])
        ssh("pve1", ["pvesm", "free", volid])


def test_tools_and_systemctl_shim_on_path(lab: dict) -> None:
    for tool in ("qm", "pct", "pvesh", "pvesm", "vzdump", "qmrestore"):
        assert ssh("pve1", ["command", "-v", tool]).stdout.strip() == f"/usr/local/sbin/{tool}"
    assert ssh("pbs1", ["systemctl", "is-enabled", "sanoid.timer"]).returncode == 1
    assert ssh("pbs1", ["systemctl", "enable", "--now", "sanoid.timer"]).returncode == 0
    cp = ssh("pbs1", ["systemctl", "is-active", "sanoid.timer"])
    assert (cp.returncode, cp.stdout) == (0, "active\n")
    assert ssh("pve1", ["systemctl", "is-active", "sanoid.timer"]).returncode == 3  # per node


def test_status_reports_running_nodes(lab: dict) -> None:
    st = estate.status()["nodes"]
    assert {n: (v["state"], v["kind"]) for n, v in st.items()} == {
        "pve1": ("running", "pve"), "pve2": ("running", "pve"), "pve3": ("running", "pve"),
        "pbs1": ("running", "pbs")}


def _daemon_pids() -> set[str]:
    """The daemons of this lab's nodes (in their network namespaces: a daemon of a lab taken
    down moments before, still exiting, is not one of them)."""
    mine = {pid for node in estate.status()["nodes"] for pid in subprocess.run(
        ["ip", "netns", "pids", f"dapx-{node}"], capture_output=True, text=True).stdout.split()}
    found = {line.split()[0] for line in lab_processes() if line.split()[0] in mine and (
        "zfs-fuse" in line or "[listener]" in line or "dapx.lab.pvesim" in line)}
    # sshd forks a child per connection that bears the listener's title until it renames
    # itself: a connection being accepted (or gone already), not a daemon.
    return {pid for pid in found if (parent := _parent(pid)) and parent not in found}


def _parent(pid: str) -> str:
    """The parent pid of ``pid`` ("" when it is gone)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1]
    except (OSError, IndexError):
        return ""


def test_up_is_idempotent(lab: dict) -> None:
    pids = _daemon_pids()
    assert len(pids) == 12  # zfs-fuse, sshd, API on each of the four nodes
    t0 = time.monotonic()
    again = estate.up()
    assert time.monotonic() - t0 < 5
    assert again == estate.load_state() and again["guests"] == lab["guests"]
    assert _daemon_pids() == pids  # nothing was restarted


def test_up_recovers_after_daemons_are_killed(lab: dict) -> None:
    for line in lab_processes():
        if "zfs-fuse" in line or "sshd" in line:
            subprocess.run(["kill", "-9", line.split()[0]], check=False)
    state = estate.up()
    assert all(rec["state"] == "running" for rec in state["nodes"].values())
    assert ssh("pve3", ["hostname"]).stdout == "pve3\n"
    disk = state["guests"]["100"]["disks"]["scsi1"]
    assert in_node("pve1", ["sha256sum", disk["path"]]).stdout.split()[0] == disk["sha256"]


def test_down_leaves_machine_as_before(lab: dict, machine_before: dict) -> None:
    estate.down()
    try:
        after = machine_snapshot()
        assert lab_processes() == []
        for key in ("mounts", "loops", "netns", "links", "addresses", "paths"):
            assert after[key] == machine_before[key], (key, after[key] ^ machine_before[key])
        assert after["namespaces"] <= machine_before["namespaces"]
        assert estate.status()["nodes"]["pve1"]["state"] == "stopped"
    finally:
        estate.up()  # later tests in the session (and DAPX_LAB_KEEP) expect a running lab
