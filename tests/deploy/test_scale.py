"""Deploy tier, scaling out (X7, P6): a Prefect server on PostgreSQL (a throwaway cluster) and
two process workers, one per site's work queue: one started from the ExecStart line of the
systemd unit `dapx install-service --worker` writes, one by `dapx worker`. Replica jobs of each
site are taken by that site's worker; a fleet job over every guest of pve1 completes with one
table row per guest, picks up guests added since its last run, and a guest made to fail fails
alone; a backlog of late runs of one job runs it once.

The tests run in file order, like an estate's life.
"""

from __future__ import annotations

import asyncio
import os
import shlex
import signal
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from prefect.client.orchestration import get_client

from dapx.deployments import server, service
from dapx.deployments.processes import signal_tree, stop_tree
from dapx.lab import estate
from tests.deploy.conftest import OwnServer, prefect_env, run_cli, wait_final
from tests.helpers import postgres, tiny_guests
from tests.lab.test_replica_helpers import sha256

SRC, DST = "pve1", "pve3"
SITE_A, SITE_B = "site-a", "site-b"
JOB_A, JOB_B, FLEET = "scale-a", "scale-b", "scale-fleet"
GUEST_A, GUEST_B = 160, 161  # small guests of pve1, one replica job each (site A, site B)
OFFSET = 20000  # the fleet's replicas: pve3/20100, 20101, ...
NEW_GUEST, BROKEN_GUEST = 150, 151
SMALL = [GUEST_A, GUEST_B, NEW_GUEST, BROKEN_GUEST]
REPLICAS = [9600, 9601] + [g + OFFSET for g in (100, 101, GUEST_A, GUEST_B, NEW_GUEST)]


class Worker:
    """A worker process in a session of its own (as systemd or `dapx up` runs it)."""

    def __init__(self, argv: list[str], env: dict[str, str]) -> None:
        self.name = argv[argv.index("--name") + 1]
        self.proc = subprocess.Popen(argv, env=env, start_new_session=True,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def stop(self) -> None:
        if self.proc.poll() is None:
            stop_tree(self.proc, grace=20.0)


def unit_worker(tmp: Path) -> tuple[Worker, str]:
    """Write site A's worker unit and run its ExecStart line with its Environment= lines (as
    systemd would, on top of this test's environment); return the worker and the unit text."""
    done = service.install(worker=True, queue=SITE_A, limit=2, port=0, unit_dir=tmp,
                           env_file=tmp / "dapx.env", enable=False)
    assert done[0].endswith("dapx-worker-site-a.service"), done
    text = (tmp / "dapx-worker-site-a.service").read_text()
    lines = dict(line.split("=", 1) for line in text.splitlines() if "=" in line
                 and not line.startswith("Environment"))
    env = dict(os.environ)
    for line in text.splitlines():
        if line.startswith("Environment="):
            key, _, value = line.removeprefix("Environment=").partition("=")
            env[key] = value
    env.pop("PREFECT_API_URL")  # the unit's worker finds the server in the profile...
    env.pop("PREFECT_API_AUTH_STRING")  # ...with its credential, as on a real host
    return Worker(shlex.split(lines["ExecStart"]), env), text


@pytest.fixture(scope="module")
def scale(lab: dict, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """A server on PostgreSQL with the product's blocks, pool and jobs; pve1 trusted by pve3;
    the site A worker (from its unit) and the site B worker (`dapx worker`)."""
    tmp = tmp_path_factory.mktemp("scale")
    with postgres.throwaway_cluster() as database:
        own = OwnServer(tmp, database)
        with prefect_env(tmp, own.api_url):
            own.start()
            workers: list[Worker] = []
            try:
                server.connect_clients(own.api_url, tmp)  # URL and credential in the profile
                _prepare()
                worker_a, unit = unit_worker(tmp)
                workers.append(worker_a)
                workers.append(Worker([str(Path(server.prefect_bin()).with_name("dapx")),
                                       "worker", "--queue", SITE_B, "--limit", "2",
                                       "--name", "worker-b"], dict(os.environ)))
                yield {"database": database, "workers": workers, "unit": unit, "server": own}
            finally:
                for worker in workers:  # both at once: each may wait for its flow runs
                    signal_tree(worker.proc.pid, signal.SIGTERM)
                for worker in workers:
                    worker.stop()
                own.stop()
                _cleanup(wait=False)  # what zfs-fuse still calls busy goes at the next setup


def _prepare() -> None:
    import asyncio

    from dapx.core.jobspec import ReplicaJob
    from dapx.deployments import jobs
    from dapx.flows.trust import trust_nodes
    from dapx.lab.register import register_lab_nodes

    server.register_blocks()
    server.ensure_work_pool()
    register_lab_nodes()
    asyncio.run(trust_nodes(SRC, DST))
    _cleanup()  # also what an earlier session's teardown left busy
    tiny_guests.make(SRC, [GUEST_A, GUEST_B])
    for name, guest, vmid, site in ((JOB_A, GUEST_A, 9600, SITE_A),
                                    (JOB_B, GUEST_B, 9601, SITE_B)):
        jobs.create_job(name, "zfs-replica", ReplicaJob(source=SRC, guest=guest,
                                                        destination=DST, dest_vmid=vmid,
                                                        keep=2), site=site)
    run_cli("dapx", "job", "create", "fleet", "--source", SRC, "--dest", DST, "--name", FLEET,
            "--vmid-offset", str(OFFSET), "--keep", "2", "--site", SITE_B)


def _cleanup(wait: bool = True) -> None:
    tiny_guests.remove(SRC, SMALL, wait)
    tiny_guests.remove_replicas(DST, REPLICAS, wait)
    for tag in ("dapx_pve3-960", "dapx_pve3-2010", "dapx_pve3-2016"):
        tiny_guests.remove_snapshots(SRC, tag, wait)


def start(deployment: str) -> uuid.UUID:
    out = run_cli("prefect", "deployment", "run", deployment).stdout
    return uuid.UUID(out.split("flow-run/")[1].split()[0].strip())


def submitted_by(run: uuid.UUID) -> str:
    """The name of the worker that started ``run`` (its log line in the run's logs)."""
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    with get_client(sync_client=True) as client:
        logs = client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run])))
    for log in logs:
        if " submitting flow run " in log.message and log.message.startswith("Worker '"):
            return log.message.split("'")[1]
    raise AssertionError(f"no worker logged submitting flow run {run}")


