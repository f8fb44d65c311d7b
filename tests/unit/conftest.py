"""Unit-tier fixtures: a real OpenSSH server on loopback and a client key for it."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

# tests/helpers is imported as ``tests.helpers``: make the repository root importable however
# pytest was started.
_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from tests.helpers.sshd import SshServer, new_key, public_line  # noqa: E402

from dapx.blocks import ProxmoxNode  # noqa: E402


@pytest.fixture(scope="module")
def client_key():
    """A fresh ed25519 key pair for the test client."""
    return new_key()


@pytest.fixture(scope="module")
def sshd(tmp_path_factory, client_key):
    """A running sshd on 127.0.0.1 that accepts ``client_key``; killed after the module."""
    server = SshServer(tmp_path_factory.mktemp("sshd"))
    server.authorize(public_line(client_key))
    with server:
        yield server


def make_node(server: SshServer, key, *, pinned: str | None = None, name: str = "pve-test") -> ProxmoxNode:
    """A node block pointing at ``server`` with ``key`` as its SSH key."""
    return ProxmoxNode(name=name, host="127.0.0.1", ssh_port=server.port, ssh_user=server.user,
                       ssh_private_key=key.export_private_key().decode(), ssh_host_key=pinned)
