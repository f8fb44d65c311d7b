"""The PBS client's wire format (token header, paths, pinned TLS) against a tiny local fake.

fakepve covers PVE only; this fake answers the handful of PBS paths the client uses, as PBS
does (``{"data": ...}``, 401 for a bad token), over TLS with its own self-signed certificate.
The lab's PBS simulator is exercised by the lab tests.
"""

from __future__ import annotations

import json
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import pytest
from fakepve.certs import make_cert
from pydantic import SecretStr

from dapx.blocks import ProxmoxNode
from dapx.errors import AuthError, TaskFailed, TLSFingerprintError
from dapx.transports.pbs import PbsClient
from dapx.transports.pve import format_fingerprint

TOKEN = "PBSAPIToken=root@pam!dapx:5a1c7a0e-0f53-4c55-b2a3-0e7c1b0a9d11"
UPID_FAILED = "UPID:pbs1:00001234:00005678:00000001:65A0B0C0:verify:store1:root@pam!dapx:"
SNAPSHOTS = [
    {"backup-type": "vm", "backup-id": "100", "backup-time": 1735689600, "size": 1048576},
    {"backup-type": "vm", "backup-id": "100", "backup-time": 1735776000, "size": 1048576},
]


class FakePbs(BaseHTTPRequestHandler):
    seen: list[tuple[str, str, dict]] = []

    def log_message(self, *args: object) -> None:  # keep test output quiet
        pass

    def _answer(self, status: int, data: object) -> None:
        body = json.dumps({"data": data}).encode()
        self.send_response(status, "authentication failure" if status == 401 else None)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _route(self, method: str) -> None:
        url = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        params = parse_qs(url.query or self.rfile.read(length).decode())
        FakePbs.seen.append((method, url.path, params))
        if self.headers.get("Authorization") != TOKEN:
            return self._answer(401, None)
        path = url.path.removeprefix("/api2/json")
        answers = {
            ("GET", "/version"): {"version": "3.4", "release": "1", "repoid": "abc"},
            ("GET", "/admin/datastore"): [{"store": "store1", "comment": "lab"}],
            ("GET", "/admin/datastore/store1/status"): {"total": 100, "used": 40, "avail": 60},
            ("GET", "/admin/datastore/store1/snapshots"): SNAPSHOTS,
            ("POST", "/admin/datastore/store1/prune"): [
                {"backup-time": 1735776000, "keep": True}, {"backup-time": 1735689600, "keep": False}],
            ("GET", f"/nodes/localhost/tasks/{UPID_FAILED}/status"):
                {"status": "stopped", "exitstatus": "verification failed", "type": "verify", "id": "store1"},
            ("GET", f"/nodes/localhost/tasks/{UPID_FAILED}/log"):
                [{"n": 1, "t": "verify store1"}, {"n": 2, "t": "TASK ERROR: verification failed"}],
        }
        if (method, path) not in answers:
            return self._answer(404, None)
        self._answer(200, answers[(method, path)])

    def do_GET(self) -> None:
        self._route("GET")

    def do_POST(self) -> None:
        self._route("POST")


@pytest.fixture(scope="module")
def pbs(tmp_path_factory):
    certfile, keyfile, der = make_cert(str(tmp_path_factory.mktemp("pbs-pki")), name="pbs")
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakePbs)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(certfile, keyfile)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1], format_fingerprint(der)
    server.shutdown()


def client_for(pbs, *, secret: str = TOKEN.rpartition(":")[2], fingerprint: str | None = None) -> PbsClient:
    port, served = pbs
    node = ProxmoxNode(name="pbs1", host="127.0.0.1", kind="pbs", api_port=port, api_token_id="root@pam!dapx",
                       api_token_secret=SecretStr(secret), tls_fingerprint=fingerprint or served)
    client = node.api()
    assert isinstance(client, PbsClient)
    return client


def test_default_port_for_pbs_is_8007():
    assert ProxmoxNode(name="pbs1", host="198.18.213.21", kind="pbs").api_port == 8007


def test_version_datastores_status_snapshots(pbs):
    client = client_for(pbs)
    assert client.version()["version"] == "3.4"
    assert [d["store"] for d in client.datastores()] == ["store1"]
    assert client.datastore_status("store1")["avail"] == 60
    snaps = client.snapshots("store1", backup_type="vm", backup_id="100")
    assert [s["backup-time"] for s in snaps] == [1735689600, 1735776000]
    method, path, params = FakePbs.seen[-1]
    assert params == {"backup-type": ["vm"], "backup-id": ["100"]}


def test_prune_sends_pbs_parameters(pbs):
    kept = client_for(pbs).prune("store1", "vm", "100", keep_last=1, dry_run=True)
    assert [k["keep"] for k in kept] == [True, False]
    method, path, params = FakePbs.seen[-1]
    assert (method, path) == ("POST", "/api2/json/admin/datastore/store1/prune")
    assert params == {"backup-type": ["vm"], "backup-id": ["100"], "keep-last": ["1"], "dry-run": ["1"]}


def test_failed_pbs_task_read_from_localhost(pbs):
    with pytest.raises(TaskFailed) as info:
        client_for(pbs).wait_task(UPID_FAILED)
    assert info.value.log_tail[-1] == "TASK ERROR: verification failed"


def test_wrong_token_and_wrong_fingerprint(pbs):
    with pytest.raises(AuthError, match="API token refused by pbs1"):
        client_for(pbs, secret="wrong").version()
    with pytest.raises(TLSFingerprintError, match=f"got {pbs[1]}"):
        client_for(pbs, fingerprint=":".join(["00"] * 32)).version()
