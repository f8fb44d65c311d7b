"""Deploy tier: `prefect deploy --all` reads prefect.yaml and creates every built-in deployment
on the dapx work pool, the same ones `dapx up` creates."""

from __future__ import annotations

from pathlib import Path

from prefect.client.orchestration import get_client

from tests.deploy.conftest import run_cli

ROOT = Path(__file__).resolve().parents[2]


def test_prefect_yaml_deploys_every_builtin_flow(prefect_api: str, monkeypatch) -> None:
    from dapx.deployments.builtin import BUILTIN_FLOWS, BUILTIN_PARAMETERS, load_flow

    run_cli("prefect", "work-pool", "create", "dapx", "--type", "process", check=False)
    monkeypatch.chdir(ROOT)
    run_cli("prefect", "--no-prompt", "deploy", "--all")
    with get_client(sync_client=True) as client:
        for path in BUILTIN_FLOWS:
            name = f"{load_flow(path).name}/default"
            deployment = client.read_deployment_by_name(name)
            assert deployment.work_pool_name == "dapx", name
            assert deployment.entrypoint == path, name
            assert deployment.parameters == BUILTIN_PARAMETERS.get(path, {}), name
