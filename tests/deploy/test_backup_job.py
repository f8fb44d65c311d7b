"""Deploy tier, PBS: a backup job made with `dapx job create backup` is a scheduled Prefect
deployment of pbs-backup; `prefect deployment run` starts it, a process worker runs it, the
run is Completed and its table artifact lists the backup, which pbs1 holds; `dapx backup list`
shows it, `dapx backup restore --plan` plans a restore of it and `dapx backup restore` restores
it (removed afterwards)."""

from __future__ import annotations

import uuid

from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

from dapx.lab import estate
from tests.deploy.conftest import run_cli

JOB = "backup-vm100"


def _run_through_worker(name: str) -> uuid.UUID:
    out = run_cli("prefect", "deployment", "run", name).stdout
    run_id = uuid.UUID(out.split("flow-run/")[1].split()[0].strip())
    run_cli("prefect", "worker", "start", "--pool", "dapx", "--type", "process", "--run-once")
    return run_id


def test_backup_job_runs_from_prefect_deployment_run(lab_nodes: str) -> None:
    refused = run_cli("dapx", "job", "create", "backup", "--node", "nowhere", "--storage", "pbs",
                      "--keep-last", "2", check=False)
    assert refused.returncode == 2 and "unknown node 'nowhere'" in refused.stderr
    run_cli("dapx", "job", "create", "backup", "--node", "pve1", "--guests", "100",
            "--storage", "pbs", "--keep-last", "2", "--keep-daily", "7", "--name", JOB,
            "--schedule", "0 2 * * *")
    listed = run_cli("dapx", "job", "list").stdout
    assert JOB in listed and "pbs-backup" in listed and "0 2 * * *" in listed

    run_id = _run_through_worker(f"pbs-backup/{JOB}")
    with get_client(sync_client=True) as client:
        flow_run = client.read_flow_run(run_id)
        assert flow_run.state.is_completed(), flow_run.state
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run_id])))
    tables = [a for a in artifacts if a.type == "table"]
    assert tables and "pbs:backup/vm/100/" in str(tables[0].data)
    volid = str(tables[0].data).split("pbs:backup/vm/100/")[1][:20]
    held = estate.run("pbs1", ["ls", "/datastore/store1/vm/100"]).stdout.split()
    assert volid in held

    listing = run_cli("dapx", "backup", "list", "--node", "pve1", "--guest", "100").stdout
    assert f"pbs:backup/vm/100/{volid}" in listing
    plan = run_cli("dapx", "backup", "restore", "--backup", "vm/100/latest", "--dest", "pve1",
                   "--dest-vmid", "9100", "--dest-storage", "local-zfs", "--plan").stdout
    assert f"would restore pbs:backup/vm/100/{volid} to pve1 as VMID 9100" in plan
    try:
        done = run_cli("dapx", "backup", "restore", "--backup", "vm/100/latest", "--dest",
                       "pve1", "--dest-vmid", "9100", "--dest-storage", "local-zfs").stdout
        assert (f"restored pbs:backup/vm/100/{volid} to pve1 as VMID 9100 (storage local-zfs, "
                "64.0 MiB, ") in done, done
        assert "9100.conf" in estate.run("pve1", ["ls", "/etc/pve/qemu-server"]).stdout
    finally:
        estate.run("pve1", ["qm", "destroy", "9100"])
    assert f"job {JOB} removed" in run_cli("dapx", "job", "remove", JOB).stdout
