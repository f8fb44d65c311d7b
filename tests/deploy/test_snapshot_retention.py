"""Deploy tier, retention (S4): ``snapshot-retention/default`` is a built-in deployment with a
cron schedule; started with `prefect deployment run` and executed by a process worker, it
applies a replica job's lowered ``keep`` on both sides and keeps the newest common snapshot."""

from __future__ import annotations

import asyncio
import uuid

from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

from dapx.lab import estate
from tests.deploy.conftest import dapx, run_cli, trust_here
from tests.lab.test_replica_helpers import zfs_snapshots

JOB = "vm100-to-pve2-retention"
TAG = "dapx_pve2-8200_"
DISKS = {f"rpool/data/vm-100-disk-{i}": f"rpool/replica/vm-8200-disk-{i}" for i in (0, 1)}


def _clean() -> None:
    for src, dst in DISKS.items():
        estate.run("pve2", ["zfs", "destroy", "-r", dst])
        for snap in zfs_snapshots("pve1", src):
            if snap.startswith(TAG):
                estate.run("pve1", ["zfs", "destroy", f"{src}@{snap}"])


def _job_args(keep: int) -> list[str]:
    return ["job", "create", "replica", "--source", "pve1", "--guest", "100", "--dest",
            "pve2", "--dest-vmid", "8200", "--no-register", "--name", JOB, "--keep", str(keep),
            "--schedule", "0 4 1 1 *", "--paused", "--replace"]


def test_snapshot_retention_runs_as_a_scheduled_deployment(lab_nodes: str) -> None:
    from dapx.core.jobspec import ReplicaJob
    from dapx.deployments.builtin import deploy_builtin
    from dapx.flows.replica import zfs_replica

    assert "snapshot-retention/default" in deploy_builtin()
    with get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name("snapshot-retention/default")
    assert [s.schedule.cron for s in deployment.schedules] == ["17 * * * *"]

    _clean()
    try:
        assert dapx(*_job_args(keep=2)) == 0
        job = ReplicaJob(source="pve1", guest=100, destination="pve2", dest_vmid=8200,
                         register_vm=False, keep=2)
        trust_here("pve1", "pve2")
        asyncio.run(zfs_replica(job=job))
        newest = asyncio.run(zfs_replica(job=job)).snapshot
        assert all(len([s for s in zfs_snapshots("pve1", d) if s.startswith(TAG)]) == 2
                   for d in DISKS)
        assert dapx(*_job_args(keep=1)) == 0  # the administrator lowers the versions to keep

        out = run_cli("prefect", "deployment", "run", "snapshot-retention/default",
                      "-p", f'jobs=["{JOB}"]').stdout
        run_id = uuid.UUID(out.split("flow-run/")[1].split()[0].strip())
        run_cli("prefect", "worker", "start", "--pool", "dapx", "--type", "process",
                "--run-once")
        with get_client(sync_client=True) as client:
            flow_run = client.read_flow_run(run_id)
            assert flow_run.state.is_completed(), flow_run.state
            artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(
                flow_run_id=ArtifactFilterFlowRunId(any_=[run_id])))
        assert any(a.type == "table" and newest in str(a.data) for a in artifacts)
        for src, dst in DISKS.items():
            assert [s for s in zfs_snapshots("pve1", src) if s.startswith(TAG)] == [newest]
            assert [s for s in zfs_snapshots("pve2", dst) if s.startswith(TAG)] == [newest]
    finally:
        dapx("job", "remove", JOB)
        _clean()
        trust_here("pve1", "pve2", revoke=True)  # the lab tier expects pve1 not to trust pve2
