"""Deploy tier, the `dapx` commands that need only a Prefect server (no lab; they run beside the
lab tier): node blocks made by `dapx node add` show in `prefect block ls` and bad input is one
line; `dapx init` keeps the private key only in a secret block; a node block made invalid in
the UI and no server at the URL each give one line on stderr and exit 2, never a traceback."""

from __future__ import annotations

import os
import subprocess

from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import BlockDocumentCreate

from tests.deploy.conftest import BIN, assert_one_line, free_port, run_cli


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


def test_no_prefect_server_at_the_url(prefect_api: str) -> None:
    url = f"http://127.0.0.1:{free_port()}/api"  # nothing listens there
    env = {**os.environ, "PREFECT_API_URL": url}
    for argv in (["node", "list"], ["job", "list"], ["init"]):
        result = subprocess.run([str(BIN / "dapx"), *argv], capture_output=True, text=True,
                                env=env, timeout=120)
        assert_one_line(result, url, "dapx up")


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
