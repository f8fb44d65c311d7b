"""Run the product: a Prefect server on its embedded SQLite, the work pool, and a worker.

``dapx up`` calls ``run_product``; the pieces are separate so tests can start just a server.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import httpx

from dapx.errors import DapxError

WORK_POOL = "dapx"
DEFAULT_PORT = 4200

LEASE_STORAGE = "prefect.server.concurrency.lease_storage.filesystem"
"""Concurrency leases kept in files under the Prefect home: they survive a server restart, so a
lock held by a running job is neither lost (a second run getting in) nor leaked (the slot taken
for good, as with Prefect's in-memory default)."""


def server_env() -> dict[str, str]:
    """Settings of the Prefect server the product runs (on top of the caller's environment)."""
    return {"PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE": LEASE_STORAGE}


def prefect_bin() -> str:
    """Path of the `prefect` command installed beside this Python."""
    return str(Path(sys.executable).with_name("prefect"))


def is_healthy(api_url: str) -> bool:
    """True when a Prefect server answers ``api_url``/health."""
    try:
        return httpx.get(f"{api_url}/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def wait_healthy(api_url: str, timeout: float = 90.0) -> None:
    """Wait until ``api_url``/health answers; raise DapxError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if is_healthy(api_url):
            return
        time.sleep(0.5)
    raise DapxError(f"Prefect server at {api_url} did not become healthy in {timeout:.0f} s")


def start_server(port: int = DEFAULT_PORT, *, log_path: Path | None = None) -> subprocess.Popen:
    """Start ``prefect server start`` on 127.0.0.1:``port`` in a session of its own (the
    database and leases under the caller's PREFECT_HOME); ``stop_server`` ends it."""
    log = open(log_path, "ab") if log_path else subprocess.DEVNULL
    env = {**os.environ, **server_env()}
    env.pop("PREFECT_API_URL", None)
    try:
        return subprocess.Popen(
            [prefect_bin(), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
            stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    finally:
        if log is not subprocess.DEVNULL:
            log.close()  # the child holds its own copy


def stop_server(proc: subprocess.Popen) -> None:
    """Terminate the server (SIGKILL after 20 s)."""
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@contextmanager
def prefect_server(port: int = DEFAULT_PORT, *, log_path: Path | None = None) -> Iterator[str]:
    """Start ``prefect server start`` on 127.0.0.1:``port``; yield its API URL; stop it after."""
    api_url = f"http://127.0.0.1:{port}/api"
    proc = start_server(port, log_path=log_path)
    try:
        wait_healthy(api_url)
        yield api_url
    finally:
        stop_server(proc)


HEARTBEAT_ENV = "PREFECT_FLOWS_HEARTBEAT_FREQUENCY"


def with_heartbeats(template: dict, heartbeat_seconds: int) -> bool:
    """Make every flow run of a process pool send heartbeats (so a run whose process dies with
    its worker is marked Crashed: ``dapx.deployments.automations``), keeping whatever else
    the template's environment holds. True when ``template`` changed."""
    env = template["variables"]["properties"].setdefault("env", {"type": "object"})
    default = env.get("default") or {}
    if default.get(HEARTBEAT_ENV):
        return False
    env["default"] = {**default, HEARTBEAT_ENV: str(heartbeat_seconds)}
    return True


def ensure_work_pool(name: str = WORK_POOL) -> None:
    """Create the process work pool ``name`` (flow runs with heartbeats), or add the
    heartbeats to an existing pool's job template (nothing else of it changes)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate, WorkPoolUpdate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound
    from prefect.workers.process import ProcessWorker

    from dapx.deployments.automations import HEARTBEAT_SECONDS

    with get_client(sync_client=True) as client:
        try:
            template = client.read_work_pool(name).base_job_template
        except ObjectNotFound:
            template = ProcessWorker.get_default_base_job_template()
            with_heartbeats(template, HEARTBEAT_SECONDS)
            try:
                client.create_work_pool(WorkPoolCreate(name=name, type="process",
                                                       base_job_template=template))
            except ObjectAlreadyExists:  # created meanwhile by another process
                pass
            return
        if with_heartbeats(template, HEARTBEAT_SECONDS):
            client.update_work_pool(name, WorkPoolUpdate(base_job_template=template))


def register_blocks() -> None:
    """Register DAPX block types with the Prefect server (what `prefect block register -m` does)."""
    subprocess.run([prefect_bin(), "block", "register", "-m", "dapx.blocks"],
                   check=True, stdout=subprocess.DEVNULL)


WORKER_QUERY_SECONDS = 1
"""How often a worker asks the server for runs to start (Prefect's default, 10 s, makes a run
started from the UI wait up to 10 s before anything happens)."""


def worker_env() -> dict[str, str]:
    """Settings of the workers the product starts (on top of the caller's environment)."""
    return {**os.environ, "PREFECT_WORKER_QUERY_SECONDS": str(WORKER_QUERY_SECONDS)}


def worker_argv(pool: str = WORK_POOL, limit: int = 4, *, run_once: bool = False) -> list[str]:
    """argv of a process worker on ``pool`` running at most ``limit`` flow runs at once."""
    argv = [prefect_bin(), "worker", "start", "--pool", pool, "--type", "process",
            "--limit", str(limit)]
    return argv + (["--run-once"] if run_once else [])
