"""Deploy tier, foundation: node blocks made by `dapx node add` / `dapx lab register` show in
`prefect block ls`; `node-check` runs from its deployment through a process worker, and its
state and table artifact are visible through the Prefect API."""

from __future__ import annotations

import uuid

from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

from tests.deploy.conftest import run_cli


def test_node_add_shows_in_block_ls_and_bad_input_is_one_line(prefect_api: str) -> None:
    run_cli("prefect", "block", "register", "-m", "dapx.blocks")
    run_cli("dapx", "node", "add", "edge-01", "--host", "192.0.2.77", "--kind", "pbs",
            "--storage", "other")
    listing = run_cli("prefect", "block", "ls").stdout
    assert "proxmox-node/edge-01" in listing
    listed = run_cli("dapx", "node", "list").stdout
    assert "edge-01" in listed and "pbs" in listed

    hostile = run_cli("dapx", "node", "add", "evil", "--host", "h;rm -rf /", check=False)
    assert hostile.returncode == 2
    assert "Traceback" not in hostile.stderr
    assert hostile.stderr.count("\n") == 1 and "host" in hostile.stderr
    unknown = run_cli("dapx", "node", "test", "no-such-node", check=False)
    assert unknown.returncode == 2 and "unknown node 'no-such-node'" in unknown.stderr
    assert "proxmox-node/evil" not in run_cli("prefect", "block", "ls").stdout

    run_cli("dapx", "node", "remove", "edge-01")
    assert "edge-01" not in run_cli("prefect", "block", "ls").stdout


def test_node_check_runs_from_its_deployment(prefect_api: str, lab: dict) -> None:
    run_cli("dapx", "lab", "register")
    assert "proxmox-node/pve1" in run_cli("prefect", "block", "ls").stdout
    run_cli("prefect", "work-pool", "create", "dapx", "--type", "process", check=False)
    from dapx.deployments.builtin import deploy_builtin

    assert "node-check/default" in deploy_builtin()
    out = run_cli("prefect", "deployment", "run", "node-check/default",
                  "-p", "node=pve1").stdout
    run_id = uuid.UUID(out.split("flow-run/")[1].split()[0].strip())
    run_cli("prefect", "worker", "start", "--pool", "dapx", "--type", "process", "--run-once")

    with get_client(sync_client=True) as client:
        flow_run = client.read_flow_run(run_id)
        assert flow_run.state.is_completed(), flow_run.state
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run_id])))
    tables = [a for a in artifacts if a.type == "table"]
    assert tables, "node-check left no table artifact"
    assert "pve1" in str(tables[0].data)
