"""The same PVE API calls against the lab's simulator and against fakepve (PVE 9 schema): both must
accept or reject them alike (issue 3: a call fakepve rejects is a bug in the product or the sim)."""

from __future__ import annotations

import pytest
from proxmoxer import ProxmoxAPI
from proxmoxer.core import ResourceException

from tests.api.test_sim_pve import SECRET, api, sim, wait  # noqa: F401 - shared fixture


@pytest.fixture(params=["sim", "fakepve"])
def px(request, sim):
    """A proxmoxer client for the simulator or for fakepve, same token, certificate verified."""
    if request.param == "sim":
        client = api(sim)
        if 100 not in [v["vmid"] for v in client.nodes("pve1").qemu.get()]:
            wait(client, client.nodes("pve1").qemu.post(vmid=100, name="seeded", memory=512))
        client.__dict__["ca_file"] = sim["ca"]  # for tests that open a second client
        return client
    fake = request.getfixturevalue("fakepve")
    fake.apitokens["root@pam!dapx"] = SECRET
    fake.add_vm(100, "seeded", node="pve1")
    host, port = fake.url.split("//")[1].rsplit(":", 1)
    client = ProxmoxAPI(host, port=int(port), user="root@pam", token_name="dapx",
                        token_value=SECRET, verify_ssl=request.getfixturevalue("fakepve_cafile"),
                        backend="https", timeout=30)
    client.__dict__["ca_file"] = request.getfixturevalue("fakepve_cafile")
    return client


def status_of(call) -> int:
    """HTTP status of a proxmoxer call (200 when it returns)."""
    try:
        call()
        return 200
    except ResourceException as exc:
        return exc.status_code


def test_read_calls(px):
    assert px.version.get()["version"]
    assert "pve1" in [n["node"] for n in px.nodes.get()]
    px.cluster.status.get()
    px.cluster.resources.get(type="vm")
    px.nodes("pve1").tasks.get(limit=10)


def test_create_config_snapshot_cycle(px):
    vmid = 700
    upid = px.nodes("pve1").qemu.post(vmid=vmid, name="cross", memory=512, cores=1, net0="virtio,bridge=vmbr0",
                                      ostype="l26", scsihw="virtio-scsi-single")
    assert wait(px, upid)["exitstatus"] == "OK"
    conf = px.nodes("pve1").qemu(vmid).config.get()
    assert conf["name"] == "cross" and conf["digest"]
    px.nodes("pve1").qemu(vmid).config.put(memory=1024, delete="ostype", digest=conf["digest"])
    upid = px.nodes("pve1").qemu(vmid).snapshot.post(snapname="dapx_1", description="by dapx")
    assert wait(px, upid)["exitstatus"] == "OK"
    assert "dapx_1" in [s["name"] for s in px.nodes("pve1").qemu(vmid).snapshot.get()]
    assert wait(px, px.nodes("pve1").qemu(vmid).snapshot("dapx_1").delete())["exitstatus"] == "OK"
    assert wait(px, px.nodes("pve1").qemu(vmid).delete())["exitstatus"] == "OK"


@pytest.mark.parametrize("call,status,field", [
    (lambda p: p.nodes("pve1").qemu.post(vmid=42, memory=512), 400, "vmid"),
    (lambda p: p.nodes("pve1").qemu(100).snapshot.post(snapname="1-bad"), 400, "snapname"),
    (lambda p: p.nodes("pve1").qemu(100).config.put(notakey=1), 400, "notakey"),
    (lambda p: p.nodes("pve1").vzdump.post(vmid="100", storage="pbs", mode="sometimes"), 400, "mode"),
])
def test_rejected_alike(px, call, status, field):
    with pytest.raises(ResourceException) as exc:
        call(px)
    assert exc.value.status_code == status
    assert field in (exc.value.errors or {})


def test_wrong_token_401(px):
    """A wrong token secret: 401 from both, over a verified TLS connection."""
    store = px._store
    host, port = store["base_url"].split("//")[1].split("/")[0].rsplit(":", 1)
    wrong = ProxmoxAPI(host, port=int(port), user="root@pam", token_name="dapx",
                       token_value="wrong", verify_ssl=px.__dict__["ca_file"], backend="https")
    with pytest.raises(ResourceException) as exc:
        wrong.version.get()
    assert exc.value.status_code == 401


