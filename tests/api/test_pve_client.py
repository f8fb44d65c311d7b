"""The PVE API client against fakepve (a schema-validating fake of the PVE 9 API, over TLS).

fakepve's pytest plugin serves one fake per test on 127.0.0.1 with a self-signed certificate;
the client pins that certificate's SHA-256 fingerprint, as it does for a real node.
"""

from __future__ import annotations

import socket
import ssl
from pathlib import Path

import pytest
from pydantic import SecretStr

from dapx.blocks import ProxmoxNode
from dapx.errors import ApiError, AuthError, ConnectionLost, TaskFailed, TLSFingerprintError, TransientApiError
from dapx.transports.pve import PveClient, fetch_tls_fingerprint, format_fingerprint

TOKEN_ID = "root@pam!dapx"
TOKEN_SECRET = "3f6c0f7e-2b7d-4a59-9a2e-0d8f4c1b7e55"
WRONG_FP = ":".join(["AB"] * 32)


@pytest.fixture
def cert_fingerprint(fakepve_cafile) -> str:
    """Fingerprint of the certificate fakepve serves, computed from the file (not the wire)."""
    return format_fingerprint(ssl.PEM_cert_to_DER_cert(Path(fakepve_cafile).read_text()))


@pytest.fixture
def pve(fakepve):
    fakepve.apitokens[TOKEN_ID] = TOKEN_SECRET
    fakepve.add_vm(100, "web", config={"scsi0": "local-lvm:vm-100-disk-0,size=8G", "cores": 2,
                                       "memory": 2048, "net0": "virtio=BC:24:11:00:00:01,bridge=vmbr0"})
    return fakepve


def node_block(pve, fingerprint: str | None, secret: str = TOKEN_SECRET) -> ProxmoxNode:
    return ProxmoxNode(name="pve1", host=pve.host, api_port=pve.port, api_token_id=TOKEN_ID,
                       api_token_secret=SecretStr(secret), tls_fingerprint=fingerprint)


@pytest.fixture
def client(pve, cert_fingerprint) -> PveClient:
    return node_block(pve, cert_fingerprint).api()


def test_recorded_fingerprint_is_the_served_certificate(pve, cert_fingerprint):
    assert fetch_tls_fingerprint(pve.host, pve.port) == cert_fingerprint


def test_version_nodes_and_guests(client):
    assert client.version()["version"] == "9.0.10"
    assert [n["node"] for n in client.nodes()] == ["pve1"]
    guests = client.guests()
    assert [(g["vmid"], g["name"], g["node"]) for g in guests] == [(100, "web", "pve1")]


def test_guest_config_get_and_put(client):
    config = client.guest_config("pve1", "qemu", 100)
    assert config["scsi0"].startswith("local-lvm:vm-100-disk-0")
    assert int(config["cores"]) == 2
    client.set_guest_config("pve1", "qemu", 100, cores=4, description="managed by dapx")
    config = client.guest_config("pve1", "qemu", 100)
    assert int(config["cores"]) == 4 and config["description"] == "managed by dapx"


def test_storage_list(client):
    assert {s["storage"] for s in client.storages()} >= {"local", "local-lvm"}
    assert {s["storage"] for s in client.storages(node="pve1")} >= {"local", "local-lvm"}


def test_snapshot_create_list_delete(client):
    upid = client.create_snapshot("pve1", "qemu", 100, "before_upgrade", description="dapx test")
    assert client.wait_task(upid)["exitstatus"] == "OK"
    names = [s["name"] for s in client.snapshots("pve1", "qemu", 100)]
    assert "before_upgrade" in names and "current" in names
    client.wait_task(client.delete_snapshot("pve1", "qemu", 100, "before_upgrade"))
    assert "before_upgrade" not in [s["name"] for s in client.snapshots("pve1", "qemu", 100)]


def test_vzdump_upid_followed_to_ok(client):
    upid = client.vzdump("pve1", 100, "local", mode="snapshot", compress="zstd")
    assert upid.startswith("UPID:pve1:")
    status = client.wait_task(upid)
    assert status["status"] == "stopped" and status["exitstatus"] == "OK"


