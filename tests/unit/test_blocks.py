"""The ProxmoxNode block: Prefect's standard block checks, validation, a save/load round trip,
registration with ``prefect block register -m dapx.blocks``, and secrets never shown."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
from prefect.blocks.core import Block
from prefect.testing.standard_test_suites import BlockStandardTestSuite
from pydantic import SecretStr, ValidationError

from dapx.blocks import ProxmoxNode
from dapx.blocks.node import host_key_fingerprint

KEY_PEM = "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA-very-secret\n-----END OPENSSH PRIVATE KEY-----"
TOKEN = "9d1f3a7c-5e2b-4c8d-a6f0-1b2c3d4e5f60"
HOST_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB5h8wUGeC8VsV7yQ1m2fsi2J5Ylh9TSK2G7QeN6Yb8u"
FP = ":".join(["0A"] * 32)


class TestProxmoxNodeStandard(BlockStandardTestSuite):
    @pytest.fixture
    def block(self) -> type[Block]:
        return ProxmoxNode

    def test_has_a_valid_image(self, block: type[Block]) -> None:
        # Prefect's own check downloads the logo (no network here, and PIL is not installed):
        # instead assert the logo is one of Prefect's square block logos at a pinned commit.
        assert str(block._logo_url).startswith(
            "https://raw.githubusercontent.com/PrefectHQ/prefect/420d0d6a78bb6df1fc18bcf188fdad43c1d22ea9/"
            "assets/block-logos/")


def full_node(**changes) -> ProxmoxNode:
    fields = dict(name="pve1", host="198.18.213.11", ssh_private_key=KEY_PEM, ssh_host_key=HOST_KEY + " root@pve1",
                  kind="pve", storage_kind="zfs", api_token_id="root@pam!dapx", api_token_secret=TOKEN,
                  tls_fingerprint=FP.lower())
    fields.update(changes)
    return ProxmoxNode(**fields)


def test_defaults_and_normalisation():
    node = full_node()
    assert (node.ssh_port, node.ssh_user, node.api_port) == (22, "root", 8006)
    assert node.ssh_host_key == HOST_KEY  # comment dropped
    assert node.tls_fingerprint == FP  # upper case
    assert node.ssh_host_key_fingerprint == host_key_fingerprint(HOST_KEY)
    assert full_node(kind="pbs").api_port == 8007
    assert full_node(ssh_host_key="", tls_fingerprint=" ").ssh_host_key is None


@pytest.mark.parametrize("field,value", [
    ("host", "pve1;reboot"), ("host", "$(id)"), ("host", "a b"), ("host", "-oProxyCommand=x"),
    ("ssh_user", "root;id"), ("ssh_user", "Root"), ("ssh_user", "a b"),
    ("name", "PVE 1"), ("name", "pve_1"), ("ssh_port", 0), ("ssh_port", 70000),
    ("kind", "esxi"), ("storage_kind", "lvm"), ("api_token_id", "root@pam"),
    ("tls_fingerprint", "AB:CD"), ("ssh_host_key", "ssh-ed25519 not-base64!"),
    ("ssh_host_key", "ssh-rsa AAAAC3NzaC1lZDI1NTE5AAAAIB5h8wUGeC8VsV7yQ1m2fsi2J5Ylh9TSK2G7QeN6Yb8u"),
])
def test_bad_input_refused(field, value):
    with pytest.raises(ValidationError) as info:
        full_node(**{field: value})
    assert field in str(info.value)


def test_secrets_not_shown(caplog):
    node = full_node()
    shown = [repr(node), str(node), str(node.model_dump()), node.model_dump_json(), str(node.model_dump(mode="json"))]
    logging.getLogger("dapx.test").warning("node: %s %r", node, node)
    shown.append(caplog.text)
    for text in shown:
        assert "very-secret" not in text and TOKEN not in text
    assert isinstance(node.ssh_private_key, SecretStr)
    assert node.ssh_private_key.get_secret_value() == KEY_PEM


@pytest.fixture(scope="module")
def harness(prefect_harness):  # noqa: ANN001 - the session's test server (tests.helpers.lab)
    yield


def test_save_load_round_trip(harness):
    full_node().save("pve1", overwrite=True)
    loaded = ProxmoxNode.load("pve1")
    public = set(ProxmoxNode.model_fields) - {"ssh_private_key", "api_token_secret"}
    assert loaded.model_dump(include=public) == full_node().model_dump(include=public)
    assert loaded.ssh_private_key.get_secret_value() == KEY_PEM
    assert loaded.api_token_secret.get_secret_value() == TOKEN

    # What the API (and so the UI) shows without include_secrets: obfuscated.
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        doc = client.read_block_document_by_name("pve1", block_type_slug="proxmox-node", include_secrets=False)
    assert "very-secret" not in str(doc.data) and TOKEN not in str(doc.data)
    assert doc.data["host"] == "198.18.213.11" and doc.data["ssh_host_key"] == HOST_KEY


def test_block_register_command(harness):
    from prefect.settings import PREFECT_API_URL

    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value()}
    prefect = Path(sys.executable).with_name("prefect")
    out = subprocess.run([str(prefect), "block", "register", "-m", "dapx.blocks"], env=env,
                         capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "Proxmox Node" in out.stdout

    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        block_type = client.read_block_type_by_slug("proxmox-node")
    assert block_type.name == "Proxmox Node"
    assert "Proxmox" in (block_type.description or "")


def test_collection_entry_point_points_at_blocks():
    from importlib.metadata import entry_points

    points = {e.name: e.value for e in entry_points(group="prefect.collections")}
    assert points.get("dapx") == "dapx.blocks"


def test_a_pbs_server_where_a_pve_node_is_meant_is_named_before_any_connection():
    from dapx.errors import InputError
    from dapx.transports.pve import PveClient

    with pytest.raises(InputError, match="node pbs1 is a Proxmox Backup Server, not a PVE node"):
        full_node(name="pbs1", kind="pbs", api_port=8007).pve_api()
    assert isinstance(full_node().pve_api(), PveClient)  # a client object; nothing is sent