def test_vzdump_and_remote_migrate_accepted(px):
    """The product's backup and cross-site calls: both answer with a UPID."""
    upid = px.nodes("pve1").vzdump.post(vmid="100", storage="pbs", mode="snapshot")
    assert upid.startswith("UPID:pve1:") and ":vzdump:" in upid
    wait(px, upid)  # the backup locks the guest; PVE refuses to migrate a locked guest
    upid = px.nodes("pve1").qemu(100).remote_migrate.post(
        **{"target-endpoint": "host=127.0.0.9,apitoken=PVEAPIToken=root@pam!dapx=x,fingerprint=" + "AA:" * 31 + "AA",
           "target-storage": "local-zfs", "target-bridge": "vmbr0", "target-vmid": 9100})
    assert upid.startswith("UPID:pve1:")


def test_storage_config_create_list_delete(px):
    """What register-vm does for a replica's destination storage: POST /storage (zfspool)."""
    created = px.storage.post(storage="dapx-rpool-replica", type="zfspool", pool="rpool/replica",
                              content="images,rootdir", sparse=1, nodes="pve1")
    assert created is None or created.get("storage") == "dapx-rpool-replica"
    listed = {s["storage"]: s for s in px.storage.get()}
    assert listed["dapx-rpool-replica"]["pool"] == "rpool/replica"
    assert px.storage("dapx-rpool-replica").get()["type"] == "zfspool"
    assert status_of(lambda: px.storage.post(storage="dapx-rpool-replica", type="zfspool",
                                             pool="rpool/other")) >= 400
    assert status_of(lambda: px.storage.post(storage="bad;id", type="zfspool", pool="x")) == 400
    px.storage("dapx-rpool-replica").delete()
    assert "dapx-rpool-replica" not in {s["storage"] for s in px.storage.get()}


# ---------------------------------------------------------------------------------------------
# Backups and restores through PBS (issue 10): every call the pbs-* flows make


def _with_pbs_storage(px, request) -> str:
    """The PBS storage 'pbs' and one VM and one CT backup on it; returns the backend name.

    fakepve keeps storage content as records (a backup is a stored volume); the simulator
    makes real backups of VM 100 and a new CT 702 through vzdump."""
    backend = request.node.callspec.params["px"]
    if backend == "fakepve":
        fake = request.getfixturevalue("fakepve")
        fake.storages["pbs"] = {"type": "pbs", "active": 1, "content": "backup", "files": set(),
                                "server": "127.0.0.1", "datastore": "store1",
                                "username": "root@pam!dapx", "shared": 1}
        fake.storages["local-dir"] = {"type": "dir", "active": 1, "content": "images,rootdir",
                                      "files": set(), "path": "/var/lib/dir"}
        for path, vmid in (("vm/100/2026-01-01T00:00:00Z", 100), ("ct/702/2026-01-01T00:00:00Z", 702)):
            fake.store_file("pbs", path, 4096, content="backup")
            # PVE's PBS plugin lists each backup's guest; fakepve only reads it from vzdump
            # file names, so the record gets it by hand
            fake.storages["pbs"]["volumes"][f"backup/{path}"]["vmid"] = vmid
        return backend
    if 702 not in [c["vmid"] for c in px.nodes("pve1").lxc.get()]:
        wait(px, px.nodes("pve1").lxc.post(vmid=702, ostemplate="local:vztmpl/debian-12.tar.zst",
                                           hostname="ct702", rootfs="local:0.001",
                                           net0="name=eth0,bridge=vmbr0,ip=dhcp"))
    for vmid in ("100", "702"):
        assert wait(px, px.nodes("pve1").vzdump.post(
            vmid=vmid, storage="pbs", mode="snapshot",
            **{"prune-backups": "keep-all=1"}))["exitstatus"] == "OK"
    return backend


def test_backup_listing_and_vzdump_calls_accepted_alike(px, request):
    _with_pbs_storage(px, request)
    pbs = px.storage("pbs").get()
    assert pbs["type"] == "pbs" and pbs["datastore"] == "store1"
    storages = {s["storage"]: s for s in px.nodes("pve1").storage.get()}
    assert "backup" in storages["pbs"]["content"]
    px.nodes("pve1").network.get(type="any_bridge")
    px.cluster.resources.get(type="vm")
    upid = px.nodes("pve1").vzdump.post(vmid="100", storage="pbs", mode="snapshot",
                                        **{"prune-backups": "keep-all=1"})
    assert wait(px, upid)["exitstatus"] == "OK"
    listed = px.nodes("pve1").storage("pbs").content.get(content="backup", vmid=100)
    assert listed and all(b["volid"].startswith("pbs:backup/vm/100/") for b in listed)
    config = px.nodes("pve1").vzdump.extractconfig.get(volume=listed[-1]["volid"])
    assert isinstance(config, str)


