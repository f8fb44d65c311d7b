"""vm-migration end to end on the lab (M1-M4): copies and moves between pve1+pve2 (one
cluster) and pve3 (standing alone).

In file order: refusals before anything runs; VM 100 copied pve1 -> pve3 with new memory,
cores and bridge (ZFS, the replica steps); VM 300 (a raw file on dir storage) copied pve3 ->
pve1 (a vzdump archive streamed node to node); that copy as a scheduled forced job whose
second transfer is killed half-way; VM 100 moved inside the cluster and back (snapshot first,
keep one); VM 300 moved to the other cluster and back with a storage map; moves PVE would
refuse (a snapshot, HA, a running container). Each test asserts what a user would notice:
checksums on both sides, the config PVE's API shows, where the guest is, the refusal's words.
Everything a test makes is removed by the module's end.
"""

from __future__ import annotations

import asyncio
import os
import signal

import pytest
from pydantic import ValidationError

from dapx.core.migration_job import MigrationJob
from dapx.errors import ConflictError, InputError, PermanentError
from dapx.lab import estate
from test_replica_helpers import (find_process, harness, lab_state, latest_artifact, sh,
                                  sha256, wait_for_process, write_random)

pytestmark = pytest.mark.lab

VM100_DISKS = [f"/rpool/data/vm-100-disk-{i}/disk.raw" for i in (0, 1)]
VM300_DISK = "/var/lib/vz/images/300/vm-300-disk-0.raw"
COPY100, COPY300 = 7100, 7300


async def api(node: str):  # noqa: ANN201 - a PveClient
    from dapx.blocks.node import ProxmoxNode

    return (await ProxmoxNode.aload(node)).api()


async def where(vmid: int, node: str = "pve1") -> str | None:
    """The node holding ``vmid`` as ``node``'s cluster sees it."""
    found = [g for g in (await api(node)).guests() if int(g["vmid"]) == vmid]
    return found[0]["node"] if found else None


def config_text(node: str, vmid: int) -> str:
    return sh(node, ["cat", f"/etc/pve/nodes/{node}/qemu-server/{vmid}.conf"])


async def remove_guest(node: str, vmid: int) -> None:
    """Undo: the guest and its disks gone from ``node`` (unlocked, stopped first)."""
    if await where(vmid, node) != node:
        return
    for tool in (["qm", "unlock", str(vmid)], ["qm", "stop", str(vmid)]):
        estate.run(node, tool)
    estate.run(node, ["qm", "destroy", str(vmid)])


def job(**changes) -> MigrationJob:
    base = dict(source="pve1", guest=100, destination="pve3", dest_vmid=COPY100)
    return MigrationJob(**(base | changes))


def drop_snapshots(node: str, dataset: str, prefix: str) -> None:
    """Undo: the snapshots ``dataset@<prefix>...`` a copy left on its source."""
    estate.run(node, ["sh", "-c", 'for s in $(zfs list -H -o name -t snapshot "$1" | grep "$2"); '
                      'do zfs destroy "$s"; done', "sh", dataset, f"@{prefix}"])


async def clean_lab() -> None:
    for node, vmid in (("pve3", COPY100), ("pve1", COPY300)):
        await remove_guest(node, vmid)
    for disk in (0, 1):
        drop_snapshots("pve1", f"rpool/data/vm-100-disk-{disk}", f"dapx_pve3-{COPY100}_")
    for vmid in range(COPY300 + 1, COPY300 + 5):  # a staged or set-aside copy left by a crash
        await remove_guest("pve1", vmid)
    estate.run("pve1", ["rm", "-f", "/etc/pve/ha/resources.cfg"])


@pytest.fixture(scope="module", autouse=True)
def prefect_lab(request: pytest.FixtureRequest):
    lab_state(request)
    yield from harness(request)


@pytest.fixture(scope="module", autouse=True)
async def migration_lab(prefect_lab):  # noqa: ANN001
    from dapx.flows.trust import trust_nodes

    await clean_lab()
    await trust_nodes("pve1", "pve3")
    await trust_nodes("pve3", "pve1")
    yield
    await clean_lab()


# -----------------------------------------------------------------------------------------------
# Refusals


