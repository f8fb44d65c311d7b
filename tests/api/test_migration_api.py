"""vm-migration's PVE API calls (M1-M3): accepted and rejected alike by fakepve (PVE 9's
schema) and the lab's simulator, and the migration tasks against fakepve: what they read,
what they send, what they refuse, and that remote_migrate's token never reaches an error."""

from __future__ import annotations

import json
import ssl
from pathlib import Path

import pytest
from proxmoxer import ProxmoxAPI
from proxmoxer.core import ResourceException
from pydantic import SecretStr

from dapx.blocks import ProxmoxNode
from dapx.core.migration_job import MigrationJob
from dapx.core.migration_plan import copy_mark
from dapx.core.migration_rules import plan_migration, remote_endpoint
from dapx.errors import ConflictError, PermanentError
from dapx.tasks import migration_api as tasks
from dapx.transports.pve import format_fingerprint
from tests.api.test_sim_pve import SECRET, api, sim, wait  # noqa: F401 - shared fixture

FINGERPRINT = ":".join(["AB"] * 32)
ENDPOINT = remote_endpoint("127.0.0.9", 8006, "root@pam!dapx", "not-the-real-one", FINGERPRINT)


@pytest.fixture(scope="module")
def cluster_sim(sim):
    """The simulator as pve1 of a two-node cluster (pve2 shares its /etc/pve)."""
    config = Path(sim["root"]) / "etc" / "dapx-lab" / "node.json"
    node = json.loads(config.read_text())
    node["cluster_nodes"] = {"pve1": "127.0.0.1", "pve2": "127.0.0.1"}
    config.write_text(json.dumps(node))
    return sim


@pytest.fixture(params=["sim", "fakepve"])
def backend(request, cluster_sim):
    """(proxmoxer client, name) with a VM 710 and a container 711 on pve1."""
    if request.param == "sim":
        px = api(cluster_sim)
        for vmid, kind, extra in ((710, "qemu", {"memory": 512}), (711, "lxc", {"memory": 512})):
            where = {g["vmid"]: g for g in px.cluster.resources.get(type="vm")}
            if vmid in where:
                node = where[vmid]["node"]
                wait(px, getattr(px.nodes(node), kind)(vmid).delete(), node)
            wait(px, getattr(px.nodes("pve1"), kind).post(vmid=vmid, net0=(
                "virtio,bridge=vmbr0" if kind == "qemu" else "name=eth0,bridge=vmbr0"), **extra))
        return px, "sim"
    fake = request.getfixturevalue("fakepve")
    fake.apitokens["root@pam!dapx"] = SECRET
    fake.add_node("pve2")
    fake.add_vm(710, "vm710", node="pve1", config={"memory": 512,
                                                   "net0": "virtio,bridge=vmbr0"})
    fake.add_ct(711, "ct711", node="pve1")
    host, port = fake.url.split("//")[1].rsplit(":", 1)
    px = ProxmoxAPI(host, port=int(port), user="root@pam", token_name="dapx", token_value=SECRET,
                    verify_ssl=request.getfixturevalue("fakepve_cafile"), backend="https",
                    timeout=30)
    return px, "fakepve"


def status_of(call) -> int:
    try:
        call()
        return 200
    except ResourceException as exc:
        return exc.status_code


def test_reads_the_plan_needs(backend) -> None:
    px, _ = backend
    config = px.nodes("pve1").qemu(710).config.get(current=1)
    assert config["digest"] and "memory" in config
    status = px.nodes("pve1").qemu(710).status.current.get()
    assert status["ha"]["managed"] == 0
    assert any(e["type"] == "node" and e["name"] == "pve1" for e in px.cluster.status.get())
    models = px.nodes("pve1").capabilities.qemu.cpu.get()
    assert models and all("name" in m for m in models)
    assert {"storage", "type", "content", "active"} <= set(px.nodes("pve1").storage.get()[0])
    px.nodes("pve1").network.get(type="any_bridge")


