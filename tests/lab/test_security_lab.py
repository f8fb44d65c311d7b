"""Issue 9 (and issue 7, point 4) on the lab: trust that can be revoked, failures that say
what happened, the API pinned only when SSH agrees, no secret in Prefect after a transport
error, and a replica that carries no root hooks.

Every test undoes what it changed (the lab and the Prefect test server are shared).
"""

from __future__ import annotations

import asyncio
import datetime
import uuid

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from prefect import flow

from dapx.blocks import ProxmoxNode
from dapx.blocks import manage
from dapx.core.jobspec import ReplicaJob
from dapx.errors import AuthError, ConnectionLost, HostKeyError, TLSFingerprintError
from dapx.lab import estate
from test_replica_helpers import harness, lab_state, latest_artifact, sh

pytestmark = pytest.mark.lab

SRC, DST = "pve1", "pve3"
AUTHORIZED = "/root/.ssh/authorized_keys"
KNOWN = "/root/.ssh/dapx_known_hosts"


@pytest.fixture(scope="module", autouse=True)
def prefect_lab(request: pytest.FixtureRequest):
    lab_state(request)
    yield from harness(request)


async def load_node(name: str) -> ProxmoxNode:
    return await ProxmoxNode.aload(name)


async def add_node(**fields) -> str:
    return await asyncio.to_thread(manage.add_node, **fields)


async def remove_node(name: str) -> None:
    await asyncio.to_thread(manage.remove_node, name)


def blob_lines(text: str, blob: str) -> list[str]:
    return [line for line in text.splitlines() if blob in line.split()]


async def trusted() -> str:
    """Trust pve1 -> pve3 (the state every test leaves behind); the key's base64 blob."""
    from dapx.flows.trust import trust_nodes

    result = await trust_nodes(SRC, DST)
    return result.public_key.split()[1]


# -- trust ----------------------------------------------------------------------------------------

async def test_trust_is_one_restricted_line_replacing_older_ones() -> None:
    from dapx.flows.trust import trust_nodes

    blob = await trusted()
    public = f"ssh-ed25519 {blob} dapx-replication@{SRC}"
    # An older, unrestricted line of the same key and a stale pin of pve3's address (what
    # earlier versions appended) are replaced, not kept beside the new ones.
    sh(DST, ["sh", "-c", 'echo "$1" >> "$2"', "sh", public, AUTHORIZED])
    stale = sh(SRC, ["cat", "/etc/ssh/ssh_host_ed25519_key.pub"]).split()[:2]
    sh(SRC, ["sh", "-c", 'echo "$1" >> "$2"', "sh", f"198.18.213.13 {' '.join(stale)}", KNOWN])
    again = await trust_nodes(SRC, DST)
    assert again.key_authorised and again.host_key_pinned
    lines = blob_lines(sh(DST, ["cat", AUTHORIZED]), blob)
    assert lines == [f'restrict,from="198.18.213.11" {public}'], lines
    pinned = [ln for ln in sh(SRC, ["cat", KNOWN]).splitlines() if ln.startswith("198.18.213.13 ")]
    assert pinned == [f"198.18.213.13 {(await load_node(DST)).ssh_host_key}"], pinned
    assert "dapx-lab-admin" in sh(DST, ["cat", AUTHORIZED])  # other keys untouched
    third = await trust_nodes(SRC, DST)
    assert not (third.key_created or third.key_authorised or third.host_key_pinned)


async def test_the_key_works_only_from_the_source() -> None:
    from dapx.flows.trust import REPLICATION_KEY

    await trusted()
    # Test only: the probe plays an attacker's ssh, which pins nothing; what is checked is
    # that the destination refuses the key from anywhere but the source (from="...").
    probe = ["ssh", "-i", "/root/dapx-stolen-key", "-o", "BatchMode=yes", "-o",
             "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
             "-o", "IdentitiesOnly=yes", "root@198.18.213.13", "true"]
    ok = estate.run(SRC, [*probe[:2], REPLICATION_KEY, *probe[3:]])
    assert ok.returncode == 0, ok.stderr
    # The same private key used from pve2 (test only: it never leaves pve1 otherwise).
    key = sh(SRC, ["cat", REPLICATION_KEY])
    sh("pve2", ["sh", "-c", 'umask 077; cat > "$1"', "sh", "/root/dapx-stolen-key"], input=key)
    try:
        stolen = estate.run("pve2", probe)
        assert stolen.returncode != 0 and "Permission denied" in stolen.stderr, stolen.stderr
    finally:
        estate.run("pve2", ["rm", "-f", "/root/dapx-stolen-key"])