async def test_bad_input_is_refused_before_anything_runs() -> None:
    from dapx.blocks.node import ProxmoxNode
    from dapx.flows.migration import vm_migration

    before = (await api("pve1")).guest_config("pve1", "qemu", 100)["digest"]
    guests_pve3 = sorted(g["vmid"] for g in (await api("pve3")).guests())
    with pytest.raises(InputError, match="guest 555 is not on node pve1"):
        await vm_migration(job=job(guest=555))
    with pytest.raises(InputError, match="unknown node 'nowhere'"):
        await vm_migration(job=job(destination="nowhere"))
    with pytest.raises(ConflictError, match="VMID 300 is qemu guest 'app01' on pve3.*force"):
        await vm_migration(job=job(dest_vmid=300))
    with pytest.raises(InputError, match="pve3 has no bridge 'vmbr7'.*vmbr0, vmbr1"):
        await vm_migration(job=job(bridge_map={"vmbr0": "vmbr7"}))
    with pytest.raises(InputError, match="pve3 has no storage 'tank'"):
        await vm_migration(job=job(target_storage="tank"))
    for bad in ({"memory": 8}, {"cores": 0}, {"destination": "pve1", "dest_vmid": None}):
        with pytest.raises(ValidationError):
            job(**bad)
    pve3 = await ProxmoxNode.aload("pve3")
    await ProxmoxNode(**(pve3.model_dump() | {"name": "pve3x", "api_token_id": None,
                                               "api_token_secret": None})).save(
        "pve3x", overwrite=True)
    try:
        with pytest.raises(InputError, match="pve3x has no API token"):
            await vm_migration(job=job(destination="pve3x", mode="move", dest_vmid=None))
    finally:  # later modules list every node block
        from dapx.blocks.manage import remove_node

        await asyncio.to_thread(remove_node, "pve3x")
    assert (await api("pve1")).guest_config("pve1", "qemu", 100)["digest"] == before
    assert sorted(g["vmid"] for g in (await api("pve3")).guests()) == guests_pve3


# -----------------------------------------------------------------------------------------------
# Copies


async def test_copy_vm100_to_pve3_with_new_memory_cores_and_bridge() -> None:
    from dapx.flows.migration import vm_migration

    pve1, pve3 = await api("pve1"), await api("pve3")
    pve1.wait_task(pve1.set_guest_power("pve1", "qemu", 100, "start"))
    try:
        before = pve1.guest_config("pve1", "qemu", 100)["digest"]
        result = await vm_migration(job=job(memory=4096, cores=4, bridge_map="vmbr0=vmbr1"))
        assert (result.mode, result.transport) == ("copy", "zfs")
        assert result.hardware_changed == {"memory": "4096", "cores": "4",
                                           "net0": result.changes["net0"]}
        config = pve3.guest_config("pve3", "qemu", COPY100)
        assert str(config["memory"]) == "4096" and str(config["cores"]) == "4"
        assert "bridge=vmbr1" in config["net0"]
        assert config["scsi0"].startswith(f"local-zfs:vm-{COPY100}-disk-0,")
        for disk in VM100_DISKS:
            assert sha256("pve1", disk) == sha256("pve3", disk.replace("vm-100", f"vm-{COPY100}"))
        assert pve1.guest_config("pve1", "qemu", 100)["digest"] == before
        assert pve1.guest_status("pve1", "qemu", 100)["status"] == "running"
        assert result.bytes >= 64 * 1024 * 1024
        table = await latest_artifact("migration-result-pve1-100-pve3")
        assert table is not None and "zfs" in str(table.data) and "4096" in str(table.data)
    finally:
        pve1.wait_task(pve1.set_guest_power("pve1", "qemu", 100, "stop"))


def copy300(**changes) -> MigrationJob:
    base = dict(source="pve3", guest=300, destination="pve1", dest_vmid=COPY300,
                target_storage="local-zfs", force=True, start_after=True)
    return MigrationJob(**(base | changes))


async def test_copy_vm300_from_dir_storage_streams_a_vzdump_archive() -> None:
    from dapx.flows.migration import vm_migration

    result = await vm_migration(job=copy300())
    assert (result.transport, result.started) == ("vzdump", True)
    copy = f"/rpool/data/vm-{COPY300}-disk-0/disk.raw"
    assert sha256("pve3", VM300_DISK) == sha256("pve1", copy)
    assert result.bytes >= 32 * 1024 * 1024
    config = (await api("pve1")).guest_config("pve1", "qemu", COPY300)
    assert config["description"].startswith("dapx-replica-of: pve3/300")
    assert (await api("pve1")).guest_status("pve1", "qemu", COPY300)["status"] == "running"
    assert "lock" not in (await api("pve3")).guest_config("pve3", "qemu", 300)


async def test_scheduled_forced_copy_keeps_the_first_copy_when_the_transfer_is_killed() -> None:
    from dapx.flows.migration import vm_migration

    copy = f"/rpool/data/vm-{COPY300}-disk-0/disk.raw"
    first_hash, first_config = sha256("pve1", copy), config_text("pve1", COPY300)
    write_random("pve3", VM300_DISK, 8, offset_mib=4)
    second = asyncio.create_task(vm_migration(job=copy300(bwlimit="4M")))
    pid = await asyncio.to_thread(wait_for_process, "pve1", "qmrestore", "-")
    await asyncio.sleep(2.0)  # bytes are moving: 4 MiB/s of 32 MiB
    os.kill(pid, signal.SIGKILL)
    with pytest.raises(PermanentError, match="restore on the destination failed"):
        await second
    assert sha256("pve1", copy) == first_hash
    assert config_text("pve1", COPY300) == first_config
    pve1 = await api("pve1")
    assert pve1.guest_status("pve1", "qemu", COPY300)["status"] == "running"
    assert not [g for g in pve1.guests() if COPY300 < int(g["vmid"]) < COPY300 + 5]
    assert find_process("pve1", "qmrestore") is None
    third = await vm_migration(job=copy300())
    assert third.replaced == f"qemu {COPY300}" and third.started
    assert sha256("pve1", copy) == sha256("pve3", VM300_DISK) != first_hash
    assert not [g for g in pve1.guests() if COPY300 < int(g["vmid"]) < COPY300 + 5]