def test_migrate_calls_accepted_alike(backend) -> None:
    px, _ = backend
    vm, ct = px.nodes("pve1").qemu(710), px.nodes("pve1").lxc(711)
    remote = {"target-endpoint": ENDPOINT, "target-storage": "local:local",
              "target-bridge": "vmbr0:vmbr0", "target-vmid": 9710, "delete": 1}
    assert vm.remote_migrate.post(**remote).startswith("UPID:pve1:")
    assert ct.remote_migrate.post(**remote, restart=1).startswith("UPID:pve1:")
    upid = vm.migrate.post(target="pve2", **{"with-local-disks": 1, "targetstorage": "local:local"})
    assert upid.startswith("UPID:pve1:") and ":710:" in upid
    upid = ct.migrate.post(target="pve2", restart=1, **{"target-storage": "local:local"})
    assert upid.startswith("UPID:pve1:") and ":711:" in upid


@pytest.mark.parametrize("call,field", [
    (lambda p: p.nodes("pve1").qemu(710).migrate.post(target="pve2", restart=1), "restart"),
    (lambda p: p.nodes("pve1").lxc(711).migrate.post(target="pve2", **{"with-local-disks": 1}),
     "with-local-disks"),
    (lambda p: p.nodes("pve1").qemu(710).remote_migrate.post(
        **{"target-endpoint": ENDPOINT, "target-bridge": "vmbr0"}), "target-storage"),
    (lambda p: p.nodes("pve1").qemu(710).remote_migrate.post(
        **{"target-endpoint": ENDPOINT, "target-storage": "local", "target-bridge": "vmbr0",
           "restart": 1}), "restart"),
    (lambda p: p.nodes("pve1").qemu(710).migrate.post(online=1), "target"),
])
def test_migrate_calls_rejected_alike(backend, call, field) -> None:
    px, _ = backend
    with pytest.raises(ResourceException) as exc:
        call(px)
    assert exc.value.status_code == 400 and field in (exc.value.errors or {})


def test_config_changes_and_discard_accepted_alike(backend) -> None:
    px, _ = backend
    vm = px.nodes("pve1").qemu(710)
    digest = vm.config.get()["digest"]
    vm.config.put(memory="4096", cores=4, sockets=1, cpu="host", digest=digest,
                  net0="virtio,bridge=vmbr1,firewall=1",
                  description="dapx-replica-of: pve1/100\nweb server")
    config = vm.config.get()
    assert str(config["memory"]) == "4096" and "bridge=vmbr1" in config["net0"]
    assert config["description"].split("\n")[0] == "dapx-replica-of: pve1/100"
    assert status_of(lambda: vm.config.put(cores=2, digest=digest)) >= 400  # stale digest
    upid = vm.snapshot.post(snapname="dapx_migrate_20250101T000000Z", description="by dapx")
    assert wait(px, upid)["exitstatus"] == "OK"
    upid = vm.delete(purge=1, **{"destroy-unreferenced-disks": 1})
    assert upid.startswith("UPID:pve1:")


# -----------------------------------------------------------------------------------------------
# The tasks against fakepve


@pytest.fixture
def pve(fakepve, fakepve_cafile):
    fakepve.apitokens["root@pam!dapx"] = SECRET
    fakepve.add_node("pve2")
    fingerprint = format_fingerprint(ssl.PEM_cert_to_DER_cert(Path(fakepve_cafile).read_text()))
    vm = fakepve.add_vm(100, "web01", config={
        "scsi0": "local-lvm:vm-100-disk-0,size=8G", "cores": 2, "memory": 2048,
        "net0": "virtio=BC:24:11:00:00:01,bridge=vmbr0"})
    return fakepve, vm, fingerprint


def form(body) -> dict[str, str]:  # noqa: ANN001
    """A recorded request body (urlencoded form) as a dict."""
    from urllib.parse import parse_qsl

    text = body.decode() if isinstance(body, bytes) else str(body or "")
    return dict(parse_qsl(text))


def block(fake, fingerprint: str, name: str = "pve1") -> ProxmoxNode:
    return ProxmoxNode(name=name, host=fake.host, api_port=fake.port,
                       api_token_id="root@pam!dapx", api_token_secret=SecretStr(SECRET),
                       tls_fingerprint=fingerprint)