async def test_revoke_removes_the_key_and_the_pin() -> None:
    from dapx.flows.replica import zfs_replica
    from dapx.flows.trust import trust_nodes

    blob = await trusted()
    revoked = await trust_nodes(SRC, DST, revoke=True)
    try:
        assert revoked.revoked and revoked.key_authorised and revoked.host_key_pinned
        assert blob_lines(sh(DST, ["cat", AUTHORIZED]), blob) == []
        assert "198.18.213.13 " not in sh(SRC, ["cat", KNOWN])
        job = ReplicaJob(source=SRC, guest=100, destination=DST, dest_vmid=9100)
        with pytest.raises(HostKeyError, match="trust-nodes"):
            await zfs_replica(job=job, dry_run=True)
        twice = await trust_nodes(SRC, DST, revoke=True)
        assert not (twice.key_authorised or twice.host_key_pinned)
    finally:
        await trusted()


# -- check_trust says what happened (issue 7, point 4) --------------------------------------------

async def _check(source: ProxmoxNode, destination: ProxmoxNode) -> None:
    """check_trust's body without its retries (an unreachable node would cost a minute)."""
    from dapx.flows.trust import check_trust
    from dapx.tasks.ssh import node_sessions

    async with node_sessions():
        await check_trust.fn(source, destination)


async def test_unreachable_destination_is_not_a_trust_problem() -> None:
    await trusted()
    src, dst = await load_node(SRC), await load_node(DST)
    closed_port = dst.model_copy(update={"ssh_port": 2})
    with pytest.raises(ConnectionLost, match="cannot reach") as refused:
        await _check(src, closed_port)
    assert "Connection refused" in str(refused.value) and "trust-nodes" not in str(refused.value)
    nobody = dst.model_copy(update={"host": "198.18.213.99"})
    with pytest.raises(ConnectionLost, match="cannot reach") as gone:
        await _check(src, nobody)
    assert "trust-nodes" not in str(gone.value)


async def test_refused_key_says_run_trust_nodes() -> None:
    from dapx.flows.trust import unauthorise_key
    from dapx.tasks.ssh import node_sessions

    await trusted()
    src, dst = await load_node(SRC), await load_node(DST)
    public = sh(SRC, ["cat", "/root/.ssh/dapx_replication.pub"]).strip()
    async with node_sessions():
        await unauthorise_key.fn(dst, public)
    try:
        with pytest.raises(AuthError, match="refused pve1's replication key") as caught:
            await _check(src, dst)
        assert "trust-nodes" in str(caught.value) and "Permission denied" in str(caught.value)
    finally:
        await trusted()


async def test_changed_host_key_says_what_to_do() -> None:
    from dapx.flows.trust import pin_host_key
    from dapx.tasks.ssh import node_sessions

    await trusted()
    src, dst = await load_node(SRC), await load_node(DST)
    impostor = dst.model_copy(update={"ssh_host_key": (await load_node("pve2")).ssh_host_key})
    async with node_sessions():
        await pin_host_key.fn(src, impostor)
    try:
        with pytest.raises(HostKeyError, match="another SSH host key") as caught:
            await _check(src, dst)
        assert "dapx node test pve3" in str(caught.value)
    finally:
        await trusted()


# -- the API is pinned only when SSH agrees --------------------------------------------------------

async def _unpinned_copy(name: str, of: str, **changes) -> str:
    node = await load_node(of)
    fields = dict(name=name, host=node.host, kind=node.kind, storage_kind=node.storage_kind,
                  api_token_id=node.api_token_id,
                  api_token_secret=node.api_token_secret.get_secret_value(),
                  ssh_private_key=node.ssh_private_key.get_secret_value(),
                  ssh_host_key=node.ssh_host_key, tls_fingerprint=None, overwrite=True)
    return await add_node(**(fields | changes))


def _other_cert_pem() -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "pve3.lab")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(7).not_valid_before(now)
            .not_valid_after(now + datetime.timedelta(days=1)).sign(key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.PEM)


async def test_node_check_pins_the_certificate_the_node_holds() -> None:
    from dapx.flows.nodes import node_check

    state = estate.load_state()["nodes"]
    for name, of in (("pve3tls", DST), ("pbs1tls", "pbs1")):
        await _unpinned_copy(name, of)
        try:
            result = await node_check(name)
            assert result.tls_fingerprint_recorded
            assert (await load_node(name)).tls_fingerprint == state[of]["tls_fingerprint"]
        finally:
            await remove_node(name)


