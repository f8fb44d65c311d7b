"""Issue 9, the pure parts: input that must never pass, what a replica never carries, trust
file edits, ssh failure wording, certificate fingerprints, the API client's transport errors,
the Prefect credential and profile files."""

from __future__ import annotations

import datetime
import stat
import tomllib
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from pydantic import SecretStr, ValidationError

from dapx.blocks import ProxmoxNode
from dapx.blocks.manage import add_node
from dapx.core import sshtrust
from dapx.core.certs import pem_leaf_fingerprint
from dapx.core.guestconfig import parse_guest_config, serialise
from dapx.core.jobspec import ReplicaJob
from dapx.core.quoting import with_env
from dapx.core.registration import RegistrationOptions, dropped_keys, rewrite_for_destination
from dapx.core.validate import validate_host
from dapx.deployments import server
from dapx.deployments.jobs import _JOB_NAME
from dapx.errors import ConnectionLost, InputError
from dapx.flows.register import Registration, registration_note, with_mark
from dapx.tasks.guests import SourceGuest, is_replica_of, parse_grep_files
from dapx.transports.pve import PveClient

ED_BLOB = "AAAAC3NzaC1lZDI1NTE5AAAAIB5h8wUGeC8VsV7yQ1m2fsi2J5Ylh9TSK2G7QeN6Yb8u"
REPL_KEY = f"ssh-ed25519 {ED_BLOB} dapx-replication@pve1"


# -- input that must never pass ---------------------------------------------------------------

@pytest.mark.parametrize("host", ["0177.0.0.1", "127.1", "0x7f.1", "999.1.1.1", "2130706433",
                                  "0x7f000001", "1.2.3.04", "10.0.0.1\n", "pve3\n"])
def test_hosts_in_disguise_are_refused(host: str) -> None:
    with pytest.raises(InputError):
        validate_host(host)


def test_ipv6_is_refused_saying_why() -> None:
    with pytest.raises(InputError, match="syncoid"):
        validate_host("2001:db8::1")


@pytest.mark.parametrize("host", ["198.18.213.13", "10.0.0.1", "pve3", "pve-3.lab.example",
                                  "node1.example.com"])
def test_canonical_hosts_pass(host: str) -> None:
    assert validate_host(host) == host


@pytest.mark.parametrize("field,value", [
    ("name", "pve9\n"), ("ssh_user", "root\n"), ("api_token_id", "root@pam!dapx\n"),
])
def test_block_refuses_a_trailing_newline(field: str, value: str) -> None:
    fields = {"name": "pve9", "host": "198.18.213.19", field: value}
    with pytest.raises(ValidationError):
        ProxmoxNode(**fields)


def test_token_secret_must_be_header_safe_and_is_never_quoted() -> None:
    with pytest.raises(ValidationError) as caught:
        ProxmoxNode(name="pve9", host="198.18.213.19", api_token_secret="abc\ndef-secret")
    assert "def-secret" not in str(caught.value)


def test_job_and_env_names_refuse_a_trailing_newline() -> None:
    assert _JOB_NAME.fullmatch("vm100-to-pve3") and not _JOB_NAME.fullmatch("vm100\n")
    with pytest.raises(InputError):
        with_env(["true"], {"PATH\n": "x"})
    with pytest.raises(ValidationError):
        ReplicaJob(source="pve1\n", guest=100, destination="pve3")


def test_key_file_that_is_no_key_is_one_line_error(tmp_path: Path) -> None:
    bad = tmp_path / "id.pub"
    bad.write_text(f"{REPL_KEY}\n")
    with pytest.raises(InputError) as caught:
        add_node(name="pve9", host="198.18.213.19", key_file=str(bad))
    assert "\n" not in str(caught.value) and str(bad) in str(caught.value)
    assert ED_BLOB not in str(caught.value)


@pytest.mark.parametrize("odd", ["\v", "\f", "\x1c", "\x85", "\u2028", "\u2029"])
def test_guest_config_splits_on_newline_only(odd: str) -> None:
    text = f"#notes{odd}more notes\ncores: 2\nname: web{odd}x\nscsi0: local-zfs:vm-100-disk-0\n"
    config = parse_guest_config(text, "qemu")
    assert serialise(config) == text
    assert config.get("cores") == "2"
    options = RegistrationOptions(new_vmid=9100, storage_map={"local-zfs": "local-zfs"})
    out = serialise(rewrite_for_destination(config, 100, options))
    assert f"#notes{odd}more notes\n" in out and f"name: web{odd}x\n" in out


@pytest.mark.parametrize("odd", ["\v", "\x85", "\u2028"])
def test_configs_read_over_ssh_keep_text_after_odd_characters(odd: str) -> None:
    path = "/etc/pve/qemu-server/100.conf"
    output = f"{path}:#notes{odd}more\n{path}:name: web{odd}x\n{path}:cores: 2\n"
    assert parse_grep_files(output, [path]) == {path: f"#notes{odd}more\nname: web{odd}x\ncores: 2\n"}


