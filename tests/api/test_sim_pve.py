"""The lab's PVE and PBS simulators through proxmoxer, as the product calls them (dir storage only)."""

from __future__ import annotations

import hashlib
import json
import os
import ssl
import time

import pytest
from proxmoxer import ProxmoxAPI
from proxmoxer.core import ResourceException

from dapx.lab.pvesim import httpd, pbsapi, pveapi

SECRET = "5a3d6f0e-1111-4222-8333-944445555666"
DISK = os.urandom(3 * 1024 * 1024 + 4096)


def _fingerprint(pem_path: str) -> str:
    der = ssl.PEM_cert_to_DER_cert(open(pem_path).read())
    h = hashlib.sha256(der).hexdigest().upper()
    return ":".join(h[i:i + 2] for i in range(0, len(h), 2))


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    """A PVE simulator and a PBS simulator on 127.0.0.1 over one temp DAPX_SIM_ROOT; yields their ports."""
    from fakepve.certs import make_cert  # test-only helper from the test dependency
    root = tmp_path_factory.mktemp("simroot")
    cert, key, _ = make_cert(str(root), hosts=("127.0.0.1",))
    os.environ["DAPX_SIM_ROOT"] = str(root)
    cfg_dir = root / "etc" / "dapx-lab"
    cfg_dir.mkdir(parents=True)
    node = {"node": "pve1", "kind": "pve", "address": "127.0.0.1", "cluster": None,
            "cluster_nodes": {"pve1": "127.0.0.1"}, "nodes": {"pve1": "127.0.0.1"},
            "tokens": {"root@pam!dapx": SECRET}, "tls_cert": cert, "tls_key": key,
            "pbs": {"datastore": "store1", "path": "/datastore/store1"}}
    (cfg_dir / "node.json").write_text(json.dumps(node))
    pbs = pbsapi.make_server("127.0.0.1", 0)
    pve = pveapi.make_server("127.0.0.1", 0)
    httpd.serve_in_thread(pbs)
    httpd.serve_in_thread(pve)
    pve_dir = root / "etc" / "pve"
    pve_dir.mkdir(parents=True)
    (pve_dir / "storage.cfg").write_text(
        "dir: local\n\tpath /var/lib/vz\n\tcontent iso,vztmpl,backup,images,rootdir\n\n"
        f"pbs: pbs\n\tdatastore store1\n\tserver 127.0.0.1\n\tport {pbs.server_address[1]}\n"
        f"\tcontent backup\n\tusername root@pam!dapx\n\tfingerprint {_fingerprint(cert)}\n")
    (pve_dir / "priv" / "storage").mkdir(parents=True)
    (pve_dir / "priv" / "storage" / "pbs.pw").write_text(SECRET)
    yield {"root": root, "pve_port": pve.server_address[1], "pbs_port": pbs.server_address[1], "ca": cert}
    pve.shutdown()
    pbs.shutdown()


def api(sim, secret: str = SECRET) -> ProxmoxAPI:
    """proxmoxer with token auth, verifying the simulator's self-signed certificate as CA."""
    return ProxmoxAPI("127.0.0.1", port=sim["pve_port"], user="root@pam", token_name="dapx", token_value=secret,
                      verify_ssl=sim["ca"], backend="https", timeout=30)


def wait(px: ProxmoxAPI, upid: str, node: str = "pve1") -> dict:
    """Follow a UPID until stopped; returns the final status."""
    for _ in range(300):
        st = px.nodes(node).tasks(upid).status.get()
        if st["status"] == "stopped":
            return st
        time.sleep(0.1)
    raise AssertionError("task did not finish")


def test_version_and_nodes(sim):
    px = api(sim)
    assert px.version.get()["release"] == "9.0"
    assert [n["node"] for n in px.nodes.get()] == ["pve1"]
    assert px.nodes("pve1").status.get()["memory"]["total"] > 0
    assert {s["storage"] for s in px.nodes("pve1").storage.get()} == {"local", "pbs"}


def test_wrong_token_is_401(sim):
    with pytest.raises(ResourceException) as exc:
        api(sim, "wrong").version.get()
    assert exc.value.status_code == 401


def test_invalid_param_is_400_with_errors(sim):
    px = api(sim)
    with pytest.raises(ResourceException) as exc:
        px.nodes("pve1").qemu.post(vmid=99, memory=512)
    assert exc.value.status_code == 400
    assert "vmid" in exc.value.errors


def _create(px, vmid: int) -> None:
    st = wait(px, px.nodes("pve1").qemu.post(vmid=vmid, name=f"vm{vmid}", memory=1024, cores=2,
                                               net0="virtio,bridge=vmbr0", scsi0="local:0.004"))
    assert st["exitstatus"] == "OK"


def test_create_config_get_put(sim):
    px = api(sim)
    _create(px, 300)
    conf = px.nodes("pve1").qemu(300).config.get()
    assert conf["scsi0"].startswith("local:300/vm-300-disk-0.raw")
    assert conf["net0"].startswith("virtio=BC:24:11:") and conf["net0"].endswith(",bridge=vmbr0")
    px.nodes("pve1").qemu(300).config.put(memory=2048, digest=conf["digest"])
    assert px.nodes("pve1").qemu(300).config.get()["memory"] == "2048"
    with pytest.raises(ResourceException) as exc:  # stale digest
        px.nodes("pve1").qemu(300).config.put(memory=4096, digest=conf["digest"])
    assert exc.value.status_code == 500
    assert 300 in [v["vmid"] for v in px.nodes("pve1").qemu.get()]


