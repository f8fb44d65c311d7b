"""The fleet's quick round, pure parts: which guests it may copy (everything else goes to the
guest's own replica run) and how its batched node scripts report each group."""

from __future__ import annotations

import pytest

from dapx.core.fleet import FleetGuest, FleetJob, guest_job
from dapx.core.snapshots import Snapshot
from dapx.core.storagecfg import parse_storage_cfg
from dapx.flows import fleet_round, replica
from dapx.errors import CommandError
from dapx.tasks import guests, zfs

CFG = "zfspool: local-zfs\n\tpool rpool/data\n\tcontent images,rootdir\n"
VM = "scsi0: local-zfs:vm-100-disk-0,size=32M\nnet0: virtio=BC:24:11:5A:10:64,bridge=vmbr0\n"
SRC, TGT = "rpool/data/vm-100-disk-0", "rpool/replica/vm-10100-disk-0"
DEST_CONF = "/etc/pve/nodes/pve3/qemu-server/10100.conf"


def quick() -> fleet_round.Quick:
    job = FleetJob(routes={"pve1": "pve3"}, vmid_offset=10000)
    replica_job = guest_job(job, FleetGuest(vmid=100, node="pve1", kind="qemu"))
    config = guests.SourceGuest("pve1", 100, "qemu", VM, parse_storage_cfg(CFG))
    return fleet_round.Quick(FleetGuest(vmid=100, node="pve1", kind="qemu"), replica_job,
                             replica.guest_run(replica_job), config,
                             replica.zfs_disks(config, replica_job),
                             "dapx_pve3-10100_20261201T120000Z")


def snap(name: str, guid: int, txg: int) -> Snapshot:
    return Snapshot(name=name, guid=guid, createtxg=txg, creation=1_700_000_000 + txg)


def sides(owner: str | None = "pve1/100", written: int | None = 0, target: bool = True,
          owned: dict | None = None, configs: dict | None = None) -> fleet_round.Sides:
    base = snap("dapx_pve3-10100_20261201T110000Z", 7, 10)
    dst = {n: zfs.DatasetState(n) for n in (
        TGT, "rpool/replica/dapx-resend/new.vm-10100-disk-0",
        "rpool/replica/dapx-resend/old.vm-10100-disk-0")}
    if target:
        dst[TGT] = zfs.DatasetState(TGT, exists=True, owner=owner, snapshots=[base],
                                    written=written)
    src = {SRC: zfs.DatasetState(SRC, exists=True, snapshots=[base])}
    mark = guests.replica_mark("pve1", 100)
    return fleet_round.Sides(src, dst, owned if owned is not None else {TGT: "pve1/100"},
                             configs if configs is not None else {DEST_CONF: mark + "\n"})


def test_a_plain_incremental_into_its_own_registered_replica_is_taken() -> None:
    assert fleet_round.refusal(quick(), sides(), "pve3", register=True) == ""


def test_every_other_case_goes_to_the_guests_own_run() -> None:
    q = quick()
    cases = {
        "no replica yet": sides(target=False),
        "does not carry this guest's mark": sides(owner="pve2/100"),
        "written to since its newest snapshot": sides(written=4096),
        "a disk the guest no longer has": sides(owned={TGT: "pve1/100",
                                                       "rpool/replica/vm-10100-disk-1":
                                                       "pve1/100"}),
        "not registered": sides(configs={}),
    }
    for expected, found in cases.items():
        assert expected in fleet_round.refusal(q, found, "pve3", register=True), expected
    # Without registration, a missing config does not matter.
    assert fleet_round.refusal(q, sides(configs={}), "pve3", register=False) == ""
    # A config there that is not our replica's (another guest holds the VMID).
    other = sides(configs={DEST_CONF: "name: someone-else\n"})
    assert "not registered" in fleet_round.refusal(q, other, "pve3", register=True)


def test_a_forced_resends_scratch_copy_sends_the_guest_to_its_own_run() -> None:
    found = sides()
    scratch = "rpool/replica/dapx-resend/new.vm-10100-disk-0"
    found.dst[scratch] = zfs.DatasetState(scratch, exists=True)
    assert "forced resend" in fleet_round.refusal(quick(), found, "pve3", register=True)


def test_script_outcomes_name_each_group_and_a_silent_one_failed() -> None:
    out = "ok\ta@x\nfailed\tb@x\tdataset is busy\n"
    assert zfs.parse_outcomes(out, ["a@x", "b@x", "c@x"]) == {
        "a@x": "", "b@x": "dataset is busy", "c@x": "no outcome reported"}