def test_only_the_first_line_mark_counts_and_source_marks_are_stripped() -> None:
    mark = "#dapx-replica-of: pve1/100"
    assert is_replica_of(with_mark("cores: 2\n", "pve1", 100), "pve1", 100)
    assert not is_replica_of(f"#my notes\n{mark}\ncores: 2\n", "pve1", 100)
    assert not is_replica_of(f"cores: 2\n{mark}\n", "pve1", 100)
    # A source that is itself a replica (or says so in its notes) carries no mark along.
    source = "#dapx-replica-of: pve9/555\n#notes\n# DAPX-Replica-Of: pve1/100\ncores: 2\n" \
             "scsi0: local-zfs:vm-100-disk-0\n"
    options = RegistrationOptions(new_vmid=9100, storage_map={"local-zfs": "local-zfs"})
    out = serialise(rewrite_for_destination(parse_guest_config(source, "qemu"), 100, options))
    assert "replica-of" not in out.lower() and out.startswith("#notes\n")


# -- what a replica never carries ---------------------------------------------------------------

VM_WITH_HOOKS = """\
args: -device vfio-pci,host=01:00.0
cores: 2
hookscript: local:snippets/hook.pl
hostpci0: 0000:01:00.0,pcie=1
scsi0: local-zfs:vm-100-disk-0,size=8G
serial0: /dev/ttyS0
serial1: socket
usb0: host=1234:5678
parallel0: /dev/parport0
"""


def test_hooks_and_host_devices_are_dropped_and_listed() -> None:
    config = parse_guest_config(VM_WITH_HOOKS, "qemu")
    options = RegistrationOptions(new_vmid=9100, storage_map={"local-zfs": "local-zfs"})
    out = serialise(rewrite_for_destination(config, 100, options))
    for key in ("args", "hookscript", "hostpci0", "serial0", "usb0", "parallel0"):
        assert f"{key}:" not in out
    assert "serial1: socket\n" in out and "cores: 2\n" in out
    assert dropped_keys(config) == ["args", "hookscript", "hostpci0", "serial0", "usb0",
                                    "parallel0"]
    kept = options.model_copy(update={"carry_keys": ("hostpci0",)})
    assert "hostpci0: 0000:01:00.0,pcie=1\n" in serialise(rewrite_for_destination(config, 100, kept))
    assert "hostpci0" not in dropped_keys(config, kept.carry_keys)


def test_plan_note_and_result_name_the_dropped_keys() -> None:
    job = ReplicaJob(source="pve1", guest=100, destination="pve3", dest_vmid=9100,
                     carry_keys=["usb0"])
    guest = SourceGuest("pve1", 100, "qemu", VM_WITH_HOOKS, {})
    note = registration_note(job, guest)
    assert "left out args, hookscript, hostpci0, serial0, parallel0" in note
    assert "usb0" not in note and "carry_keys" in note
    done = Registration(node="pve3", vmid=9100, kind="qemu", storage="local-zfs",
                        action="created", dropped_keys=["hookscript"])
    assert "left out hookscript" in str(done)
    with pytest.raises(ValidationError):
        ReplicaJob(source="pve1", guest=100, destination="pve3", carry_keys=["usb0; id"])
    assert ReplicaJob(source="pve1", guest=101, destination="pve3",
                      carry_keys=["lxc.mount.entry"]).carry_keys == ["lxc.mount.entry"]


# -- trust files ---------------------------------------------------------------------------------

def test_one_restricted_line_replaces_older_lines_of_the_key() -> None:
    line = sshtrust.authorized_line(REPL_KEY, "198.18.213.11")
    assert line == f'restrict,from="198.18.213.11" ssh-ed25519 {ED_BLOB} dapx-replication@pve1'
    admin = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOTHERKEYOTHERKEYOTHERKEYOTHERKEYOTHERKEY1 admin"
    before = f"{admin}\nssh-ed25519 {ED_BLOB} old-comment\nfrom=\"1.2.3.4\" ssh-ed25519 {ED_BLOB}\n"
    after = sshtrust.replace_key_lines(before, ED_BLOB, line)
    assert after == f"{admin}\n{line}\n"
    assert sshtrust.replace_key_lines(after, ED_BLOB, line) == after  # idempotent
    assert sshtrust.replace_key_lines(after, ED_BLOB, None) == f"{admin}\n"  # revoke
    assert sshtrust.replace_key_lines("", ED_BLOB, line) == line + "\n"
    assert sshtrust.replace_key_lines(admin, ED_BLOB, line) == f"{admin}\n{line}\n"


@pytest.mark.parametrize("text", [
    f"{REPL_KEY}\n{REPL_KEY}", f'command="id" {REPL_KEY}', "ssh-rsa AAAAB3NzaC1yc2E x",
    f"ssh-ed25519 {ED_BLOB[:-4]}", "ssh-ed25519 AAAAB3NzaC1yc2EAAAADAQAB", ""])
def test_only_one_ed25519_key_line_is_accepted(text: str) -> None:
    with pytest.raises(InputError):
        sshtrust.authorized_line(text, "198.18.213.11")