def test_failing_task_snapshot_on_dir_storage(sim):
    """Raw images on a dir storage cannot be snapshotted: PVE's task ends with an error."""
    px = api(sim)
    _create(px, 301)
    st = wait(px, px.nodes("pve1").qemu(301).snapshot.post(snapname="before"))
    assert st["exitstatus"] == "snapshot feature is not available"
    log = px.nodes("pve1").tasks(st["upid"]).log.get()
    assert log[-1]["t"] == "TASK ERROR: snapshot feature is not available"


def test_snapshot_create_list_delete_config_only(sim):
    """A VM without disks can be snapshotted (config sections only), listed and deleted."""
    px = api(sim)
    wait(px, px.nodes("pve1").qemu.post(vmid=302, name="nodisk", memory=256))
    assert wait(px, px.nodes("pve1").qemu(302).snapshot.post(snapname="s1", description="first"))["exitstatus"] == "OK"
    names = [s["name"] for s in px.nodes("pve1").qemu(302).snapshot.get()]
    assert names == ["s1", "current"]
    text = (sim["root"] / "etc/pve/nodes/pve1/qemu-server/302.conf").read_text()
    assert "\n[s1]\n" in text and "parent: s1" in text
    assert wait(px, px.nodes("pve1").qemu(302).snapshot("s1").delete())["exitstatus"] == "OK"
    assert [s["name"] for s in px.nodes("pve1").qemu(302).snapshot.get()] == ["current"]


def test_vzdump_to_pbs_and_restore_same_bytes(sim):
    px = api(sim)
    _create(px, 310)
    disk = sim["root"] / "var/lib/vz/images/310/vm-310-disk-0.raw"
    disk.write_bytes(DISK)
    st = wait(px, px.nodes("pve1").vzdump.post(vmid="310", storage="pbs", mode="snapshot"))
    assert st["exitstatus"] == "OK", px.nodes("pve1").tasks(st["upid"]).log.get()
    backups = px.nodes("pve1").storage("pbs").content.get(content="backup")
    volid = next(b["volid"] for b in backups if b.get("vmid") == 310)
    assert volid.startswith("pbs:backup/vm/310/") and volid.endswith("Z")
    st = wait(px, px.nodes("pve1").qemu.post(vmid=311, archive=volid, storage="local"))
    assert st["exitstatus"] == "OK", px.nodes("pve1").tasks(st["upid"]).log.get()
    restored = sim["root"] / "var/lib/vz/images/311/vm-311-disk-0.raw"
    assert hashlib.sha256(restored.read_bytes()).hexdigest() == hashlib.sha256(DISK).hexdigest()
    assert px.nodes("pve1").qemu(311).config.get()["scsi0"].startswith("local:311/vm-311-disk-0.raw")
    # Asking for a backup's path is refused, and the backup is still there afterwards.
    from dapx.lab.pvesim import storage
    with pytest.raises(storage.StorageError, match="no volume paths"):
        storage.path(volid)
    assert volid in [b["volid"] for b in px.nodes("pve1").storage("pbs").content.get(content="backup")]


def test_destroy_removes_disks(sim):
    px = api(sim)
    _create(px, 320)
    disk = sim["root"] / "var/lib/vz/images/320/vm-320-disk-0.raw"
    assert disk.exists()
    assert wait(px, px.nodes("pve1").qemu(320).delete())["exitstatus"] == "OK"
    assert not disk.exists()
    with pytest.raises(ResourceException) as exc:
        px.nodes("pve1").qemu(320).config.get()
    assert exc.value.status_code == 500


def test_start_stop_status(sim):
    px = api(sim)
    _create(px, 330)
    wait(px, px.nodes("pve1").qemu(330).status.start.post())
    assert px.nodes("pve1").qemu(330).status.current.get()["status"] == "running"
    wait(px, px.nodes("pve1").qemu(330).status.stop.post())
    assert px.nodes("pve1").qemu(330).status.current.get()["status"] == "stopped"
    tasks = px.nodes("pve1").tasks.get(vmid=330)
    assert {t["type"] for t in tasks} >= {"qmstart", "qmstop", "qmcreate"}


def test_storages_added_at_once_are_all_kept_and_a_duplicate_is_refused(sim):
    """Runs that register copies at once each add their storage: every one must be in
    storage.cfg after, and the same id added twice at once is refused once, in PVE's words
    (the file is changed under a lock, as PVE's storage-config lock does)."""
    from concurrent.futures import ThreadPoolExecutor

    px = api(sim)
    for round_ in range(4):  # a race: several rounds, so that a missing lock shows
        names = [f"dapx-race{round_}-{i}" for i in range(12)] + [f"dapx-race{round_}-same"] * 4

        def add(name: str) -> str:
            try:
                px.storage.post(storage=name, type="zfspool", pool=f"rpool/{name}",
                                content="images,rootdir")
                return "ok"
            except ResourceException as exc:
                return str(exc)

        with ThreadPoolExecutor(len(names)) as pool:
            outcomes = list(pool.map(add, names))
        assert outcomes[:12] == ["ok"] * 12
        assert sum(o == "ok" for o in outcomes[12:]) == 1
        assert all(f"storage ID 'dapx-race{round_}-same' already defined" in o
                   for o in outcomes[12:] if o != "ok")
        assert set(names) <= {s["storage"] for s in px.storage.get()}
        for name in set(names):
            px.storage(name).delete()
        assert not {s["storage"] for s in px.storage.get()} & set(names)
