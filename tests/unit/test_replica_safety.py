"""Pure parts of safe replication: scratch names beside a replica, running receives, BTRFS
written data, dropped disks' source names, and the script that ties a transfer to its SSH
channel (run in a real shell: closing its stdin must end the whole process group)."""

from __future__ import annotations

import subprocess
import time

import pytest

from dapx.core import staging
from dapx.core.btrfs_argv import find_new, parse_find_new
from dapx.core.processes import busy_message, receives_into
from dapx.core.registration import source_volname
from dapx.errors import CommandError, InputError, PermanentError
from dapx.flows import resend
from dapx.tasks import zfs
from dapx.tasks.syncoid import tied_argv


def test_scratch_names_sit_beside_the_target_in_a_dapx_directory() -> None:
    target = "rpool/replica/vm-9100-disk-0"
    assert staging.incoming_name(target) == "rpool/replica/dapx-resend/new.vm-9100-disk-0"
    assert staging.replaced_name(target) == "rpool/replica/dapx-resend/old.vm-9100-disk-0"
    assert staging.incoming_name("rpool/vm-1-disk-0") == "rpool/dapx-resend/new.vm-1-disk-0"
    assert staging.incoming_in_tree("rpool/b/share/child", "rpool/b/share") == \
        "rpool/b/dapx-resend/new.share/child"
    with pytest.raises(InputError, match="whole pool"):
        staging.incoming_name("rpool")
    with pytest.raises(InputError):
        staging.incoming_in_tree("rpool/b/other", "rpool/b/share")


def test_a_swap_cut_by_a_dead_run_is_settled_towards_the_replica() -> None:
    assert staging.swap_repair(True, False) == "none"
    assert staging.swap_repair(True, True) == "destroy-old"  # the new copy is in place
    assert staging.swap_repair(False, True) == "restore-old"  # died between the renames


def test_a_tree_swaps_at_its_root_only() -> None:
    tree = resend.staging_for(["rpool/b/share", "rpool/b/share/child"], tree=True)
    assert tree.roots == ["rpool/b/share"]
    assert tree.incoming["rpool/b/share/child"] == "rpool/b/dapx-resend/new.share/child"
    assert tree.parents() == ["rpool/b/dapx-resend"]
    each = resend.staging_for(["rpool/r/vm-1-disk-0", "rpool/r/vm-1-disk-1"], tree=False)
    assert each.roots == ["rpool/r/vm-1-disk-0", "rpool/r/vm-1-disk-1"]
    assert len(each.all_names()) == 6


async def test_dry_run_settles_a_cut_swap_only_in_its_plan() -> None:
    target, old = "rpool/r/vm-1-disk-0", "rpool/r/dapx-resend/old.vm-1-disk-0"
    stage = resend.staging_for([target], tree=False)
    dst = {n: zfs.DatasetState(n) for n in stage.all_names()}
    dst[old] = zfs.DatasetState(old, True, owner="pve1/1", referenced=5)
    settled = await resend.settle_swaps(None, stage, dst, dry_run=True)  # type: ignore[arg-type]
    assert settled[target].exists and settled[target].owner == "pve1/1"
    assert not dst[target].exists  # the states read are left as they were


PS = """\
  101 /usr/sbin/sshd -D -f /x/sshd_config
  202 sh -c mbuffer -q | lz4 -dc | zfs receive -F 'rpool/replica/vm-9100-disk-1'
  203 /usr/sbin/zfs receive -F rpool/replica/vm-9100-disk-1
  204 zfs receive -F rpool/replica/vm-9100-disk-10
  205 btrfs receive /var/lib/pve/local-btrfs/replica/pve2-200
  206 vi rpool/replica/vm-9100-disk-0
"""


