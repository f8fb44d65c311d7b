"""The snapshot flows' pure steps: the view with a replica job's destination, retention plans
per job, the sanoid policy's new file, and the CLI refusing bad input before anything runs."""

from __future__ import annotations

import pytest

from dapx.core.jobspec import ReplicaJob
from dapx.core.sanoidconf import SanoidPolicy
from dapx.core.snapview import parse_listing
from dapx.flows.snapshot_policy import new_conf
from dapx.flows.snapshot_retention import job_disks, plan_job
from dapx.flows.snapshot_view import build_view
from dapx.tasks.jobs import JobRef

STORAGE = "zfspool: local-zfs\n\tpool rpool/data\n\tcontent images\n"
DISK = "rpool/data/vm-100-disk-0"
REPLICA = "rpool/replica/vm-9100-disk-0"


def zfs_lines(dataset: str, snaps: list[tuple[str, int, int]]) -> str:
    lines = [f"{dataset}\tguid\t1"]
    for name, guid, txg in snaps:
        for prop, value in (("guid", guid), ("createtxg", txg), ("creation", 1700000000 + txg),
                            ("used", 4096), ("referenced", 1 << 20)):
            lines.append(f"{dataset}@{name}\t{prop}\t{value}")
    return "\n".join(lines)


def listing(dataset: str, snaps: list[tuple[str, int, int]], config: bool = True):  # noqa: ANN201
    configs = ("/etc/pve/qemu-server/100.conf:scsi0: local-zfs:vm-100-disk-0,size=1M\n"
               "/etc/pve/qemu-server/100.conf:[before]\n") if config else ""
    return parse_listing(f"@@dapx-section zfs\n{zfs_lines(dataset, snaps)}\n"
                         f"@@dapx-section storage\n{STORAGE}@@dapx-section configs\n{configs}")


SOURCE = listing(DISK, [("before", 10, 1), ("autosnap_a_hourly", 11, 2), ("dapx_pve3-9100_1", 12, 3),
                        ("dapx_pve3-9100_2", 13, 4), ("dapx_pve3-9100_3", 14, 5), ("mine", 15, 6)])
DEST = listing(REPLICA, [("dapx_pve3-9100_1", 12, 30), ("dapx_pve3-9100_2", 13, 40)], config=False)
REF = JobRef("vm100-to-pve3", "zfs-replica",
             ReplicaJob(source="pve1", guest=100, destination="pve3", dest_vmid=9100, keep=1))


def test_view_groups_and_marks_what_the_destination_holds() -> None:
    view = build_view(["pve1"], 100, {"pve1": SOURCE, "pve3": DEST}, [REF], [])
    guest = view.guests[0]
    assert [(s.name, s.group, s.held_by) for s in guest.snapshots] == [
        ("before", "proxmox", []), ("autosnap_a_hourly", "sanoid", []),
        ("dapx_pve3-9100_1", "replication", ["pve3"]), ("dapx_pve3-9100_2", "replication", ["pve3"]),
        ("dapx_pve3-9100_3", "replication", []), ("mine", "other", [])]
    assert guest.replicas[0].common == "dapx_pve3-9100_2"
    assert "on pve3" in str(view) and view.rows()[0]["used"] == 4096


def test_retention_plan_per_job_keeps_the_common_on_both_sides() -> None:
    sides = plan_job(job_disks(REF, SOURCE, DEST), {"pve1": SOURCE, "pve3": DEST})
    source, dest = sides
    assert (source.where, source.removed, source.kept) == \
        (DISK, ["dapx_pve3-9100_1"], ["dapx_pve3-9100_2", "dapx_pve3-9100_3"])
    assert (dest.where, dest.removed, dest.kept) == \
        (REPLICA, ["dapx_pve3-9100_1"], ["dapx_pve3-9100_2"])
    assert source.foreign == 3 and source.common == "dapx_pve3-9100_2"


def test_policy_off_without_a_block_changes_nothing() -> None:
    assert new_conf("[a]\n\tx = 1\n", 100, SanoidPolicy(enabled=False), [DISK]) == "[a]\n\tx = 1\n"


def test_job_tag_matches_the_deployments() -> None:
    from dapx.deployments.jobs import JOB_TAG
    from dapx.tasks.jobs import JOB_TAG as READ_TAG

    assert READ_TAG == JOB_TAG