async def test_a_certificate_other_than_the_nodes_own_is_not_pinned() -> None:
    from dapx.flows.nodes import node_check

    custom = "/etc/pve/local/pveproxy-ssl.pem"  # pveproxy would serve this one instead
    sh(DST, ["sh", "-c", 'cat > "$1"', "sh", custom], input=_other_cert_pem().decode())
    await _unpinned_copy("pve3tls", DST)
    try:
        with pytest.raises(TLSFingerprintError, match="something else answers"):
            await node_check("pve3tls")
        assert (await load_node("pve3tls")).tls_fingerprint is None
    finally:
        estate.run(DST, ["rm", "-f", custom])
        await remove_node("pve3tls")


async def test_out_of_band_pins_are_enforced() -> None:
    from dapx.flows.nodes import node_check

    right = estate.load_state()["nodes"][DST]["tls_fingerprint"]
    await _unpinned_copy("pve3tls", DST, tls_fingerprint=":".join(["AB"] * 32))
    try:
        with pytest.raises(TLSFingerprintError, match="does not match the pinned"):
            await node_check("pve3tls")
        await _unpinned_copy("pve3tls", DST, tls_fingerprint=right)
        result = await node_check("pve3tls")
        assert not result.tls_fingerprint_recorded and not result.ssh_host_key_recorded
    finally:
        await remove_node("pve3tls")


# -- no secret in Prefect after a transport error ---------------------------------------------------

SECRET = f"leak-{uuid.uuid4()}"


@flow(name="api-leak-probe")
def api_leak_probe() -> None:
    """node-check's API task with a token secret the HTTP stack refuses in a header."""
    from dapx.flows.nodes import check_api

    good = ProxmoxNode.load(DST)
    bad = ProxmoxNode.model_construct(**{**dict(good), "name": DST,
                                         "api_token_secret": _secret(SECRET + "\nX: 1")})
    check_api(bad, DST)


def _secret(value: str):  # noqa: ANN202
    from pydantic import SecretStr

    return SecretStr(value)


async def test_a_transport_error_leaves_no_secret_in_prefect() -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (ArtifactFilter, ArtifactFilterFlowRunId,
                                                FlowRunFilter, FlowRunFilterId, LogFilter,
                                                LogFilterFlowRunId)

    state = await asyncio.to_thread(api_leak_probe, return_state=True)
    assert state.is_failed()
    run_id = state.state_details.flow_run_id
    async with get_client() as client:
        run = await client.read_flow_run(run_id)
        logs = await client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id])))
        tasks = await client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run_id])))
        artifacts = await client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run_id])))
        states = [s for t in tasks for s in await client.read_task_run_states(t.id)]
        states += await client.read_flow_run_states(run_id)
    seen = [run.model_dump_json(), *(log.message for log in logs),
            *(s.model_dump_json() for s in states), *(t.model_dump_json() for t in tasks),
            *(a.model_dump_json() for a in artifacts)]
    assert any("could not be sent" in text for text in seen), "the failure is not reported"
    assert not [text for text in seen if SECRET in text]


# -- a replica carries no root hooks ---------------------------------------------------------------

HOOKS = ("hookscript: local:snippets/evil.pl\nhostpci0: 0000:01:00.0\n"
         "args: -device vfio-pci,host=01:00.0\nusb0: host=1234:5678\n")


async def test_registration_leaves_hooks_out_and_says_so() -> None:
    from dapx.flows.register import register_vm
    from dapx.flows.replica import zfs_replica

    await trusted()
    config = "/etc/pve/qemu-server/100.conf"
    original = sh(SRC, ["cat", config])
    target = f"/etc/pve/nodes/{DST}/qemu-server/9555.conf"
    job = ReplicaJob(source=SRC, guest=100, destination=DST, dest_vmid=9555,
                     carry_keys=["usb0"])
    sh(SRC, ["sh", "-c", 'cat >> "$1"', "sh", config], input=HOOKS)
    try:
        await zfs_replica(job=job, dry_run=True)
        plan = await latest_artifact("replica-plan-pve1-100-pve3")
        assert "left out hookscript, hostpci0, args" in plan.data, plan.data
        registration = await register_vm(job)
        assert registration.dropped_keys == ["hookscript", "hostpci0", "args"]
        assert "left out hookscript, hostpci0, args" in str(registration)
        written = sh(DST, ["cat", target])
        assert written.startswith("#dapx-replica-of: pve1/100\n")
        for key in ("hookscript", "hostpci0", "args"):
            assert f"\n{key}:" not in written
        assert "\nusb0: host=1234:5678\n" in written  # named in carry_keys
    finally:
        sh(SRC, ["sh", "-c", 'cat > "$1"', "sh", config], input=original)
        estate.run(DST, ["rm", "-f", target])
