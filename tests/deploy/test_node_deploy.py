"""Deploy tier, foundation: node blocks made by `dapx lab register` show in `prefect block ls`;
`node-check` runs from its deployment through a process worker, and its state and table
artifact are visible through the Prefect API. (`dapx node add` and `dapx init`:
test_cli_without_lab.py.)"""

from __future__ import annotations

import uuid
from pathlib import Path

from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

from tests.deploy.conftest import run_cli

ROOT = Path(__file__).resolve().parents[2]


def test_node_check_runs_from_its_deployment(lab_nodes: str, monkeypatch) -> None:
    monkeypatch.chdir(ROOT)
    assert "proxmox-node/pve1" in run_cli("prefect", "block", "ls").stdout
    run_cli("prefect", "--no-prompt", "deploy", "--all")  # from prefect.yaml
    # Nothing exported: the command, the worker and its flow run find the (authenticated)
    # server's URL and credential in the active profile, as after `dapx up`.
    out = run_cli("prefect", "deployment", "run", "node-check/default",
                  "-p", "node=pve1", profile_only=True).stdout
    run_id = uuid.UUID(out.split("flow-run/")[1].split()[0].strip())
    run_cli("prefect", "worker", "start", "--pool", "dapx", "--type", "process", "--run-once",
            profile_only=True)

    with get_client(sync_client=True) as client:
        flow_run = client.read_flow_run(run_id)
        assert flow_run.state.is_completed(), flow_run.state
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run_id])))
    tables = [a for a in artifacts if a.type == "table"]
    assert tables, "node-check left no table artifact"
    assert "pve1" in str(tables[0].data)