def test_restore_calls_accepted_alike(px, request):
    """qemu: ``archive`` (fakepve validates the call, then answers that it cannot restore an
    archive: a limit of the fake, never a 400); lxc: ``ostemplate`` + ``restore=1``."""
    backend = _with_pbs_storage(px, request)
    storage = "local-dir" if backend == "fakepve" else "local"
    vm = px.nodes("pve1").storage("pbs").content.get(content="backup", vmid=100)[-1]["volid"]
    ct = px.nodes("pve1").storage("pbs").content.get(content="backup", vmid=702)[-1]["volid"]
    try:
        upid = px.nodes("pve1").qemu.post(vmid=710, archive=vm, storage=storage, unique=1)
        assert wait(px, upid)["exitstatus"] == "OK"
    except ResourceException as exc:
        assert backend == "fakepve" and exc.status_code == 500, exc
        assert "restoring an archive is not supported" in str(exc)
    upid = px.nodes("pve1").lxc.post(vmid=711, ostemplate=ct, restore=1, storage=storage,
                                     unique=1)
    assert wait(px, upid)["exitstatus"] == "OK"
    conf = px.nodes("pve1").lxc(711).config.get()
    px.nodes("pve1").lxc(711).config.put(description="dapx-replica-of: pve3/702\nsecond line",
                                         digest=conf["digest"])
    assert px.nodes("pve1").lxc(711).config.get()["description"].startswith("dapx-replica-of:")
    assert wait(px, px.nodes("pve1").lxc(711).status.start.post())["exitstatus"] == "OK"
    assert px.nodes("pve1").lxc(711).status.current.get()["status"] == "running"
    assert wait(px, px.nodes("pve1").lxc(711).status.stop.post())["exitstatus"] == "OK"
    assert wait(px, px.nodes("pve1").lxc(711).delete())["exitstatus"] == "OK"
    assert status_of(lambda: px.nodes("pve1").lxc(711).delete()) == 500  # gone: PVE's 500


@pytest.mark.parametrize("call,status,field", [
    (lambda p: p.nodes("pve1").qemu.post(vmid=712, archive="pbs:backup/vm/100/x", storage="bad;s"),
     400, "storage"),
    (lambda p: p.nodes("pve1").lxc.post(vmid=712, ostemplate="x", restore="maybe"), 400, "restore"),
])
def test_restore_and_backup_rejected_alike(px, call, status, field):
    """(fakepve does not check the ``prune-backups`` property string; the simulator does, as
    PVE: the product only ever sends ``keep-all=1``.)"""
    with pytest.raises(ResourceException) as exc:
        call(px)
    assert exc.value.status_code == status
    assert field in (exc.value.errors or {})


def test_fleet_selection_reads_pools_and_tags_alike(px, request):
    """A fleet job's set from /cluster/resources: the pool (user.cfg's pool line on PVE, the
    pool API on fakepve) and the tags are shown the same way by both."""
    from dapx.core.fleet import FleetJob, select_guests

    px.nodes("pve1").qemu(100).config.put(tags="replicate;web")
    if "sim" in request.node.callspec.id:
        sim = request.getfixturevalue("sim")
        (sim["root"] / "etc" / "pve" / "user.cfg").write_text(
            "user:root@pam:1:0:::root@localhost::\n\npool:gold:fleet test:100:\n")
    else:
        px.pools.post(poolid="gold")
        px.pools.put(poolid="gold", vms="100")
    rows = px.cluster.resources.get(type="vm")
    routes = {"pve1": "pve3"}
    assert [g.vmid for g in select_guests(rows, FleetJob(routes=routes, pool="gold"))[0]] == [100]
    assert [g.vmid for g in select_guests(rows, FleetJob(routes=routes, tag="WEB"))[0]] == [100]
    assert select_guests(rows, FleetJob(routes=routes, pool="silver"))[0] == []