def fleet_table(run: uuid.UUID) -> dict[str, dict]:
    """The fleet run's table artifact: guest -> row."""
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run])))
    tables = [a for a in artifacts if a.type == "table" and (a.key or "").startswith("fleet")]
    assert len(tables) == 1, [a.key for a in artifacts]
    import json

    rows = tables[0].data if isinstance(tables[0].data, list) else json.loads(tables[0].data)
    return {row["guest"]: row for row in rows}


def test_the_server_runs_on_postgresql_and_the_unit_is_valid(scale: dict) -> None:
    import asyncio

    import asyncpg

    async def deployments() -> int:
        conn = await asyncpg.connect(scale["database"].replace("+asyncpg", ""))
        try:
            return await conn.fetchval("SELECT count(*) FROM deployment")
        finally:
            await conn.close()

    assert asyncio.run(deployments()) == 3  # the three jobs, in PostgreSQL
    unit = scale["unit"]
    assert "ExecStart=" in unit and " worker --limit 2 --queue site-a --name " in unit
    assert "EnvironmentFile=-" in unit and "KillMode=control-group" in unit
    listed = run_cli("dapx", "job", "list").stdout
    assert all(job in listed for job in (JOB_A, JOB_B, FLEET)) and SITE_B in listed


def test_each_site_worker_runs_its_sites_jobs(scale: dict) -> None:
    worker_a, worker_b = scale["workers"]
    runs = {JOB_A: start(f"zfs-replica/{JOB_A}"), JOB_B: start(f"zfs-replica/{JOB_B}")}
    done = {name: wait_final(run) for name, run in runs.items()}
    assert all(f.state.is_completed() for f in done.values()), {
        n: f.state for n, f in done.items()}
    assert done[JOB_A].work_queue_name == SITE_A and done[JOB_B].work_queue_name == SITE_B
    assert submitted_by(runs[JOB_A]) == worker_a.name
    assert submitted_by(runs[JOB_B]) == worker_b.name
    for guest, vmid in ((GUEST_A, 9600), (GUEST_B, 9601)):
        assert sha256(SRC, f"/rpool/data/vm-{guest}-disk-0/disk.raw") == sha256(
            DST, f"/rpool/replica/vm-{vmid}-disk-0/disk.raw")


