"""node-check (N2) as a Prefect flow: a real OpenSSH server for SSH, fakepve for the API.

Both listen on 127.0.0.1 (different ports), as one node would. Checks what a user sees: the
keys pinned into the block on the first test, enforced afterwards, nothing written when a
test fails, and the table artifact readable through the Prefect API.
"""

from __future__ import annotations

import os
import ssl
import sys
from pathlib import Path

import pytest
from pydantic import SecretStr

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # for tests.helpers
from tests.helpers.sshd import SshServer, new_key, public_line  # noqa: E402

from dapx.blocks import ProxmoxNode  # noqa: E402
from dapx.blocks.node import host_key_fingerprint  # noqa: E402
from dapx.errors import AuthError, HostKeyError, InputError, TLSFingerprintError  # noqa: E402
from dapx.flows.nodes import node_check, node_inventory  # noqa: E402
from dapx.transports.pve import format_fingerprint  # noqa: E402

TOKEN_ID, TOKEN_SECRET = "root@pam!dapx", "7e0d4c1a-9b3f-4f6e-8a2d-5c1b0e9f3a77"


@pytest.fixture(scope="module")
def harness(prefect_harness):  # noqa: ANN001 - the session's test server (tests.helpers.lab)
    yield


@pytest.fixture
def client_key():
    return new_key()


@pytest.fixture
def sshd(tmp_path, client_key):
    server = SshServer(tmp_path / "sshd")
    server.authorize(public_line(client_key))
    with server:
        yield server


@pytest.fixture
def api(fakepve, fakepve_cafile):
    fakepve.apitokens[TOKEN_ID] = TOKEN_SECRET
    fakepve.add_vm(100, "web")
    return fakepve, format_fingerprint(ssl.PEM_cert_to_DER_cert(Path(fakepve_cafile).read_text()))


async def save_node(sshd, client_key, api, *, secret: str = TOKEN_SECRET,
                    out_of_band: bool = True) -> None:
    """The node block; ``out_of_band`` pins fakepve's certificate as `dapx node add
    --tls-fingerprint` would: this test host has no /etc/pve/local/pve-ssl.pem for the node
    test to compare the API's certificate with (the lab tests cover that path)."""
    pve, cert_fp = api
    await ProxmoxNode(name="pve-test", host="127.0.0.1", ssh_port=sshd.port, ssh_user=sshd.user,
                ssh_private_key=SecretStr(client_key.export_private_key().decode()),
                api_port=pve.port, api_token_id=TOKEN_ID, api_token_secret=SecretStr(secret),
                tls_fingerprint=cert_fp if out_of_band else None,
                ).asave("pve-test", overwrite=True)


async def test_certificate_not_confirmed_over_ssh_is_not_pinned(harness, sshd, client_key, api):
    await save_node(sshd, client_key, api, out_of_band=False)
    with pytest.raises(TLSFingerprintError, match="cannot read its API certificate over SSH"):
        await node_check("pve-test")
    stored = await ProxmoxNode.aload("pve-test")
    assert stored.ssh_host_key is None and stored.tls_fingerprint is None


async def test_first_check_pins_then_enforces(harness, sshd, client_key, api):
    _, cert_fp = api
    await save_node(sshd, client_key, api)

    first = await node_check("pve-test")
    assert first.ssh_host_key_recorded and not first.tls_fingerprint_recorded
    assert first.ssh_host_key == host_key_fingerprint(sshd.host_key_line)
    assert first.api_version == "9.0.10" and "local" in first.storages
    assert first.hostname == os.uname().nodename
    assert "pve-test (pve): OK" in str(first)

    stored = await ProxmoxNode.aload("pve-test")
    assert stored.ssh_host_key == sshd.host_key_line and stored.tls_fingerprint == cert_fp

    second = await node_check("pve-test")
    assert not second.ssh_host_key_recorded and not second.tls_fingerprint_recorded

    from prefect.client.orchestration import get_client

    async with get_client() as client:
        artifact = await client.read_latest_artifacts()
    tables = [a for a in artifact if a.key == "node-check-pve-test"]
    assert tables and "9.0.10" in str(tables[0].data) and TOKEN_SECRET not in str(tables[0].data)

    old = host_key_fingerprint(sshd.host_key_line)
    sshd.replace_host_key()
    with pytest.raises(HostKeyError) as info:
        await node_check("pve-test")
    assert f"expected {old}, got {host_key_fingerprint(sshd.host_key_line)}" in str(info.value)
    assert (await ProxmoxNode.aload("pve-test")).ssh_host_key == stored.ssh_host_key


async def test_wrong_token_writes_nothing(harness, sshd, client_key, api):
    await save_node(sshd, client_key, api, secret="00000000-0000-0000-0000-000000000000")
    with pytest.raises(AuthError, match="API token refused by pve-test"):
        await node_check("pve-test")
    stored = await ProxmoxNode.aload("pve-test")
    assert stored.ssh_host_key is None


async def test_unknown_node_is_input_error(harness):
    with pytest.raises(InputError, match="unknown node 'nope'"):
        await node_check("nope")


async def test_inventory_runs_over_pinned_session(harness, sshd, client_key, api):
    await save_node(sshd, client_key, api)
    await node_check("pve-test")  # pins
    inventory = await node_inventory("pve-test")
    assert inventory.hostname == os.uname().nodename
    # This test host is no PVE node: what is missing is reported, not fatal.
    assert any(note.startswith("guest_configs") or note.startswith("storage_cfg") for note in inventory.notes)