def test_known_hosts_lines_of_the_host_are_replaced() -> None:
    old = "[198.18.213.13]:22 ssh-ed25519 AAAAold\n198.18.213.13 ssh-rsa AAAAolder\n"
    other = "198.18.213.12 ssh-ed25519 AAAAother\n"
    new = "198.18.213.13 ssh-ed25519 AAAAnew"
    text = other + "198.18.213.13,pve3 ssh-ed25519 AAAAold\n" + old
    out = sshtrust.replace_host_lines(text, "198.18.213.13", new)
    assert out == other + new + "\n" + "[198.18.213.13]:22 ssh-ed25519 AAAAold\n"
    assert sshtrust.replace_host_lines(out, "198.18.213.13", None) == \
        other + "[198.18.213.13]:22 ssh-ed25519 AAAAold\n"


@pytest.mark.parametrize("stderr,kind", [
    ("ssh: connect to host 198.18.213.99 port 22: No route to host", "unreachable"),
    ("ssh: connect to host 198.18.213.13 port 2: Connection refused", "unreachable"),
    ("ssh: connect to host 192.0.2.1 port 22: Connection timed out", "unreachable"),
    ("ssh: Could not resolve hostname nowhere: Name or service not known", "unreachable"),
    ("root@198.18.213.13: Permission denied (publickey).", "refused"),
    ("@@@@@@@@@@@\n@    WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED!     @\n"
     "Host key for 198.18.213.13 has changed and you have requested strict checking.\n"
     "Host key verification failed.", "host_key_changed"),
    ("No ED25519 host key is known for 198.18.213.13 and you have requested strict "
     "checking.\nHost key verification failed.", "host_key_unknown"),
])
def test_ssh_failures_are_told_apart(stderr: str, kind: str) -> None:
    assert sshtrust.classify_ssh_failure(stderr) == kind


def test_route_source() -> None:
    out = "198.18.213.13 dev eth0 src 198.18.213.11 uid 0 \\    cache "
    assert sshtrust.route_source(out) == "198.18.213.11"
    assert sshtrust.route_source("RTNETLINK answers: Network is unreachable") is None


# -- certificates ---------------------------------------------------------------------------------

def _cert(name: str) -> x509.Certificate:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    return (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(1).not_valid_before(now)
            .not_valid_after(now + datetime.timedelta(days=1)).sign(key, hashes.SHA256()))


def test_leaf_fingerprint_of_a_chain_file() -> None:
    leaf, ca = _cert("pve1"), _cert("ca")
    pem = (leaf.public_bytes(serialization.Encoding.PEM)
           + ca.public_bytes(serialization.Encoding.PEM)).decode()
    expected = ":".join(f"{b:02X}" for b in leaf.fingerprint(hashes.SHA256()))
    assert pem_leaf_fingerprint(pem) == expected
    assert pem_leaf_fingerprint("no certificate here") is None


# -- the API client never quotes headers ---------------------------------------------------------

def _client(secret: str, port: int = 9) -> PveClient:
    return PveClient(name="pve1", host="127.0.0.1", port=port, token_id="root@pam!dapx",
                     token_secret=SecretStr(secret), fingerprint=":".join(["AB"] * 32))


def test_connection_refused_is_connection_lost_without_headers() -> None:
    with pytest.raises(ConnectionLost) as caught:
        _client("0b3c9a4e-6f1d-4c1e-9b7a-3f1f2d5e8a90", port=1).version()
    assert "0b3c9a4e" not in str(caught.value) and caught.value.__context__ is None


# -- the Prefect API credential and profile ------------------------------------------------------

def test_credential_is_made_once_root_only(tmp_path: Path) -> None:
    home = tmp_path / "prefect"
    first = server.api_credential(home)
    assert first.startswith("dapx:") and len(first) > 40
    assert server.api_credential(home) == first
    mode = lambda p: stat.S_IMODE(p.stat().st_mode)  # noqa: E731
    assert mode(home) == 0o700 and mode(home / server.CREDENTIAL_FILE) == 0o600


def test_profile_gets_url_and_credential(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("PREFECT_PROFILE", raising=False)
    monkeypatch.delenv("PREFECT_PROFILES_PATH", raising=False)
    home = tmp_path / "prefect"
    home.mkdir()
    (home / "profiles.toml").write_text('active = "mine"\n[profiles.mine]\nPREFECT_X = "1"\n')
    (home / "profiles.toml").chmod(0o644)
    path = server.write_client_profile(server.client_settings("http://127.0.0.1:4300/api",
                                                              "dapx:abc"), home)
    data = tomllib.loads(path.read_text())
    assert data["active"] == "mine"
    assert data["profiles"]["mine"] == {
        "PREFECT_X": "1", "PREFECT_API_URL": "http://127.0.0.1:4300/api",
        "PREFECT_API_AUTH_STRING": "dapx:abc", "PREFECT_SERVER_API_AUTH_STRING": "dapx:abc"}
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    env = server.server_env(4300, "dapx:abc")
    assert env["PREFECT_SERVER_API_CORS_ALLOWED_ORIGINS"] == \
        "http://127.0.0.1:4300,http://localhost:4300"
    assert "*" not in env["PREFECT_SERVER_API_CORS_ALLOWED_ORIGINS"]
