"""Deploy tier, replication: a replica job created with `dapx job create` is a scheduled
Prefect deployment; `prefect deployment run` starts it, a process worker executes it, and its
state and artifacts are visible through the Prefect API; the replica's bytes equal the source's.
(Bad job input, and the flow that follows the source's storage: test_cli_without_lab.py.)"""

from __future__ import annotations

import uuid

from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

from dapx.lab import estate
from tests.deploy.conftest import run_cli, trust_here
from tests.lab.test_replica_helpers import sha256

JOB = "vm100-to-pve2"


def _run_deployment_through_worker(name: str, *params: str) -> uuid.UUID:
    argv = ["prefect", "deployment", "run", name]
    for param in params:
        argv += ["-p", param]
    run_id = uuid.UUID(run_cli(*argv).stdout.split("flow-run/")[1].split()[0].strip())
    run_cli("prefect", "worker", "start", "--pool", "dapx", "--type", "process", "--run-once")
    return run_id


def test_replica_job_runs_from_prefect_deployment_run(lab_nodes: str) -> None:
    from dapx.deployments.builtin import deploy_builtin

    assert "trust-nodes/default" in deploy_builtin()
    trusted = _run_deployment_through_worker("trust-nodes/default", "source=pve1",
                                             "destination=pve2")
    with get_client(sync_client=True) as client:
        assert client.read_flow_run(trusted).state.is_completed()

    run_cli("dapx", "job", "create", "replica", "--source", "pve1", "--guest", "100",
            "--dest", "pve2", "--dest-vmid", "8100", "--name", JOB,
            "--schedule", "0 3 1 1 *", "--keep", "2")
    listed = run_cli("dapx", "job", "list").stdout
    assert JOB in listed and "zfs-replica" in listed and "0 3 1 1 *" in listed

    try:
        _run_replica_job_and_check_it()
    finally:  # leave the shared lab as the lab tier expects it
        estate.run("pve2", ["rm", "-f", "/etc/pve/nodes/pve2/qemu-server/8100.conf"])
        for disk in ("vm-8100-disk-0", "vm-8100-disk-1"):
            estate.run("pve2", ["zfs", "destroy", "-r", f"rpool/replica/{disk}"])
        trust_here("pve1", "pve2", revoke=True)  # the lab tier expects pve1 not to trust pve2
    run_cli("dapx", "job", "remove", JOB)
    assert JOB not in run_cli("dapx", "job", "list").stdout


def _run_replica_job_and_check_it() -> None:
    run_id = _run_deployment_through_worker(f"zfs-replica/{JOB}")
    with get_client(sync_client=True) as client:
        flow_run = client.read_flow_run(run_id)
        assert flow_run.state.is_completed(), flow_run.state
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run_id])))
    assert any(a.type == "table" and "vm-8100-disk-0" in str(a.data) for a in artifacts)

    for disk in ("vm-100-disk-0", "vm-100-disk-1"):  # the source may have changed since seeding
        replica = disk.replace("vm-100", "vm-8100")
        assert sha256("pve2", f"/rpool/replica/{replica}/disk.raw") == \
            sha256("pve1", f"/rpool/data/{disk}/disk.raw")
    config = estate.run("pve2", ["cat", "/etc/pve/nodes/pve2/qemu-server/8100.conf"]).stdout
    assert "vm-8100-disk-0" in config and "vm-100-disk" not in config