def stub_zfs(tmp_path, body: str) -> dict[str, str]:
    """A stub ``zfs`` on PATH (test code may run a shell: it checks the constant scripts)."""
    (tmp_path / "zfs").write_text(f"#!/bin/sh\n{body}\n")
    (tmp_path / "zfs").chmod(0o755)
    return {"PATH": f"{tmp_path}:/usr/bin:/bin"}


def test_snapshot_groups_script_reports_each_guest(tmp_path) -> None:
    import subprocess

    # zfs-fuse's zfs takes one name per snapshot command; b@x cannot be taken at all.
    env = stub_zfs(tmp_path, '''case "$1 $#" in
  "list"*) exit 1 ;;
  "snapshot 2") [ "$2" = b@x ] && { echo "cannot create snapshot 'b@x': out of space" >&2; exit 1; }; exit 0 ;;
  *) echo "usage: zfs snapshot <snapshot>" >&2; exit 2 ;;
esac''')
    argv = ["bash", "-c", zfs._SNAPSHOT_GROUPS, "bash", "8", "a@x", "a2@x", "--", "b@x", "--"]
    out = subprocess.run(argv, capture_output=True, text=True, env=env).stdout
    assert zfs.parse_outcomes(out, ["a@x", "b@x"]) == {
        "a@x": "", "b@x": "cannot create snapshot 'b@x': out of space"}


def test_snapshot_groups_are_taken_a_few_at_once_never_more(tmp_path) -> None:
    import subprocess

    log = tmp_path / "log"
    env = stub_zfs(tmp_path, f'''[ "$1" = snapshot ] || exit 1
echo "start $2" >> "{log}"; sleep 0.5; echo "end $2" >> "{log}"''')
    groups = [arg for g in range(7) for arg in (f"d{g}@x", "--")]
    argv = ["bash", "-c", zfs._SNAPSHOT_GROUPS, "bash", "3", *groups]
    out = subprocess.run(argv, capture_output=True, text=True, env=env).stdout
    assert zfs.parse_outcomes(out, [f"d{g}@x" for g in range(7)]) == {
        f"d{g}@x": "" for g in range(7)}
    open_now, most = 0, 0
    for line in log.read_text().splitlines():
        open_now += 1 if line.startswith("start") else -1
        most = max(most, open_now)
    assert most == 3  # three at once, never a fourth


def test_prune_script_checks_the_copy_counts_gone_as_done_and_names_busy(tmp_path) -> None:
    import subprocess

    # c lacks the snapshot it must hold (c@new): nothing of c goes, c@old is never asked for.
    env = stub_zfs(tmp_path, '''echo "$*" >> "$(dirname "$0")/calls"
case "$1 $2" in
  "list -H") shift 6; for p; do [ "$p" = c@new ] || echo "$p"; done; exit 1 ;;
esac
case "$2" in
  a@old) exit 0 ;;
  a@gone) echo "could not find any snapshots to destroy; check snapshot names." >&2; exit 1 ;;
  b@*) echo "cannot destroy snapshot $2: dataset is busy" >&2; exit 1 ;;
esac''')
    argv = ["bash", "-c", zfs._DESTROY_SETS, "bash", "a@new", "c@new", "---",
            "a", "new", "old", "gone", "--", "b", "", "x", "--", "c", "new", "old", "--"]
    out = subprocess.run(argv, capture_output=True, text=True, env=env).stdout
    assert zfs.parse_outcomes(out, ["a", "b", "c"]) == {
        "a": "", "b": "cannot destroy snapshot b@x: dataset is busy",
        "c": "does not hold new"}
    calls = (tmp_path / "calls").read_text().splitlines()
    assert calls == ["list -H -o name -t snapshot a@new c@new", "destroy a@old",
                     "destroy a@gone", "destroy b@x"]


def test_send_sizes_script_leaves_out_what_zfs_cannot_measure(tmp_path) -> None:
    import subprocess

    env = stub_zfs(tmp_path, '''[ "$7" = d1 ] && { echo 4096; exit 0; }
echo "bad property list: invalid property '$5'" >&2; exit 1''')
    argv = ["sh", "-c", zfs._SEND_SIZES, "sh", "d1", "s1", "d2", "s2"]
    done = subprocess.run(argv, capture_output=True, text=True, env=env)
    assert done.returncode == 0 and zfs.parse_written(done.stdout) == {"d1": 4096}


