"""zfs-replica of a container on the lab: CT 101 (rootfs local-zfs:subvol-101-disk-0, a
dataset with files) pve1 -> pve3 as CT 9101, bridge vmbr0 mapped to vmbr1.

In file order, like a job's life: full copy with registration, then an incremental after a
file changed. Asserts what a user sees: every file of the rootfs has the same sha256 on both
sides (the seed's checksums, from state.json), the registered config in pve3's lxc directory.
"""

from __future__ import annotations

import pytest

from dapx.core.jobspec import ReplicaJob
from dapx.lab import estate
from test_replica_helpers import harness, lab_state, sh, sha256, zfs_snapshots

pytestmark = pytest.mark.lab

SRC, DST, VMID, NEW = "pve1", "pve3", 101, 9101
SRC_DS, DST_DS = "rpool/data/subvol-101-disk-0", "rpool/replica/subvol-9101-disk-0"
CONF = f"/etc/pve/nodes/{DST}/lxc/{NEW}.conf"
TAG = "dapx_pve3-9101_"
FILES: dict[str, str] = {}
"""rootfs-relative path -> sha256 as seeded (filled from state.json by the fixture)"""


def job(**changes) -> ReplicaJob:
    base = dict(source=SRC, guest=VMID, destination=DST, dest_vmid=NEW, dest_pool="rpool",
                subfolder="replica", bridge_map="vmbr0=vmbr1", keep=2)
    return ReplicaJob(**(base | changes))


def clean_lab() -> None:
    """Remove what earlier runs left: the replica, our snapshots, the registration."""
    estate.run(DST, ["zfs", "destroy", "-r", DST_DS])
    for snap in zfs_snapshots(SRC, SRC_DS):
        if snap.startswith("dapx_"):
            sh(SRC, ["zfs", "destroy", f"{SRC_DS}@{snap}"])
    estate.run(DST, ["rm", "-f", CONF])


def assert_files_equal() -> None:
    for rel, seeded in FILES.items():
        src = sha256(SRC, f"/{SRC_DS}/{rel}")
        assert src == seeded, f"source {rel} changed"
        assert sha256(DST, f"/{DST_DS}/{rel}") == src, rel


@pytest.fixture(scope="module", autouse=True)
def prefect_lab(request: pytest.FixtureRequest):
    state = lab_state(request)
    root = state["guests"]["101"]["rootfs"]["path"]
    FILES.clear()
    FILES.update({rec["path"][len(root) + 1:]: rec["sha256"]
                  for rec in state["guests"]["101"]["files"].values()})
    assert FILES, "state.json lists no files for CT 101"
    clean_lab()
    yield from harness(request)
    clean_lab()  # the lab as the next module expects it: CT 101 without our snapshots


async def test_container_replicated_and_registered() -> None:
    from dapx.flows.replica import zfs_replica
    from dapx.flows.trust import trust_nodes

    await trust_nodes(SRC, DST)
    result = await zfs_replica(job=job())
    assert [(d.disk, d.source_dataset, d.dest_dataset) for d in result.disks] == [
        ("rootfs", SRC_DS, DST_DS)]
    assert result.disks[0].plan.startswith("full send")
    assert_files_equal()
    config = dict(line.split(": ", 1) for line in sh(DST, ["cat", CONF]).splitlines()
                  if ": " in line and not line.startswith("#"))
    assert config["rootfs"].startswith("dapx-rpool-replica:subvol-9101-disk-0,")
    assert "bridge=vmbr1" in config["net0"]
    assert config["hostname"] == "ct101"
    assert "onboot" not in config
    assert result.registration.startswith("created lxc 9101")
    assert estate.run(DST, ["test", "-e", f"/etc/pve/nodes/{DST}/qemu-server/{NEW}.conf"]
                      ).returncode != 0


async def test_container_incremental_after_a_file_changes() -> None:
    from dapx.flows.replica import zfs_replica

    page = "var/www/index.html"
    sh(SRC, ["sh", "-c", 'printf "%s" "$1" > "$2"', "sh", "<html>v2</html>\n",
             f"/{SRC_DS}/{page}"])  # test code: constant script, values positional
    FILES[page] = sha256(SRC, f"/{SRC_DS}/{page}")
    result = await zfs_replica(job=job())
    assert result.disks[0].plan.startswith("incremental")
    assert result.bytes_sent < 1024 * 1024  # a few bytes changed out of an 8 MiB rootfs
    assert_files_equal()
    assert result.registration.startswith(("updated", "unchanged"))
    ours = [s for s in zfs_snapshots(DST, DST_DS) if s.startswith(TAG)]
    assert ours == [s for s in zfs_snapshots(SRC, SRC_DS) if s.startswith(TAG)]
    assert ours[-1] == result.snapshot
