"""Deploy tier, migration (M1, M2, M4): a copy job created with `dapx job create migration` is
a scheduled deployment of vm-migration; `prefect deployment run` starts it, a process worker
executes it; its state and result table are visible through the Prefect API, and the copy on
the destination has the job's hardware and the source's bytes."""

from __future__ import annotations

import uuid

from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

from dapx.lab import estate
from tests.deploy.conftest import run_cli, trust_here
from tests.lab.test_replica_helpers import sha256

JOB, COPY = "copy-vm100-to-pve2", 7101


def test_migration_job_runs_from_prefect_deployment_run(lab_nodes: str) -> None:
    trust_here("pve1", "pve2")
    refused = run_cli("dapx", "job", "create", "migration", "--source", "pve1", "--guest", "100",
                      "--dest", "pve2", "--memory", "8", check=False)
    assert refused.returncode == 2 and "memory" in refused.stderr
    plan = run_cli("dapx", "migrate", "--source", "pve1", "--guest", "100", "--dest", "pve2",
                   "--dest-vmid", str(COPY), "--memory", "1024", "--plan").stdout
    assert "copy of guest 100 from pve1 to pve2/7101 by zfs: planned" in plan
    run_cli("dapx", "job", "create", "migration", "--source", "pve1", "--guest", "100",
            "--dest", "pve2", "--dest-vmid", str(COPY), "--memory", "1024", "--cores", "3",
            "--name", JOB, "--schedule", "0 3 1 1 *")
    listed = run_cli("dapx", "job", "list").stdout
    assert JOB in listed and "vm-migration" in listed and "0 3 1 1 *" in listed
    try:
        run_id = uuid.UUID(run_cli("prefect", "deployment", "run", f"vm-migration/{JOB}")
                           .stdout.split("flow-run/")[1].split()[0].strip())
        run_cli("prefect", "worker", "start", "--pool", "dapx", "--type", "process",
                "--run-once")
        with get_client(sync_client=True) as client:
            flow_run = client.read_flow_run(run_id)
            assert flow_run.state.is_completed(), flow_run.state
            artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(
                flow_run_id=ArtifactFilterFlowRunId(any_=[run_id])))
        table = [a for a in artifacts if a.type == "table" and a.key and
                 a.key.startswith("migration-result")]
        assert table and "zfs" in str(table[0].data)
        assert "memory=1024" in str(table[0].data) and "cores=3" in str(table[0].data)
        config = estate.run("pve2", ["cat", f"/etc/pve/nodes/pve2/qemu-server/{COPY}.conf"]).stdout
        assert "memory: 1024" in config and "cores: 3" in config
        for disk in (0, 1):
            assert sha256("pve2", f"/rpool/data/vm-{COPY}-disk-{disk}/disk.raw") == \
                sha256("pve1", f"/rpool/data/vm-100-disk-{disk}/disk.raw")
    finally:  # leave the shared lab as the other tiers expect it
        estate.run("pve2", ["qm", "destroy", str(COPY)])
        for disk in (0, 1):
            estate.run("pve1", ["sh", "-c", 'for s in $(zfs list -H -o name -t snapshot "$1" | '
                                'grep "@dapx_pve2-7101_"); do zfs destroy "$s"; done', "sh",
                                f"rpool/data/vm-100-disk-{disk}"])
        run_cli("dapx", "job", "remove", JOB, check=False)
    assert JOB not in run_cli("dapx", "job", "list").stdout