@pytest.mark.parametrize("argv, expected", [
    (["snapshot", "create", "--node", "pve1", "--guest", "100", "--name", "1x"], "invalid for"),
    (["snapshot", "rollback", "--node", "PVE 1", "--guest", "100", "--name", "ab"], "node name"),
    (["snapshot", "delete", "--node", "pve1", "--guest", "99", "--name", "ab"], "VMID 99"),
    (["snapshot", "list", "--guest", "100"], "--node NODE or --all-nodes"),
    (["snapshot", "policy", "--node", "pve1", "--guest", "100", "--daily", "-2"], "daily"),
    (["snapshot", "policy", "--node", "pve1", "--guest", "100", "--template", "x"], "template"),
])
def test_cli_refuses_bad_input_in_one_line(argv: list[str], expected: str, capsys,  # noqa: ANN001
                                           monkeypatch) -> None:  # noqa: ANN001
    from dapx.cli import main

    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:9/api")  # never ask a live server

    assert main(argv) == 2
    err = capsys.readouterr().err
    assert expected in err and err.count("\n") == 1 and "Traceback" not in err


U = ["0c24c2af-b99d-3f46-86e9-1d0f6a4d62bd", "e1a63b70-781f-ac46-9aa4-e04529fd4fa6",
     "7a92abaf-93dd-2047-9676-2a7e517fdf10", "c8c4dd96-3fd5-0d4c-a941-d68cdd314fc6",
     "11111111-2222-3333-4444-555555555555", "22222222-3333-4444-5555-666666666666"]
BTRFS_STORAGE = "btrfs: local-btrfs\n\tpath /var/lib/pve/local-btrfs\n\tcontent images\n"


def btrfs_line(sid: int, cgen: int, parent: str, received: str, uuid: str, path: str) -> str:
    return (f"ID {sid} gen {cgen} cgen {cgen} top level 5 parent_uuid {parent}    "
            f"received_uuid {received}    uuid {uuid} path {path}")


def btrfs_listing(lines: list[str], config: str = "") -> object:
    return parse_listing("@@dapx-section btrfs /var/lib/pve/local-btrfs\n" + "\n".join(lines)
                         + f"\n@@dapx-section storage\n{BTRFS_STORAGE}@@dapx-section configs\n"
                         + config)


def test_btrfs_view_and_retention_match_received_snapshots_by_uuid() -> None:
    disk = "images/200/vm-200-disk-0"
    source = btrfs_listing([
        btrfs_line(256, 7, "-", "-", U[0], disk),
        btrfs_line(257, 8, U[0], "-", U[1], f"{disk}@dapx_pve3-9200_1"),
        btrfs_line(258, 9, U[0], "-", U[2], f"{disk}@dapx_pve3-9200_2"),
        btrfs_line(259, 10, U[0], "-", U[3], f"{disk}@dapx_pve3-9200_3")],
        "/etc/pve/qemu-server/200.conf:scsi0: local-btrfs:200/vm-200-disk-0.raw,size=1M\n")
    received = "replica/pve2-200/vm-200-disk-0"
    dest = btrfs_listing([btrfs_line(300, 20, "-", U[1], U[4], f"{received}@dapx_pve3-9200_1"),
                          btrfs_line(301, 21, "-", U[2], U[5], f"{received}@dapx_pve3-9200_2")])
    ref = JobRef("vm200-to-pve3", "btrfs-replica",
                 ReplicaJob(source="pve2", guest=200, destination="pve3", dest_vmid=9200,
                            keep=1))
    view = build_view(["pve2"], 200, {"pve2": source, "pve3": dest}, [ref], [])
    held = {s.name: s.held_by for s in view.guests[0].snapshots}
    assert held == {"dapx_pve3-9200_1": ["pve3"], "dapx_pve3-9200_2": ["pve3"],
                    "dapx_pve3-9200_3": []}
    assert view.guests[0].replicas[0].common == "dapx_pve3-9200_2"
    src_side, dst_side = plan_job(job_disks(ref, source, dest), {"pve2": source, "pve3": dest})
    assert src_side.removed == ["dapx_pve3-9200_1"]
    assert src_side.kept == ["dapx_pve3-9200_2", "dapx_pve3-9200_3"]
    assert dst_side.where == f"/var/lib/pve/local-btrfs/{received}"
    assert dst_side.removed == ["dapx_pve3-9200_1"] and dst_side.kept == ["dapx_pve3-9200_2"]
