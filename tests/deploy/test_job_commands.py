"""Deploy tier: `dapx job run` does what a person expects: `--plan` waits and prints the plan,
`--wait` prints the result and exits 1 when the run fails. (What `dapx job create` and `list`
do needs no lab: test_cli_without_lab.py.)"""

from __future__ import annotations

import subprocess

import pytest

from dapx.deployments import server
from dapx.deployments.processes import stop_tree
from tests.deploy.conftest import dapx, run_cli, trust_here

JOB = ["dapx", "job", "create", "replica", "--source", "pve1", "--guest", "100", "--dest",
       "pve3", "--dest-vmid", "9700", "--name", "ux-job"]


@pytest.fixture
def worker(lab_nodes: str):  # noqa: ANN201
    proc = subprocess.Popen(server.worker_argv(limit=2), env=server.worker_env(),
                            start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    yield proc
    stop_tree(proc, grace=10)


def test_run_plan_and_wait(worker) -> None:  # noqa: ANN001
    trust_here("pve1", "pve3")
    assert dapx(*JOB[1:], "--paused") == 0
    try:
        plan = run_cli("dapx", "job", "run", "ux-job", "--plan")
        assert "# Replication plan: guest 100" in plan.stdout and "full send" in plan.stdout
        assert "completed" in plan.stdout

        done = run_cli("dapx", "job", "run", "ux-job", "--wait")
        assert "vm-9700-disk-0" in done.stdout and "completed" in done.stdout, done.stdout

        # A run that fails: its destination VMID belongs to another guest (VM 300 on pve3).
        assert dapx(*JOB[1:], "--dest-vmid", "300", "--paused", "--replace") == 0
        failed = run_cli("dapx", "job", "run", "ux-job", "--wait", check=False)
        assert failed.returncode == 1, failed.stdout + failed.stderr
        assert len(failed.stderr.strip().splitlines()) == 1, failed.stderr
        assert "failed" in failed.stderr and "VMID 300" in failed.stderr, failed.stderr
    finally:
        dapx("job", "remove", "ux-job")
        _forget_replica(9700)


def _forget_replica(vmid: int) -> None:
    """Undo what the successful run made on the shared lab: the replica, its config, the
    source's snapshots of this job."""
    from dapx.lab import estate

    estate.run("pve3", ["rm", "-f", f"/etc/pve/nodes/pve3/qemu-server/{vmid}.conf"])
    for disk in (0, 1):
        estate.run("pve3", ["zfs", "destroy", "-r", f"rpool/replica/vm-{vmid}-disk-{disk}"])
        listing = estate.run("pve1", ["zfs", "list", "-H", "-o", "name", "-t", "snapshot",
                                      "-r", f"rpool/data/vm-100-disk-{disk}"]).stdout
        for snap in listing.split():
            if f"@dapx_pve3-{vmid}_" in snap:
                estate.run("pve1", ["zfs", "destroy", snap])
