"""Deploy tier, runs that survive faults: a replica job run by a process worker against a
Prefect server run as `dapx up` runs it. The server restarted mid-run, the flow process
killed hard, worker and flow killed together (a host reboot): in each case the run ends in a
state that says what happened, the next run of the job completes, and the replica's bytes
equal the source's. A run's result can be read through the API after a server restart; a
run started with a VMID out of range is refused by the server before any worker sees it.

The tests run in file order, like a job's life.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from prefect.client.orchestration import get_client

from dapx.deployments import server
from dapx.deployments.processes import descendants, stop_tree
from tests.deploy import conftest
from tests.deploy.conftest import OwnServer, dapx, prefect_env, run_cli, trust
from tests.helpers import tiny_guests
from tests.lab.test_replica_helpers import (find_process, preserved, sha256, wait_for_process,
                                            write_random)

SRC, DST, VMID, NEW = "pve1", "pve3", 100, 9500
DISKS = {f"rpool/data/vm-100-disk-{i}": f"rpool/replica/vm-{NEW}-disk-{i}" for i in (0, 1)}
FAST, SLOW = "rel-fast", "rel-slow"
ZOMBIE_AFTER = 45.0  # heartbeats every 30 s (Prefect's minimum) + margin
GIVE_BACK = 20.0
"""Seconds the seeded disks' give-back waits on snapshots that the killed sends left busy (in
full suite runs zfs-fuse has kept them busy past 120 s, and past a 45 s budget: waiting longer
buys little; the tiers that check the seeded bytes ran before this one)."""


class Worker:
    """`prefect worker start` on the dapx pool, in a session of its own (as `dapx up` runs
    it); the worker starts each flow run in a session of its own too."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(server.worker_argv(limit=4), env=server.worker_env(),
                                     start_new_session=True, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)

    def flow_processes(self) -> list[int]:
        return descendants(self.proc.pid)

    def kill_all(self) -> None:
        """SIGKILL the worker and every flow run it started, at once."""
        for pid in [self.proc.pid, *self.flow_processes()]:
            os.kill(pid, signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc.poll() is None:
            stop_tree(self.proc, grace=20.0)


@pytest.fixture(scope="module")
def product(lab: dict, tmp_path_factory: pytest.TempPathFactory) -> Iterator[OwnServer]:
    """A server with the product's blocks, pool, automations and two jobs of one guest (a
    fast one and one slowed to 1 MiB/s), and the lab trusted pve1 -> pve3."""
    own = OwnServer(tmp_path_factory.mktemp("reliability-prefect-home"))
    with prefect_env(own.home, own.api_url), preserved(SRC, list(DISKS), GIVE_BACK):
        own.start()
        try:
            server.register_blocks()
            server.ensure_work_pool()
            from dapx.deployments.automations import ensure_automations

            ensure_automations(zombie_after=ZOMBIE_AFTER)
            from dapx.deployments.builtin import deploy_flow
            from dapx.lab.register import register_lab_nodes

            register_lab_nodes()

            trust(SRC, DST)
            deploy_flow("dapx.flows.nodes.node_check")
            for name, extra in ((FAST, []), (SLOW, ["--bwlimit", "1M"])):
                assert dapx("job", "create", "replica", "--source", SRC, "--guest", str(VMID),
                            "--dest", DST, "--dest-vmid", str(NEW), "--name", name, "--keep",
                            "2", *extra) == 0
            yield own
        finally:
            own.stop()
            tiny_guests.remove_replicas(DST, [NEW])  # destroys again while zfs-fuse says busy
            # The jobs' snapshots on the source go with the give-back (rollback -r to the
            # mark), within its own busy budget: destroying them first waited up to 90 s
            # per snapshot that a killed send left busy (a 306 s teardown in one full run).


def start(job: str) -> uuid.UUID:
    out = run_cli("prefect", "deployment", "run", f"zfs-replica/{job}").stdout
    return uuid.UUID(out.split("flow-run/")[1].split()[0].strip())


def state_of(run: uuid.UUID):  # noqa: ANN201
    with get_client(sync_client=True) as client:
        return client.read_flow_run(run).state


def wait_final(run: uuid.UUID, timeout: float = 180.0):  # noqa: ANN201 - a State
    return conftest.wait_final(run, timeout).state


def wait_receives_gone(timeout: float = 60.0) -> None:
    """A killed run's remote transfer may still write the target: wait for it to end."""
    deadline = time.monotonic() + timeout
    while find_process(DST, "zfs", "receive") and time.monotonic() < deadline:
        time.sleep(0.5)


def assert_replica_equal() -> None:
    for src, dst in DISKS.items():
        assert sha256(SRC, f"/{src}/disk.raw") == sha256(DST, f"/{dst}/disk.raw"), dst


def slow_run_transferring(worker: Worker) -> uuid.UUID:
    """Start the slow job after an 8 MiB change; return once its zfs send is running."""
    write_random(SRC, "/rpool/data/vm-100-disk-1/disk.raw", 8, offset_mib=2)
    run = start(SLOW)
    wait_for_process(SRC, "zfs", "send", timeout=90)
    assert state_of(run).is_running()
    return run


def test_first_copy(product: OwnServer) -> None:
    worker = Worker()
    try:
        state = wait_final(start(FAST))
        assert state.is_completed(), state
    finally:
        worker.stop()
    assert_replica_equal()


def test_server_restart_mid_run_then_the_result_is_still_readable(product: OwnServer) -> None:
    worker = Worker()
    try:
        run = slow_run_transferring(worker)
        product.restart()
        state = wait_final(run)
        assert state.is_completed(), state
        assert_replica_equal()
        product.restart()  # results are kept: readable through the API after a restart
        result = state_of(run).result()
        assert result.guest == VMID and result.bytes_sent >= 8 * 1024 * 1024
        assert all(d.plan.startswith("incremental") for d in result.disks)
        assert wait_final(start(FAST)).is_completed()  # the lock was neither lost nor leaked
    finally:
        worker.stop()


def test_flow_killed_hard_does_not_block_the_next_run(product: OwnServer) -> None:
    worker = Worker()
    try:
        run = slow_run_transferring(worker)
        pids = worker.flow_processes()  # one process per run: the engine, no supervisor
        assert len(pids) == 1 and b"prefect.engine" in Path(f"/proc/{pids[0]}/cmdline") \
            .read_bytes(), [Path(f"/proc/{p}/cmdline").read_bytes() for p in pids]
        os.kill(pids[0], signal.SIGKILL)
        state = wait_final(run, timeout=60)
        assert state.is_crashed(), state
        wait_receives_gone()
        started = time.monotonic()
        assert wait_final(start(FAST)).is_completed()
        assert time.monotonic() - started < 60, "a dead run blocked the next one"
    finally:
        worker.stop()
    assert_replica_equal()


def test_worker_and_flow_killed_together_is_crashed_by_the_automation(product) -> None:
    worker = Worker()
    run = slow_run_transferring(worker)
    killed = time.monotonic()
    worker.kill_all()  # as a host reboot or the OOM killer would
    assert state_of(run).is_running()  # nobody is left to say otherwise...
    state = wait_final(run, timeout=ZOMBIE_AFTER + 60)  # ...but its heartbeats stopped
    assert state.is_crashed() and "heartbeat" in (state.message or ""), state
    assert time.monotonic() - killed <= ZOMBIE_AFTER + 45
    wait_receives_gone()
    worker = Worker()
    try:
        assert wait_final(start(FAST)).is_completed()
    finally:
        worker.stop()
    assert_replica_equal()


def test_parameters_out_of_range_are_refused_by_the_server(product: OwnServer) -> None:
    bad = run_cli("prefect", "deployment", "run", f"zfs-replica/{FAST}", "--params",
                  '{"job": {"source": "pve1", "guest": 5, "destination": "pve3"}}',
                  check=False)
    assert bad.returncode != 0 and "flow-run/" not in bad.stdout, bad.stdout
    assert "5 is less than the minimum of 100" in bad.stdout + bad.stderr
    node = run_cli("prefect", "deployment", "run", "node-check/default", "-p", "node=PVE 1",
                   check=False)
    assert node.returncode != 0 and "flow-run/" not in node.stdout, node.stdout
    assert "does not match" in node.stdout + node.stderr