# -----------------------------------------------------------------------------------------------
# Moves


async def test_move_vm100_inside_the_cluster_and_back() -> None:
    from dapx.flows.migration import vm_migration

    hashes = [sha256("pve1", d) for d in VM100_DISKS]
    there = await vm_migration(job=job(mode="move", destination="pve2", dest_vmid=None,
                                       snapshot_first=True, keep_snapshots=1))
    assert there.transport == "migrate" and there.snapshot.startswith("dapx_migrate_")
    assert await where(100) == "pve2"
    assert estate.run("pve1", ["test", "-e", "/etc/pve/nodes/pve1/qemu-server/100.conf"]
                      ).returncode != 0
    assert [sha256("pve2", d) for d in VM100_DISKS] == hashes
    assert estate.run("pve1", ["zfs", "list", "rpool/data/vm-100-disk-0"]).returncode != 0
    back = await vm_migration(job=job(mode="move", source="pve2", destination="pve1",
                                      dest_vmid=None, snapshot_first=True, keep_snapshots=1))
    assert await where(100) == "pve1" and back.pruned == [there.snapshot]
    assert [sha256("pve1", d) for d in VM100_DISKS] == hashes
    pve1 = await api("pve1")
    snaps = [s["name"] for s in pve1.snapshots("pve1", "qemu", 100) if s["name"] != "current"]
    assert snaps == [back.snapshot]
    pve1.wait_task(pve1.delete_snapshot("pve1", "qemu", 100, back.snapshot))


async def test_remote_move_of_vm300_with_a_storage_map_and_back() -> None:
    from dapx.flows.migration import vm_migration

    disk = sha256("pve3", VM300_DISK)
    moved = await vm_migration(job=MigrationJob(source="pve3", guest=300, destination="pve1",
                                                mode="move", storage_map={"local": "local-zfs"}))
    assert moved.transport == "remote_migrate"
    assert await where(300, "pve1") == "pve1" and await where(300, "pve3") is None
    assert sha256("pve1", "/rpool/data/vm-300-disk-0/disk.raw") == disk
    back = await vm_migration(job=MigrationJob(source="pve1", guest=300, destination="pve3",
                                               mode="move", storage_map={"local-zfs": "local"}))
    assert back.transport == "remote_migrate"
    assert await where(300, "pve3") == "pve3" and await where(300, "pve1") is None
    assert sha256("pve3", VM300_DISK) == disk
    await assert_token_never_shown()


async def assert_token_never_shown() -> None:
    """The destination's API token went to PVE in remote_migrate only: not into the run's
    parameters, logs or artifacts."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName, LogFilter

    secret = estate.load_state()["nodes"]["pve1"]["api_token_secret"]
    async with get_client() as client:
        runs = await client.read_flow_runs(flow_filter=FlowFilter(
            name=FlowFilterName(any_=["vm-migration"])))
        logs, page = [], None
        while page is None or len(page) == 200:
            page = await client.read_logs(log_filter=LogFilter(), limit=200, offset=len(logs))
            logs += page
        artifacts = await client.read_artifacts()
    assert runs and logs
    assert not [r for r in runs if secret in str(r.parameters)]
    assert not [log for log in logs if secret in log.message]
    assert not [a for a in artifacts if secret in str(a.data)]


async def test_moves_pve_would_refuse_are_refused_before_anything_moves() -> None:
    from dapx.flows.migration import vm_migration

    pve1 = await api("pve1")
    pve1.wait_task(pve1.create_snapshot("pve1", "qemu", 100, "before-upgrade"))
    try:
        with pytest.raises(ConflictError, match="has snapshots \\(before-upgrade\\).*remote "
                                                "migration with snapshots not supported yet"):
            await vm_migration(job=job(mode="move", dest_vmid=None))
    finally:
        pve1.wait_task(pve1.delete_snapshot("pve1", "qemu", 100, "before-upgrade"))
    assert await where(100, "pve3") is None and await where(100) == "pve1"
    estate.run("pve1", ["sh", "-c", "mkdir -p /etc/pve/ha && printf 'vm: 100\\n\\tstate "
                        "started\\n' > /etc/pve/ha/resources.cfg"])
    with pytest.raises(ConflictError, match="managed by HA.*ha-manager remove vm:100"):
        await vm_migration(job=job(mode="move", destination="pve2", dest_vmid=None))
    estate.run("pve1", ["rm", "-f", "/etc/pve/ha/resources.cfg"])
    pve1.wait_task(pve1.set_guest_power("pve1", "lxc", 101, "start"))
    try:
        with pytest.raises(ConflictError, match="can't migrate running container without "
                                                "--online or --restart.*set restart"):
            await vm_migration(job=MigrationJob(source="pve1", guest=101, destination="pve2",
                                                mode="move"))
    finally:
        pve1.wait_task(pve1.set_guest_power("pve1", "lxc", 101, "stop"))
    assert await where(101) == "pve1"
