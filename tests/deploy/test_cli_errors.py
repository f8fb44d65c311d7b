"""Deploy tier: every mistake a person can make with `dapx` gets one line on stderr and exit 2,
never a traceback: a node that cannot be reached, no Prefect server at the URL, a job created
before the work pool exists, a node block made invalid in the UI."""

from __future__ import annotations

import os
import subprocess

from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import BlockDocumentCreate

from tests.deploy.conftest import BIN, free_port, run_cli


def assert_one_line(result: subprocess.CompletedProcess, *words: str) -> None:
    __tracebackhide__ = True
    shown = f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    assert result.returncode == 2, shown
    assert "Traceback" not in result.stderr + result.stdout, shown
    assert len(result.stderr.strip().splitlines()) == 1, shown
    for word in words:
        assert word in result.stderr, shown


def test_a_node_that_cannot_be_reached(prefect_api: str, lab: dict) -> None:
    run_cli("dapx", "lab", "register")
    run_cli("dapx", "init")  # the orchestrator key the new node logs in with
    run_cli("dapx", "node", "add", "closed-port", "--host", "198.18.213.11", "--port", "2",
            "--overwrite")
    try:
        result = run_cli("dapx", "node", "test", "closed-port", check=False)
        assert_one_line(result, "cannot reach", "closed-port")
    finally:
        run_cli("dapx", "node", "remove", "closed-port")


def test_no_prefect_server_at_the_url(prefect_api: str) -> None:
    url = f"http://127.0.0.1:{free_port()}/api"  # nothing listens there
    env = {**os.environ, "PREFECT_API_URL": url}
    for argv in (["node", "list"], ["job", "list"], ["init"]):
        result = subprocess.run([str(BIN / "dapx"), *argv], capture_output=True, text=True,
                                env=env, timeout=120)
        assert_one_line(result, url, "dapx up")


def test_a_job_created_before_the_work_pool(prefect_api: str, lab: dict) -> None:
    run_cli("dapx", "lab", "register")
    with get_client(sync_client=True) as client:
        try:
            client.delete_work_pool("dapx")
        except Exception:  # noqa: BLE001 - not there: fine
            pass
    result = run_cli("dapx", "job", "create", "replica", "--source", "pve1", "--guest", "100",
                     "--dest", "pve3", "--name", "before-the-pool", "--paused", check=False)
    assert result.returncode == 0, result.stderr  # the product's own pool is made for it
    assert "before-the-pool" in run_cli("dapx", "job", "list").stdout
    run_cli("dapx", "job", "remove", "before-the-pool")


def test_a_node_block_made_invalid_in_the_ui(prefect_api: str) -> None:
    run_cli("dapx", "node", "add", "pasted", "--host", "192.0.2.9", "--overwrite")
    with get_client(sync_client=True) as client:
        good = client.read_block_document_by_name("pasted", block_type_slug="proxmox-node")
        client.delete_block_document(good.id)
        # What the UI stores when someone pastes a broken host key: no validation on the way.
        client.create_block_document(BlockDocumentCreate(
            name="pasted", block_type_id=good.block_type_id, block_schema_id=good.block_schema_id,
            data={**good.data, "ssh_host_key": "ssh-ed25519 not-base64!"}))
    try:
        listed = run_cli("dapx", "node", "list").stdout
        line = next(ln for ln in listed.splitlines() if ln.startswith("pasted"))
        assert "invalid" in line and "yes" not in line, listed
        result = run_cli("dapx", "node", "test", "pasted", check=False)
        assert_one_line(result, "pasted", "ssh_host_key")
    finally:  # the way out for the user: remove it (later tests list every node block)
        run_cli("dapx", "node", "remove", "pasted")
    assert "pasted" not in run_cli("dapx", "node", "list").stdout
