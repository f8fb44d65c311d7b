"""Fleet jobs, pure parts: which guests a job means, how each replicates, its replica job
(destination VMID = VMID + offset), the node limits' names, and the run's failure line."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from dapx.core.fleet import (FleetGuest, FleetJob, FleetRow, dest_vmid, failure_message,
                             guest_job, job_slots, receive_limit_name, replica_method,
                             select_guests, send_limit_name, wanted_method)
from dapx.core.guestconfig import parse_guest_config
from dapx.errors import InputError

ROWS = [  # /cluster/resources?type=vm of a two-node cluster, as PVE answers it
    {"type": "qemu", "vmid": 100, "node": "pve1", "name": "web", "tags": "prod;replicate",
     "pool": "gold"},
    {"type": "lxc", "vmid": 101, "node": "pve1", "name": "ct", "pool": "gold"},
    {"type": "qemu", "vmid": 102, "node": "pve1", "tags": "Replicate"},
    {"type": "qemu", "vmid": 200, "node": "pve2"},
    {"type": "storage", "id": "storage/pve1/local", "node": "pve1"},
    {"type": "qemu", "vmid": 300, "node": "pve9"},
]
STORAGES = {"local-zfs": {"type": "zfspool", "pool": "rpool/data"},
            "local-btrfs": {"type": "btrfs", "path": "/var/lib/pve/local-btrfs"},
            "local": {"type": "dir", "path": "/var/lib/vz"}}


def job(**fields) -> FleetJob:
    return FleetJob(**{"routes": {"pve1": "pve3"}} | fields)


def vmids(guests: list[FleetGuest]) -> list[int]:
    return [g.vmid for g in guests]


def test_every_guest_of_the_source_nodes_by_default() -> None:
    guests, missing = select_guests(ROWS, job())
    assert vmids(guests) == [100, 101, 102] and missing == []
    both, _ = select_guests(ROWS + ROWS, job(routes={"pve1": "pve3", "pve2": "pve3"}))
    assert vmids(both) == [100, 101, 102, 200]  # a cluster listed by two members counts once
    assert both[1].kind == "lxc" and both[0].name == "web"


def test_a_list_a_pool_and_a_tag_narrow_the_set() -> None:
    assert vmids(select_guests(ROWS, job(vmids=[101, 102]))[0]) == [101, 102]
    assert select_guests(ROWS, job(vmids=[100, 200, 555]))[1] == [200, 555]  # not on pve1
    assert vmids(select_guests(ROWS, job(pool="gold"))[0]) == [100, 101]
    assert vmids(select_guests(ROWS, job(tag="replicate"))[0]) == [100, 102]  # any case
    assert vmids(select_guests(ROWS, job(pool="gold", tag="prod"))[0]) == [100]


def config(text: str, kind: str = "qemu"):  # noqa: ANN201
    return parse_guest_config(text, kind)


def test_the_replica_method_follows_every_disks_storage() -> None:
    assert replica_method(config("scsi0: local-zfs:vm-1-disk-0,size=1G\n"
                                 "scsi1: local-zfs:vm-1-disk-1,size=1G\n"), STORAGES) == "zfs"
    assert replica_method(config("rootfs: local-btrfs:1/vm-1-disk-0.raw,size=1G\n", "lxc"),
                          STORAGES) == "btrfs"
    mixed = replica_method(config("scsi0: local-zfs:vm-1-disk-0\nscsi1: local:1/a.raw\n"),
                           STORAGES)
    assert "dir, zfspool" in mixed and "PBS" in mixed
    assert replica_method(config("memory: 512\n"), STORAGES) == "the guest has no disks"
    assert "unknown" in replica_method(config("scsi0: gone:vm-1-disk-0\n"), STORAGES)


def test_the_storage_filter() -> None:
    assert wanted_method("zfs", job()) and wanted_method("btrfs", job())
    assert not wanted_method("its disks are on dir storage", job())
    assert wanted_method("btrfs", job(storage="btrfs"))
    assert not wanted_method("zfs", job(storage="btrfs"))


def test_a_guests_replica_job_takes_the_fleets_options_and_the_vmid_rule() -> None:
    fleet = job(vmid_offset=10000, keep=5, register_vm=False, bwlimit="10M",
                routes={"pve1": "pve3", "pve3": "pve1"})
    replica = guest_job(fleet, FleetGuest(vmid=100, node="pve3", kind="qemu"))
    assert (replica.source, replica.destination, replica.target_vmid) == ("pve3", "pve1", 10100)
    assert replica.keep == 5 and replica.register_vm is False and replica.bwlimit == "10M"
    assert replica.notify == "never"  # the fleet run reports, not each guest
    assert dest_vmid(100, 0) == 100
    with pytest.raises(InputError, match="beyond PVE's 999999999"):
        guest_job(job(vmid_offset=999_999_900), FleetGuest(vmid=100, node="pve1", kind="qemu"))


@pytest.mark.parametrize("fields, message", [
    ({"routes": {}}, "at least one source"),
    ({"routes": {"pve1": "pve1"}}, "its own destination"),
    ({"routes": {"PVE 1": "pve3"}}, "node name"),
    ({"vmids": [100, 100]}, "listed twice"),
    ({"vmids": [99]}, "out of range"),
    ({"pool": "gold;rm -rf"}, "pool names"),
    ({"tag": "a b"}, "tags"),
    ({"per_source": 0}, "greater than or equal to 1"),
    ({"surprise": 1}, "Extra inputs"),
])
def test_bad_fleet_jobs_are_refused(fields: dict, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        job(**fields)


def test_node_limits_and_job_slots() -> None:
    assert send_limit_name("pve1") == "dapx-node-pve1-send"
    assert receive_limit_name("pve3") == "dapx-node-pve3-receive"
    with pytest.raises(InputError):
        send_limit_name("pve1;x")
    assert job_slots(4, None) == 4 and job_slots(4, 2) == 2 and job_slots(4, 9) == 4
    assert job().nodes() == ["pve1", "pve3"]


def test_the_failure_line_names_every_failed_guest() -> None:
    rows = [FleetRow(guest=100, node="pve1"), FleetRow(guest=101, node="pve1",
                                                       outcome="failed", error="boom"),
            FleetRow(guest=102, node="pve1", outcome="skipped")]
    assert failure_message(rows) == "1 of 2 guest(s) failed (1 completed): pve1/101: boom"