def test_running_receives_are_found_by_whole_name_receiver_first() -> None:
    found = receives_into(PS, ["rpool/replica/vm-9100-disk-1"])
    assert [pid for pid, _ in found] == [203, 202]
    assert receives_into(PS, ["rpool/replica/vm-9100-disk-0"]) == []  # vi is no receive
    assert receives_into(PS, ["rpool/replica/vm-9100-disk"]) == []  # a name is a whole word
    assert len(receives_into(PS, ["rpool/replica"])) == 3  # a receive below it: its tree
    assert [p for p, _ in receives_into(PS, ["/var/lib/pve/local-btrfs/replica/pve2-200"])] == [205]
    message = busy_message("pve3", found)
    assert message.startswith("a receive into a target of this run is still running on pve3 "
                              "(pid 203: /usr/sbin/zfs receive -F rpool/replica/vm-9100-disk-1)")
    assert "\n" not in message


def test_btrfs_written_bytes_from_find_new() -> None:
    out = ("inode 257 file offset 40960 len 4096 disk start 84082688 offset 0 gen 11 flags "
           "NONE disk.raw\ninode 257 file offset 1048576 len 131072 disk start 1 offset 0 "
           "gen 12 flags NONE disk.raw\ntransid marker was 12\n")
    assert parse_find_new(out) == 4096 + 131072
    assert parse_find_new("transid marker was 10\n") == 0  # only read: atime is no data
    with pytest.raises(PermanentError):
        parse_find_new("something else\n")
    assert find_new("/x/images/9200/vm-9200-disk-0", 9)[-2:] == [
        "/x/images/9200/vm-9200-disk-0", "9"]


def test_a_replica_volume_maps_back_to_the_source_guest() -> None:
    assert source_volname("vm-9100-disk-1", 100) == "vm-100-disk-1"
    assert source_volname("subvol-9101-disk-0", 101) == "subvol-101-disk-0"
    assert source_volname("dapx-resend", 100) is None


def _group_alive(pgid: int) -> bool:
    try:
        import os

        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


