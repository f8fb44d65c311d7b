"""Deploy tier: every mistake a person can make with `dapx` gets one line on stderr and exit 2,
never a traceback: a node that cannot be reached; and a job created before the work pool exists
is made with the product's pool. (The mistakes that need no lab: test_cli_without_lab.py.)"""

from __future__ import annotations

from prefect.client.orchestration import get_client

from dapx.deployments import server
from tests.deploy.conftest import assert_one_line, run_cli


def test_a_node_that_cannot_be_reached(lab_nodes: str) -> None:
    run_cli("dapx", "init")  # the orchestrator key the new node logs in with
    run_cli("dapx", "node", "add", "closed-port", "--host", "198.18.213.11", "--port", "2",
            "--overwrite")
    try:
        result = run_cli("dapx", "node", "test", "closed-port", check=False)
        assert_one_line(result, "cannot reach", "closed-port")
    finally:
        run_cli("dapx", "node", "remove", "closed-port")


def test_a_job_created_before_the_work_pool(lab_nodes: str) -> None:
    with get_client(sync_client=True) as client:
        try:
            client.delete_work_pool("dapx")
        except Exception:  # noqa: BLE001 - not there: fine
            pass
    result = run_cli("dapx", "job", "create", "replica", "--source", "pve1", "--guest", "100",
                     "--dest", "pve3", "--name", "before-the-pool", "--paused", check=False)
    assert result.returncode == 0, result.stderr  # the product's own pool is made for it
    try:
        assert "before-the-pool" in run_cli("dapx", "job", "list").stdout
    finally:
        run_cli("dapx", "job", "remove", "before-the-pool")
        server.ensure_work_pool()  # as the later tests expect it (lab_nodes)