def test_a_fleet_job_replicates_every_guest_of_pve1(scale: dict) -> None:
    flow_run = wait_final(start(f"fleet-replica/{FLEET}"))
    assert flow_run.state.is_completed(), flow_run.state
    table = fleet_table(flow_run.id)
    assert set(table) == {"pve1/100", "pve1/101", f"pve1/{GUEST_A}", f"pve1/{GUEST_B}"}
    assert {r["outcome"] for r in table.values()} == {"completed"}
    assert table["pve1/100"]["destination"] == f"pve3/{100 + OFFSET}"
    with get_client(sync_client=True) as client:  # each guest its own (sub)flow run
        sub = client.read_flow_run(uuid.UUID(table["pve1/101"]["flow run"]))
    assert sub.state.is_completed() and sub.parent_task_run_id is not None
    assert sha256(SRC, "/rpool/data/vm-100-disk-1/disk.raw") == sha256(
        DST, f"/rpool/replica/vm-{100 + OFFSET}-disk-1/disk.raw")
    # the guest's protection record names the fleet job that started its run, and that run
    from dapx.tasks.store import open_store

    async def replicas() -> set[tuple[str, str, str]]:
        async with open_store() as store:
            return {(r.subject, r.job, r.flow_run_id) for r in await store.latest()
                    if r.kind == "replica"}

    assert ("pve1/101", f"fleet-replica/{FLEET}", str(sub.id)) in asyncio.run(replicas())


def test_new_guests_are_picked_up_and_a_failing_guest_fails_alone(scale: dict) -> None:
    tiny_guests.make(SRC, [NEW_GUEST])
    tiny_guests.make_without_disk(SRC, [BROKEN_GUEST])  # its replica fails: no dataset
    tiny_guests.change(SRC, [GUEST_A])
    flow_run = wait_final(start(f"fleet-replica/{FLEET}"))
    assert flow_run.state.is_failed(), flow_run.state
    message = flow_run.state.message or ""
    assert "1 of 6 guest(s) failed (5 completed)" in message and "pve1/151" in message
    table = fleet_table(flow_run.id)
    assert table["pve1/151"]["outcome"] == "failed"
    assert "rpool/data/vm-151-disk-0" in table["pve1/151"]["error"]
    assert {r["outcome"] for g, r in table.items() if g != "pve1/151"} == {"completed"}
    # The guests copied before are increments: the quick round (the fleet run itself) took
    # them; the new guest and the broken one each had a run of their own.
    assert table[f"pve1/{GUEST_A}"]["flow run"] == str(flow_run.id)
    assert table[f"pve1/{NEW_GUEST}"]["flow run"] not in ("-", str(flow_run.id))
    assert sha256(SRC, f"/rpool/data/vm-{GUEST_A}-disk-0/disk.raw") == sha256(
        DST, f"/rpool/replica/vm-{GUEST_A + OFFSET}-disk-0/disk.raw")
    assert sha256(SRC, f"/rpool/data/vm-{NEW_GUEST}-disk-0/disk.raw") == sha256(
        DST, f"/rpool/replica/vm-{NEW_GUEST + OFFSET}-disk-0/disk.raw")
    config = estate.run(DST, ["cat", f"/etc/pve/nodes/{DST}/qemu-server/"
                                     f"{NEW_GUEST + OFFSET}.conf"]).stdout
    assert f"vm-{NEW_GUEST + OFFSET}-disk-0" in config


def test_a_backlog_of_late_runs_runs_the_job_once(scale: dict) -> None:
    from datetime import datetime, timedelta, timezone

    from prefect.states import Scheduled

    with get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name(f"zfs-replica/{JOB_A}")
        now = datetime.now(timezone.utc)
        late = [client.create_flow_run_from_deployment(
            deployment.id, state=Scheduled(scheduled_time=now - timedelta(minutes=m)))
            for m in (50, 40, 30, 20, 10)]  # a */10 job whose worker was down for an hour
    finals = [wait_final(run.id) for run in late]
    states = sorted(f.state.type.value for f in finals)
    assert states == ["CANCELLED"] * 4 + ["COMPLETED"], [f.state for f in finals]