def test_states_script_reads_processes_states_and_written_in_one_go(tmp_path) -> None:
    import subprocess

    # zfs-fuse: no written property; a receive into t runs.
    env = stub_zfs(tmp_path, '''case "$*" in
  *" written "*) echo "bad property list: invalid property 'written'" >&2; exit 2 ;;
  "get -H -p -r -d 1"*) printf 't\\tguid\\t-\\t-\\nt@s\\tguid\\t7\\t-\\n'; exit 0 ;;
esac''')
    (tmp_path / "ps").write_text("#!/bin/sh\necho '  42 zfs receive t'\n")
    (tmp_path / "ps").chmod(0o755)
    argv = ["sh", "-c", zfs._STATES_PLUS, "sh", zfs._SECTION, "guid", "1", "1", "t"]
    done = subprocess.run(argv, capture_output=True, text=True, env=env)
    ps, listing, written = zfs.split_sections(done.stdout)
    assert done.returncode == 0 and "zfs receive t" in ps and listing.startswith("t\tguid")
    assert zfs._lacks_written(written) and zfs.parse_written(written) == {}
    argv[6:8] = ["0", "0"]  # neither extra: the states alone, between the marks
    ps, listing, written = zfs.split_sections(subprocess.run(
        argv, capture_output=True, text=True, env=env).stdout)
    assert (ps, written) == ("", "") and "t@s" in listing
    with pytest.raises(CommandError, match="cut"):
        zfs.split_sections("  42 zfs receive t\n")


def turns(items: int, senders: int, turn: float, fails: int = -1) -> tuple[list, int, int,
                                                                          list]:
    """Run ``in_turns`` over ``items`` with a hold that counts; (results, holds taken, most
    holds at once, items worked)."""
    import asyncio
    from contextlib import asynccontextmanager

    counts, worked = {"holds": 0, "now": 0, "most": 0}, []

    @asynccontextmanager
    async def hold():  # noqa: ANN202
        counts["holds"] += 1
        counts["now"] += 1
        counts["most"] = max(counts["most"], counts["now"])
        try:
            yield
        finally:
            counts["now"] -= 1

    async def work(item: int) -> int | None:
        worked.append(item)
        if item == fails:
            raise RuntimeError(f"a bug at {item}")
        await asyncio.sleep(0.01 if fails < 0 else 5)
        return None if item % 5 == 0 else item  # every fifth one fails

    async def run() -> list:
        try:
            return await fleet_round.in_turns(list(range(items)), senders, hold, work, turn)
        finally:  # as in_turns ends, not when asyncio.run cancels what is left
            assert counts["now"] == 0  # every hold given back

    return asyncio.run(run()), counts["holds"], counts["most"], worked


def test_senders_take_turns_on_one_hold_each_and_work_every_item_once() -> None:
    done, holds, most, worked = turns(20, 3, turn=60)
    assert sorted(worked) == list(range(20))
    assert sorted(done) == [i for i in range(20) if i % 5]  # the failed ones are left out
    assert (holds, most) == (3, 3)  # one hold per sender for the whole queue
    done, holds, most, worked = turns(20, 3, turn=0)  # a turn over after each item
    assert sorted(worked) == list(range(20)) and holds == 20 and most == 3
    assert turns(2, 4, turn=60)[1:3] == (2, 2)  # no more senders than items
    assert turns(0, 4, turn=60)[:3] == ([], 0, 0)


def test_a_sender_that_raises_stops_the_others_and_their_holds_are_given_back() -> None:
    with pytest.raises(RuntimeError, match="a bug at 2"):
        turns(20, 3, turn=60, fails=2)  # items 0 and 1 are under way (5 s each) as 2 fails


async def test_a_route_whose_nodes_cannot_be_read_leaves_its_guests_to_their_own_runs(
        monkeypatch, caplog) -> None:  # noqa: ANN001 - pytest fixtures
    # The first fleet run before `trust-nodes`: the trust check fails in the round's reads.
    from types import SimpleNamespace

    async def one_candidate(*_args) -> list[fleet_round.Quick]:  # noqa: ANN002
        return [quick()]

    async def untrusted(*_args) -> None:  # noqa: ANN002
        raise CommandError("pve1 does not trust pve3 yet: run trust-nodes pve1 pve3")

    monkeypatch.setattr(fleet_round, "candidates", one_candidate)
    monkeypatch.setattr(fleet_round, "read_sides", untrusted)
    job = FleetJob(routes={"pve1": "pve3"}, vmid_offset=10000)
    with caplog.at_level("INFO", logger="dapx.fleet"):
        taken = await fleet_round.route_round(
            job, SimpleNamespace(name="pve1"), SimpleNamespace(name="pve3"),
            [FleetGuest(vmid=100, node="pve1", kind="qemu")], None, None, None)
    assert taken == []
    [line] = [r.getMessage() for r in caplog.records if r.name == "dapx.fleet"]
    assert "0 of 1 guest(s) copied here" in line and "does not trust pve3" in line