def test_failing_task_raises_with_its_log(client):
    client.wait_task(client.create_snapshot("pve1", "qemu", 100, "twice"))
    upid = client.create_snapshot("pve1", "qemu", 100, "twice")  # PVE refuses inside the task
    with pytest.raises(TaskFailed) as info:
        client.wait_task(upid)
    err = info.value
    assert err.upid == upid
    assert err.exitstatus == "snapshot name 'twice' already used"
    assert err.log_tail[-1] == "TASK ERROR: snapshot name 'twice' already used"
    assert "already used" in str(err) and not err.retryable


def test_injected_task_error_in_vzdump(pve, client):
    pve.fail("POST", "/nodes/pve1/vzdump", error="interrupted_signal")
    with pytest.raises(TaskFailed, match="interrupted by signal"):
        client.wait_task(client.vzdump("pve1", 100, "local"))


def test_wrong_token_is_auth_error(pve, cert_fingerprint):
    client = node_block(pve, cert_fingerprint, secret="00000000-0000-0000-0000-000000000000").api()
    with pytest.raises(AuthError) as info:
        client.version()
    message = str(info.value)
    assert message.startswith("API token refused by pve1: check token id/secret")
    assert "00000000" not in message and TOKEN_SECRET not in message


def test_server_error_is_transient_with_pve_text(pve, client):
    pve.fail("GET", "/nodes/pve1/qemu/100/config", 500, "got timeout while waiting for lock")
    with pytest.raises(TransientApiError) as info:
        client.guest_config("pve1", "qemu", 100)
    assert info.value.status == 500 and info.value.retryable
    assert "got timeout while waiting for lock" in str(info.value)


def test_forbidden_is_api_error_with_permission_text(pve, client):
    pve.fail("GET", "/nodes/pve1/qemu/100/config", 403, "Permission check failed (/vms/100, VM.Audit)")
    with pytest.raises(ApiError) as info:
        client.guest_config("pve1", "qemu", 100)
    assert info.value.status == 403 and not info.value.retryable
    assert "Permission check failed (/vms/100, VM.Audit)" in str(info.value)


def test_bad_parameter_gets_pve_field_errors(client):
    with pytest.raises(ApiError) as info:
        client.create_snapshot("pve1", "qemu", 100, "1-not-a-valid-name")
    assert info.value.status == 400 and "snapname" in str(info.value)


def test_wrong_fingerprint_refused_naming_both(pve, cert_fingerprint):
    client = node_block(pve, WRONG_FP).api()
    with pytest.raises(TLSFingerprintError) as info:
        client.version()
    assert f"expected {WRONG_FP}, got {cert_fingerprint}" in str(info.value)
    # Nothing reached the API: the refused handshake happened before the request.
    assert not any(path.endswith("/version") for _, path, _ in pve.requests)


def test_no_pinned_fingerprint_refuses_to_build_client(pve):
    with pytest.raises(TLSFingerprintError, match="no pinned TLS fingerprint"):
        node_block(pve, None).api()


def test_unreachable_api_is_connection_lost(pve, cert_fingerprint):
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    client = node_block(pve, cert_fingerprint).model_copy(update={"host": "127.0.0.1", "api_port": port}).api()
    with pytest.raises(ConnectionLost):
        client.version()


@pytest.mark.parametrize("secret", ["s3cr3t-value\nX-Injected: 1", "s3cr3t-value\u20ac"])
def test_a_header_the_http_stack_refuses_is_never_quoted(pve, cert_fingerprint, secret):
    """Issue 9: http.client refuses such a header with an error quoting it (the secret); the
    client's error names the failure only, and carries no context that would quote it."""
    client = PveClient(name="pve1", host=pve.host, port=pve.port, token_id=TOKEN_ID,
                       token_secret=SecretStr(secret), fingerprint=cert_fingerprint)
    with pytest.raises(ApiError) as caught:
        client.version()
    text = str(caught.value) + repr(caught.value.args)
    assert "s3cr3t" not in text and "PVEAPIToken" not in text
    assert caught.value.__context__ is None and caught.value.__cause__ is None
