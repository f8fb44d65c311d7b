"""Deploy tier, foundation: node blocks made by `dapx node add` / `dapx lab register` show in
`prefect block ls`; `node-check` runs from its deployment through a process worker, and its
state and table artifact are visible through the Prefect API."""

from __future__ import annotations

import uuid
from pathlib import Path

from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

from tests.deploy.conftest import run_cli

ROOT = Path(__file__).resolve().parents[2]


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


def test_node_check_runs_from_its_deployment(prefect_api: str, lab: dict, monkeypatch) -> None:
    monkeypatch.chdir(ROOT)
    run_cli("dapx", "lab", "register")
    assert "proxmox-node/pve1" in run_cli("prefect", "block", "ls").stdout
    run_cli("prefect", "work-pool", "create", "dapx", "--type", "process", check=False)
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


def test_init_keeps_the_private_key_only_in_a_secret_block(prefect_api: str) -> None:
    first = run_cli("dapx", "init").stdout
    public = [line for line in first.splitlines() if line.startswith("ssh-ed25519 ")]
    assert len(public) == 1 and "PRIVATE" not in first
    again = run_cli("dapx", "init").stdout
    assert public[0] in again, "a second init must keep the key"
    assert "secret/dapx-orchestrator-key" in run_cli("prefect", "block", "ls").stdout
    from prefect.blocks.system import Secret

    private = Secret.load("dapx-orchestrator-key").get()
    assert private.startswith("-----BEGIN OPENSSH PRIVATE KEY-----")
    import asyncssh

    derived = asyncssh.import_private_key(private).export_public_key().decode().split()[1]
    assert derived == public[0].split()[1]
