"""Node flows on lab nodes (N2, N3, N4): what an administrator sees after adding a node."""

from __future__ import annotations

import pytest

from dapx.flows.nodes import install_sanoid, node_check, node_inventory
from dapx.lab import estate
from test_replica_helpers import harness, lab_state


@pytest.fixture(scope="module", autouse=True)
def prefect_lab(request: pytest.FixtureRequest):
    lab_state(request)
    yield from harness(request)


async def test_node_check_reports_pools_bridges_and_storages() -> None:
    result = await node_check("pve3")
    assert result.hostname == "pve3"
    assert "rpool" in [pool["name"] for pool in result.zfs_pools]
    assert {"vmbr0", "vmbr1"} <= set(result.bridges)
    assert {"local-zfs", "local-btrfs", "local", "pbs"} <= set(result.storages)
    assert result.api_version


async def test_inventory_lists_guests_with_their_disks() -> None:
    pve1 = await node_inventory("pve1")
    guests = {g.vmid: g for g in pve1.guests}
    assert guests[100].kind == "qemu" and [d.volid for d in guests[100].disks] == [
        "local-zfs:vm-100-disk-0", "local-zfs:vm-100-disk-1"]
    assert guests[101].kind == "lxc" and guests[101].disks[0].volid == \
        "local-zfs:subvol-101-disk-0"
    assert "rpool/data/vm-100-disk-0" in {d["name"] for d in pve1.datasets}
    # pve2 shares the cluster's /etc/pve but lists its own guests and its own subvolumes.
    pve2 = await node_inventory("pve2")
    assert {g.vmid for g in pve2.guests} >= {200} and 100 not in {g.vmid for g in pve2.guests}
    subvolumes = [s for fs in pve2.btrfs for s in fs.get("subvolumes", [])]
    assert any("images/200/vm-200-disk-0" in s for s in subvolumes), pve2.btrfs


async def test_install_sanoid_enables_the_timer() -> None:
    result = await install_sanoid("pve3")
    assert result.timer == "enabled" and result.version
    enabled = estate.run("pve3", ["systemctl", "is-enabled", "sanoid.timer"])
    assert enabled.returncode == 0 and enabled.stdout.strip() == "enabled"