def test_tied_transfer_dies_with_its_channel_and_reports_its_own_status() -> None:
    # Test code runs a real shell: the constant script with a stand-in transfer.
    # (its own session: the script signals its whole process group when its stdin closes)
    done = subprocess.Popen(tied_argv(["sh", "-c", "echo out; echo err >&2; exit 3"]),
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            start_new_session=True)
    output = done.stdout.read()  # stdin stays open: the channel lives on
    assert (done.wait(10), output) == (3, b"out\nerr\n")  # stderr merged, status kept
    done.stdin.close()
    cut = subprocess.Popen(tied_argv(["sh", "-c", "sleep 60 | sleep 61"]), stdin=subprocess.PIPE,
                           stdout=subprocess.DEVNULL, start_new_session=True)
    time.sleep(0.3)
    assert _group_alive(cut.pid)
    cut.stdin.close()  # the SSH channel closes: the run died or was cancelled
    deadline = time.monotonic() + 5
    while _group_alive(cut.pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    cut.wait(5)
    assert not _group_alive(cut.pid), "the transfer outlived its channel"


ZSTREAMDUMP_V = """BEGIN record
WRITE object = 3 type = 20 checksum type = 7
offset = 0 length = 512 props = 200000000
WRITE object = 5 type = 19 checksum type = 7
offset = 0 length = 131072 props = 200ff00ff
WRITE object = 6 type = 19 checksum type = 7
offset = 0 length = 512 props = 200000000
END checksum = 341e69358d/9f83a2307854/136f57d6d83be78/c5b33db5881c548f
SUMMARY:
\tTotal write size = 132096 (0x20400)
"""


def test_written_probe_counts_file_data_only(tmp_path) -> None:
    # Test code runs the constant probe script in a real shell with stand-in zfs/zstreamdump.
    (tmp_path / "zfs").write_text('#!/bin/sh\necho "zfs $*" >> "$LOG"\n')
    (tmp_path / "zstreamdump").write_text(f"#!/bin/sh\ncat >/dev/null\ncat <<'X'\n{ZSTREAMDUMP_V}X\n")
    for tool in ("zfs", "zstreamdump"):
        (tmp_path / tool).chmod(0o755)
    argv = ["sh", "-c", zfs._PROBE, "sh", zfs.PROBE_SNAPSHOT, "rpool/r/a", "s1"]
    env = {"PATH": f"{tmp_path}:/usr/bin:/bin", "LOG": str(tmp_path / "log")}
    out = subprocess.run(argv, capture_output=True, text=True, check=True, env=env).stdout
    assert zfs.parse_written(out) == {"rpool/r/a": 131072 + 512}  # not the directory's 512
    assert (tmp_path / "log").read_text().splitlines() == [
        "zfs destroy rpool/r/a@dapx-probe", "zfs snapshot rpool/r/a@dapx-probe",
        "zfs send -i rpool/r/a@s1 rpool/r/a@dapx-probe", "zfs destroy rpool/r/a@dapx-probe"]
    (tmp_path / "zstreamdump").write_text("#!/bin/sh\ncat >/dev/null\n")  # a stream cut short
    failed = subprocess.run(argv, capture_output=True, text=True, env=env)
    assert failed.returncode == 1 and "cannot measure" in failed.stderr


def test_scratch_copies_a_run_does_not_resend_into_are_removed() -> None:
    from dapx.flows.replica import ZfsDisk, ZfsPlan

    disks = [ZfsDisk(f"scsi{i}", "", f"rpool/data/vm-1-disk-{i}", f"rpool/r/vm-9-disk-{i}")
             for i in (0, 1)]
    stage = resend.staging_for([d.target for d in disks], tree=False)
    dst = {n: zfs.DatasetState(n, exists=n.endswith("new.vm-9-disk-1") or "/new." not in n)
           for n in stage.all_names()}
    plan = ZfsPlan(disks, {}, dst, {}, None, stage, staged={})
    assert plan.unused_copies() == ["rpool/r/dapx-resend/new.vm-9-disk-1"]
    plan.staged = {"scsi1": None}  # type: ignore[dict-item]  # resent into: kept
    assert plan.unused_copies() == []


class _Node:
    name = "pve3"


def _answers(monkeypatch, replies: list[tuple[int, str, str]]) -> list[list[str]]:  # noqa: ANN001
    """Stand in for the SSH runner (no real ZFS with ``written`` here): each command gets the
    next (exit status, stdout, stderr); returns the commands run."""
    from dapx.transports.ssh import Result

    seen: list[list[str]] = []

    async def run(node, argv, **kwargs):  # noqa: ANN001, ANN003, ANN202
        seen.append(argv)
        status, out, err = replies.pop(0)
        return Result(stdout=out, stderr=err, exit_status=status)

    monkeypatch.setattr(zfs, "run", run)
    return seen


async def test_written_property_where_the_pool_has_it(monkeypatch) -> None:  # noqa: ANN001
    # OpenZFS: one `zfs get written`, no probe (only real ZFS runs this path end to end)
    seen = _answers(monkeypatch, [(0, "rpool/r/a\t0\nrpool/r/b\t40960\n", "")])
    heads = {"rpool/r/a": "s1", "rpool/r/b": "s2"}
    assert await zfs.head_written.fn(_Node(), heads) == {"rpool/r/a": 0, "rpool/r/b": 40960}
    assert seen == [["zfs", "get", "-H", "-p", "-o", "name,value", "written", "rpool/r/a",
                     "rpool/r/b"]]


async def test_written_probe_where_the_pool_lacks_the_property(monkeypatch) -> None:  # noqa: ANN001
    seen = _answers(monkeypatch, [
        (1, "", "bad property list: invalid property 'written'\n"), (0, "rpool/r/a\t512\n", "")])
    assert await zfs.head_written.fn(_Node(), {"rpool/r/a": "s1"}) == {"rpool/r/a": 512}
    assert seen[1][:2] == ["sh", "-c"] and seen[1][4:] == ["dapx-probe", "rpool/r/a", "s1"]
    _answers(monkeypatch, [(1, "", "cannot open 'rpool/r/a': I/O error\n")])
    with pytest.raises(CommandError, match="zfs get written failed on node pve3"):
        await zfs.head_written.fn(_Node(), {"rpool/r/a": "s1"})


def test_only_this_jobs_replicas_of_dropped_disks_are_leftovers() -> None:
    """Two jobs replicate guest 100 to one node (VMIDs 9100 and 20100): a disk of one is never
    a dropped disk of the other (remove_dropped_disks would destroy the other's replica)."""
    from dapx.flows.dropped import leftover_replicas

    owned = {"rpool/replica/vm-9100-disk-0": "pve1/100", "rpool/replica/vm-9100-disk-2": "pve1/100",
             "rpool/replica/vm-20100-disk-0": "pve1/100", "rpool/replica/vm-9100-disk-3": "pve2/7",
             "rpool/replica/subvol-9100-disk-1": "pve1/100"}
    assert leftover_replicas(owned, "pve1/100", {"rpool/replica/vm-9100-disk-0"}, 9100) == [
        "rpool/replica/subvol-9100-disk-1", "rpool/replica/vm-9100-disk-2"]


def test_only_an_incremental_into_this_jobs_own_target_skips_marking_it() -> None:
    from dapx.core.snapshots import FullSend, Incremental, Snapshot
    from dapx.flows.replica import ZfsDisk, ZfsPlan

    disk = ZfsDisk("scsi0", "", "rpool/data/vm-1-disk-0", "rpool/r/vm-9-disk-0")
    stage = resend.staging_for([disk.target], tree=False)
    a, b = (Snapshot(name=n, guid=i, createtxg=i, creation=i) for i, n in ((1, "a"), (2, "b")))

    def plan(owner: str | None, transfer) -> ZfsPlan:  # noqa: ANN001
        dst = {n: zfs.DatasetState(n, exists=True, owner=owner) for n in stage.all_names()}
        return ZfsPlan([disk], {}, dst, {"scsi0": transfer}, None, stage)

    assert plan("pve1/1", Incremental(base=a, to=b)).marked(disk, "pve1/1")
    assert not plan("pve1/2", Incremental(base=a, to=b)).marked(disk, "pve1/1")
    assert not plan(None, Incremental(base=a, to=b)).marked(disk, "pve1/1")
    assert not plan("pve1/1", FullSend(to=b)).marked(disk, "pve1/1")


async def test_steps_run_side_by_side_to_the_end_before_a_failure_is_raised() -> None:
    import asyncio

    from dapx.flows.replica import gather_all

    finished = []

    async def slow() -> str:
        await asyncio.sleep(0.05)
        finished.append("slow")
        return "done"

    async def failing() -> None:
        raise PermanentError("no")

    with pytest.raises(PermanentError, match="no"):
        await gather_all(failing(), slow())
    assert finished == ["slow"]  # not left running behind the error
    assert await gather_all(slow(), slow()) == ["done", "done"]


async def test_btrfs_send_sizes_count_from_the_base_or_from_the_start(monkeypatch) -> None:  # noqa: ANN001
    from dapx.core.snapshots import FullSend, Incremental, Snapshot
    from dapx.flows import btrfs_replica
    from dapx.tasks import btrfs

    asked = {}

    async def written_since(node, mount, subvolumes):  # noqa: ANN001, ANN202
        asked.update(subvolumes)
        return {path: 4096 for path in subvolumes}

    monkeypatch.setattr(btrfs, "written_since", written_since)
    disks = [btrfs_replica.BtrfsDisk(f"scsi{i}", f"/b/images/1/vm-1-disk-{i}", "", "", "", "",
                                     "/b") for i in (0, 1)]
    base, new = (Snapshot(name=n, guid=g, createtxg=g, creation=g) for g, n in ((7, "a"), (9, "n")))
    plans = {"scsi0": Incremental(base=base, to=new), "scsi1": FullSend(to=new)}
    sizes = await btrfs_replica.send_sizes(None, "/b", disks, plans, "n")
    assert asked == {"/b/images/1/vm-1-disk-0@n": 7, "/b/images/1/vm-1-disk-1@n": -1}
    assert sizes == {"/b/images/1/vm-1-disk-0@n": 4096, "/b/images/1/vm-1-disk-1@n": 4096}
