"""fleet-replica on the lab, in process: four tiny guests pve1 -> pve3. The first run copies
each guest in its own replica run; later runs copy the steady state in the quick round (the
fleet run itself, no subflow), and every guest the quick round must not take goes to its own
run: a replica written on the destination (refused, its bytes kept), a guest whose lock
another run holds. Each test checks what a user would see: checksums on both sides, the
fleet table, snapshots kept, the destination's config. The tests build on each other.
"""

from __future__ import annotations

import json

import pytest

from dapx.core.fleet import FleetJob
from dapx.lab import estate
from tests.helpers import tiny_guests
from test_replica_helpers import harness, lab_state, latest_artifact, sha256, zfs_snapshots

pytestmark = pytest.mark.lab

SRC, DST, OFFSET = "pve1", "pve3", 30000
GUESTS = [171, 172, 173, 174]
TAG = "dapx_pve3-3017"


def job(**changes) -> FleetJob:
    return FleetJob(**({"routes": {SRC: DST}, "vmids": GUESTS, "vmid_offset": OFFSET,
                        "keep": 2} | changes))


def cleanup(wait: bool = True) -> None:
    tiny_guests.remove(SRC, GUESTS, wait)
    tiny_guests.remove_replicas(DST, [g + OFFSET for g in GUESTS], wait)
    tiny_guests.remove_snapshots(SRC, TAG, wait)


@pytest.fixture(scope="module", autouse=True)
def prefect_lab(request: pytest.FixtureRequest):
    lab_state(request)
    cleanup()
    tiny_guests.make(SRC, GUESTS)
    yield from harness(request)
    cleanup(wait=False)


def disk(node: str, vmid: int) -> str:
    base = "/rpool/data" if node == SRC else "/rpool/replica"
    return f"{base}/vm-{vmid}-disk-0/disk.raw"


def assert_copied(guests: list[int]) -> None:
    for guest in guests:
        assert sha256(SRC, disk(SRC, guest)) == sha256(DST, disk(DST, guest + OFFSET)), guest


async def run_fleet(**options):  # noqa: ANN201
    """(final state, {guest label: its row in the run's table}, flow run id)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    from dapx.flows.fleet import fleet_replica

    state = await fleet_replica(job=job(), return_state=True, **options)
    run = state.state_details.flow_run_id
    async with get_client() as client:
        found = await client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run])))
    table = next(a for a in found if (a.key or "").startswith("fleet-result"))
    data = json.loads(table.data) if isinstance(table.data, str) else table.data
    return state, {r["guest"]: r for r in data}, str(run)


async def test_first_run_copies_each_guest_in_its_own_run() -> None:
    from dapx.flows.trust import trust_nodes

    await trust_nodes(SRC, DST)
    state, rows, run = await run_fleet()
    assert state.is_completed(), state.message
    assert {r["outcome"] for r in rows.values()} == {"completed"} and len(rows) == 4
    assert all(r["flow run"] not in ("-", run) for r in rows.values())  # subflows
    assert_copied(GUESTS)


async def test_the_steady_state_is_copied_in_the_quick_round() -> None:
    tiny_guests.change(SRC, GUESTS)
    config = estate.run(DST, ["cat", f"/etc/pve/nodes/{DST}/qemu-server/"
                                     f"{GUESTS[0] + OFFSET}.conf"]).stdout
    state, rows, run = await run_fleet()
    assert state.is_completed(), state.message
    assert {r["flow run"] for r in rows.values()} == {run}, rows  # no subflow: the run itself
    assert all(r["sent"] != "0 B" for r in rows.values()), rows
    progress = await latest_artifact("fleet-progress-pve1")  # the run's own bar, full
    assert progress is not None and str(progress.flow_run_id) == run
    assert float(progress.data) == 100.0
    assert_copied(GUESTS)
    assert estate.run(DST, ["cat", f"/etc/pve/nodes/{DST}/qemu-server/"
                                   f"{GUESTS[0] + OFFSET}.conf"]).stdout == config
    tiny_guests.change(SRC, GUESTS)
    state, rows, run = await run_fleet()  # a third version: retention keeps two
    assert state.is_completed() and {r["flow run"] for r in rows.values()} == {run}
    assert_copied(GUESTS)
    for guest in GUESTS:
        src = [s for s in zfs_snapshots(SRC, f"rpool/data/vm-{guest}-disk-0")
               if s.startswith(TAG)]
        dst = [s for s in zfs_snapshots(DST, f"rpool/replica/vm-{guest + OFFSET}-disk-0")
               if s.startswith(TAG)]
        assert len(src) == 2 and src == dst, (guest, src, dst)


async def test_a_written_replica_goes_to_its_own_run_and_keeps_its_bytes() -> None:
    written, others = GUESTS[1], [g for g in GUESTS if g != GUESTS[1]]
    estate.run(DST, ["dd", "if=/dev/urandom", f"of={disk(DST, written + OFFSET)}", "bs=1024",
                     "count=64", "conv=notrunc", "status=none"], check=True)
    kept = sha256(DST, disk(DST, written + OFFSET))
    tiny_guests.change(SRC, GUESTS)
    state, rows, run = await run_fleet()
    assert state.is_failed()
    row = rows[f"{SRC}/{written}"]
    assert row["outcome"] == "failed" and "written" in row["error"], row
    assert row["flow run"] not in ("-", run)  # its own replica run said why
    assert sha256(DST, disk(DST, written + OFFSET)) == kept  # nothing lost
    assert all(rows[f"{SRC}/{g}"]["outcome"] == "completed"
               and rows[f"{SRC}/{g}"]["flow run"] == run for g in others), rows
    assert_copied(others)
    # The administrator decides: a forced run of that one guest rolls it back.
    from dapx.core.fleet import FleetGuest, guest_job
    from dapx.flows.replica import zfs_replica

    await zfs_replica(job=guest_job(job(), FleetGuest(vmid=written, node=SRC, kind="qemu")),
                      force=True)
    assert_copied([written])


async def test_a_guest_whose_lock_is_held_waits_in_its_own_run() -> None:
    from dapx.tasks.locks import exclusive, guest_lock_name

    tiny_guests.change(SRC, GUESTS)
    async with exclusive(guest_lock_name(SRC, GUESTS[0]), "a test holding it"):
        state, rows, run = await run_fleet(lock_wait=2)
    assert state.is_failed()
    row = rows[f"{SRC}/{GUESTS[0]}"]
    assert row["outcome"] == "failed" and "another run is already" in row["error"], row
    assert all(rows[f"{SRC}/{g}"]["flow run"] == run for g in GUESTS[1:]), rows
    assert_copied(GUESTS[1:])
