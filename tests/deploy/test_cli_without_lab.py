"""Deploy tier, the `dapx` commands that need only a Prefect server (no lab; they run beside the
lab tier): node blocks made by `dapx node add` show in `prefect block ls` and bad input is one
line; `dapx init` keeps the private key only in a secret block; a node block made invalid in
the UI and no server at the URL each give one line on stderr and exit 2, never a traceback.

`dapx job` does what a person expects: bad job input is refused before anything is written; the
job's flow follows the source node's storage; a name that exists is refused unless --replace
(which keeps a paused schedule paused); a schedule paused with `prefect deployment schedule
pause` shows as paused; schedules carry a time zone; a job made before the work pool gets the
product's pool. Creating a job reads the node blocks and never logs in to a node, so these
tests use paper nodes: blocks named and kinded as the lab's, at documentation addresses
(192.0.2.0/24) that nothing here ever connects to."""

from __future__ import annotations

import os
import subprocess

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import BlockDocumentCreate

from dapx.deployments import server
from tests.deploy.conftest import BIN, assert_one_line, dapx, free_port, run_cli

PAPER_NODES = {"pve1": ("pve", "zfs"), "pve2": ("pve", "btrfs"), "pve3": ("pve", "zfs"),
               "pbs1": ("pbs", "other")}
"""The lab's nodes as their blocks name and kind them (tests/lab builds the real ones)."""
JOB = ["dapx", "job", "create", "replica", "--source", "pve1", "--guest", "100", "--dest",
       "pve3", "--dest-vmid", "9700", "--name", "ux-job"]


@pytest.fixture(scope="module")
def paper_nodes(prefect_api: str) -> None:
    """Node blocks for the lab's node names, at addresses nothing connects to, and the pool."""
    from dapx.blocks.manage import add_node

    for number, (name, (kind, storage)) in enumerate(PAPER_NODES.items(), start=10):
        add_node(name=name, host=f"192.0.2.{number}", kind=kind, storage_kind=storage,
                 overwrite=True)
    server.ensure_work_pool()


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


def test_bad_job_input_is_refused_before_anything_is_written(paper_nodes: None) -> None:
    for argv, expected in (
        (["--schedule", "61 * * * *"], "minute"),
        (["--dest-vmid", "99"], "VMID 99"),
        (["--bridge-map", "vmbr0=$(reboot)"], "bridge name"),
        (["--subfolder", "../etc"], "'..'"),
        (["--timezone", "Mars/Olympus"], "Mars/Olympus"),
        (["--site", "site a"], "site"),
        (["--name", "a;rm -rf /"], "a;rm -rf /"),
    ):
        result = run_cli("dapx", "job", "create", "replica", "--source", "pve1", "--guest",
                         "100", "--dest", "pve2", "--name", "bad-job", *argv, check=False)
        assert_one_line(result, expected)
    unknown = run_cli("dapx", "job", "create", "replica", "--source", "pve1", "--guest", "100",
                      "--dest", "nowhere", check=False)
    assert_one_line(unknown, "unknown node 'nowhere'")
    listed = run_cli("dapx", "job", "list").stdout
    assert "bad-job" not in listed and "rm -rf" not in listed


def test_job_method_follows_the_source_nodes_storage(paper_nodes: None) -> None:
    out = run_cli("dapx", "job", "create", "replica", "--source", "pve2", "--guest", "200",
                  "--dest", "pve3", "--paused").stdout
    assert "btrfs-replica/vm200-to-pve3" in out
    refused = run_cli("dapx", "job", "create", "replica", "--source", "pbs1", "--guest", "300",
                      "--dest", "pve3", check=False)
    assert_one_line(refused, "PBS")
    dapx("job", "remove", "vm200-to-pve3")


def test_a_pbs_server_named_where_a_pve_node_is_meant_is_one_line(paper_nodes: None) -> None:
    # The kind is in the block: refused before anything connects (pbs1 is on paper here).
    listed = run_cli("dapx", "backup", "list", "--node", "pbs1", check=False)
    assert_one_line(listed, "node pbs1 is a Proxmox Backup Server, not a PVE node")


