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


@contextmanager
def prefect_server(port: int = DEFAULT_PORT, *, log_path: Path | None = None) -> Iterator[str]:
    """Start ``prefect server start`` on 127.0.0.1:``port``; yield its API URL; stop it after."""
    api_url = f"http://127.0.0.1:{port}/api"
    log = open(log_path, "ab") if log_path else subprocess.DEVNULL
    env = {**os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    env.pop("PREFECT_API_URL", None)
    proc = subprocess.Popen(
        [prefect_bin(), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
    )
    try:
        wait_healthy(api_url)
        yield api_url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if log is not subprocess.DEVNULL:
            log.close()


def ensure_work_pool(name: str = WORK_POOL) -> None:
    """Create the process work pool ``name`` unless it exists."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists

    with get_client(sync_client=True) as client:
        try:
            client.create_work_pool(WorkPoolCreate(name=name, type="process"))
        except ObjectAlreadyExists:
            pass


def register_blocks() -> None:
    """Register DAPX block types with the Prefect server (what `prefect block register -m` does)."""
    subprocess.run([prefect_bin(), "block", "register", "-m", "dapx.blocks"],
                   check=True, stdout=subprocess.DEVNULL)


def worker_argv(pool: str = WORK_POOL, limit: int = 4, *, run_once: bool = False) -> list[str]:
    """argv of a process worker on ``pool`` running at most ``limit`` flow runs at once."""
    argv = [prefect_bin(), "worker", "start", "--pool", pool, "--type", "process",
            "--limit", str(limit)]
    return argv + (["--run-once"] if run_once else [])