def test_source_facts_and_an_ha_guest_refused(pve) -> None:
    fake, vm, fingerprint = pve
    facts = tasks.read_source.fn(block(fake, fingerprint), 100)
    assert facts.kind == "qemu" and facts.digest and not facts.ha_managed
    assert facts.config["memory"] == "2048" and "pve1" in facts.cluster
    vm.ha_state = "started"
    facts = tasks.read_source.fn(block(fake, fingerprint), 100)
    dest = tasks.read_destination.fn(block(fake, fingerprint, "pve2"), 100,
                                     copy_mark("pve1", 100), True)
    assert dest.cpu_models
    job = MigrationJob(source="pve1", guest=100, destination="pve2", mode="move",
                       target_storage="local-lvm")
    with pytest.raises(ConflictError, match="managed by HA"):
        plan_migration(job, facts, dest)


def test_remote_migrate_sends_the_endpoint_once_and_never_shows_the_token(pve) -> None:
    fake, _, fingerprint = pve
    source = block(fake, fingerprint)
    dest = ProxmoxNode(name="pve3", host="198.18.213.13", api_token_id="root@pam!dapx",
                       api_token_secret=SecretStr("d3st-s3cret-token"),
                       tls_fingerprint=FINGERPRINT)
    job = MigrationJob(source="pve1", guest=100, destination="pve3", mode="move",
                       dest_vmid=9100)
    facts = tasks.read_source.fn(source, 100)
    from dapx.core.migration_plan import DestFacts

    target = DestFacts(node="pve3", storages={"local-lvm": {"type": "lvmthin",
                                                            "content": "images", "active": 1}},
                       bridges=frozenset({"vmbr0"}), guests={})
    plan = plan_migration(job, facts, target)
    upid = tasks.start_remote_migrate.fn(source, dest, plan)
    assert upid.startswith("UPID:pve1:")
    sent = [form(r[2]) for r in fake.requests if "remote_migrate" in str(r[1])]
    assert len(sent) == 1 and "=d3st-s3cret-token," in sent[0]["target-endpoint"]  # PVE's way
    assert sent[0]["target-endpoint"].startswith("host=198.18.213.13,port=8006,apitoken=")
    assert sent[0]["target-storage"] == "local-lvm:local-lvm"
    assert sent[0]["target-vmid"] == "9100" and sent[0]["delete"] == "1"
    fake.fail("POST", "/nodes/pve1/qemu/100/remote_migrate", 500,
              "cannot parse apitoken=PVEAPIToken=root@pam!dapx=d3st-s3cret-token")
    with pytest.raises(PermanentError) as exc:
        tasks.start_remote_migrate.fn(source, dest, plan)
    assert "d3st-s3cret-token" not in str(exc.value) and "***" in str(exc.value)


def test_cluster_migrate_and_config_changes_are_repeat_safe(pve) -> None:
    fake, _, fingerprint = pve
    source = block(fake, fingerprint)
    job = MigrationJob(source="pve1", guest=100, destination="pve2", mode="move", memory=4096,
                       bridge_map={"vmbr0": "vmbr1"})
    facts = tasks.read_source.fn(source, 100)
    target = tasks.read_destination.fn(block(fake, fingerprint, "pve2"), 100, "", False)
    target = target.__class__(**{**target.__dict__, "bridges": frozenset({"vmbr0", "vmbr1"})})
    plan = plan_migration(job, facts, target)
    assert tasks.start_migrate.fn(source, plan).startswith("UPID:pve1:")
    body = form([r for r in fake.requests if r[1].endswith("/migrate")][-1][2])
    assert body == {"target": "pve2", "with-local-disks": "1"}
    changes = tasks.apply_changes.fn(source, "pve1", "qemu", 100, plan, facts.config, None,
                                     False)
    assert changes == {"memory": "4096",
                       "net0": "virtio=BC:24:11:00:00:01,bridge=vmbr1"}
    assert tasks.apply_changes.fn(source, "pve1", "qemu", 100, plan, facts.config, None,
                                  False) == {}