def test_failover_mistakes_are_one_line_and_change_nothing(paper_nodes: None) -> None:
    for name, expected in (("a;rm -rf /", "a;rm -rf /"), ("no-such-job", "not a job")):
        assert_one_line(run_cli("dapx", "failover", name, check=False), expected)
        assert_one_line(run_cli("dapx", "failback", name, check=False), expected)
    assert_one_line(run_cli("dapx", "failback", "ux-job", "--storage", "../x", check=False),
                    "../x")
    run_cli(*JOB, "--schedule", "0 2 * * *")
    try:
        # pve1 is on paper (no pinned TLS fingerprint): nothing can say the guest is stopped
        refused = run_cli("dapx", "failover", "ux-job", check=False)
        assert_one_line(refused, "cannot ask pve1 whether guest 100 runs", "source_down")
        refused = run_cli("dapx", "failback", "ux-job", check=False)
        assert_one_line(refused, "cannot ask pve1 about guest 100", "a failback needs pve1 up")
        assert "ux-job" in run_cli("dapx", "job", "list").stdout
        assert not any(j["paused"] for j in _jobs() if j["name"] == "ux-job")
    finally:
        dapx("job", "remove", "ux-job")


def _jobs() -> list[dict]:
    from dapx.deployments.jobs import list_jobs

    return list_jobs()


def _job(name: str) -> dict:
    return next(j for j in _jobs() if j["name"] == name)


def test_create_replace_pause_and_time_zone(paper_nodes: None) -> None:
    run_cli(*JOB, "--schedule", "0 2 * * *", "--timezone", "Europe/Rome")
    try:
        again = run_cli(*JOB, "--schedule", "0 3 * * *", check=False)
        assert_one_line(again, "--replace")
        listed = run_cli("dapx", "job", "list").stdout
        assert "0 2 * * * (Europe/Rome)" in listed and "active" in listed, listed

        run_cli("prefect", "deployment", "schedule", "pause", "zfs-replica/ux-job",
                _schedule_id("ux-job"))
        line = next(l for l in run_cli("dapx", "job", "list").stdout.splitlines()
                    if l.startswith("ux-job"))
        assert line.rstrip().endswith("paused"), line

        run_cli(*JOB, "--schedule", "0 4 * * *", "--keep", "5", "--replace")
        line = next(l for l in run_cli("dapx", "job", "list").stdout.splitlines()
                    if l.startswith("ux-job"))
        assert "0 4 * * *" in line and line.rstrip().endswith("paused"), line

        # resumed however it was paused (here: a replace of a paused job, schedule inactive)
        assert run_cli("dapx", "job", "resume", "ux-job").stdout == "job ux-job active\n"
        assert not _job("ux-job")["paused"]
        with get_client(sync_client=True) as client:
            deployment = client.read_deployment_by_name("zfs-replica/ux-job")
        assert not deployment.paused and all(s.active for s in deployment.schedules)
        assert run_cli("dapx", "job", "resume", "ux-job").stdout == "job ux-job active already\n"
        assert run_cli("dapx", "job", "pause", "ux-job").stdout == "job ux-job paused\n"
        assert _job("ux-job")["paused"]
        assert_one_line(run_cli("dapx", "job", "resume", "no-such-job", check=False),
                        "unknown job 'no-such-job'")

        bad = run_cli(*JOB, "--timezone", "Mars/Olympus", "--replace", check=False)
        assert bad.returncode == 2 and "time zone 'Mars/Olympus'" in bad.stderr
    finally:
        dapx("job", "remove", "ux-job")


def test_a_job_created_before_the_work_pool(paper_nodes: None) -> None:
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
        server.ensure_work_pool()  # as the later tests expect it


def _schedule_id(name: str) -> str:
    with get_client(sync_client=True) as client:
        return str(client.read_deployment_by_name(f"zfs-replica/{name}").schedules[0].id)
