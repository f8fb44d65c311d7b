"""A real Prefect server for the deploy tier: started once per test session on a free port,
the way `dapx up` starts it: with authentication (the credential in the Prefect home, 0600),
CORS limited to its UI, and the URL and credential written into the active Prefect profile.
Every server started here (``OwnServer`` too) requires the credential.

Tests drive it the way users do: `dapx` and `prefect` commands in subprocesses (which find
the server and the credential in the environment, or with ``profile_only`` in PREFECT_HOME's
profile), and the Prefect client for assertions.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from dapx.deployments import server
from dapx.deployments.server import prefect_server

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def prefect_env(home: Path, api_url: str) -> Iterator[None]:
    """Point this process (settings) and the commands it starts (environment) at a server
    whose home is ``home``, with that home's API credential."""
    from prefect.settings import (PREFECT_API_AUTH_STRING, PREFECT_API_URL, PREFECT_HOME,
                                  temporary_settings)

    credential = server.api_credential(home)
    keys = ("PREFECT_HOME", "PREFECT_API_URL", "PREFECT_API_AUTH_STRING")
    old = {k: os.environ.get(k) for k in keys}
    os.environ.update(PREFECT_HOME=str(home), PREFECT_API_URL=api_url,
                      PREFECT_API_AUTH_STRING=credential)
    try:
        with temporary_settings(updates={PREFECT_API_URL: api_url, PREFECT_HOME: home,
                                         PREFECT_API_AUTH_STRING: credential}):
            yield
    finally:
        for key, value in old.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def drain_to_server() -> None:
    """Send what this process still holds for the current server (events and logs of flows
    it ran) before that server stops; Prefect's own drain at exit has no time limit and would
    wait forever for a server that is gone."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    for worker in (EventsWorker, APILogWorker):
        worker.drain_all(timeout=15)


class OwnServer:
    """A Prefect server of this module's own (its own home and database: the SQLite file in
    ``home``, or ``database``, a PostgreSQL URL), restartable."""

    def __init__(self, home: Path, database: str | None = None) -> None:
        self.home, self.port, self.database = home, free_port(), database
        self.api_url = f"http://127.0.0.1:{self.port}/api"
        self.proc = None

    def start(self) -> None:
        self.proc = server.start_server(self.port, log_path=self.home / "server.log",
                                        home=self.home, database=self.database)
        server.wait_healthy(self.api_url)

    def stop(self) -> None:
        drain_to_server()
        server.stop_server(self.proc)

    def restart(self) -> None:
        self.stop()
        self.start()


@pytest.fixture(scope="session")
def prefect_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """API URL of a real `prefect server start` with its own SQLite database, started as
    `dapx up` starts it."""
    home = tmp_path_factory.mktemp("prefect-home")
    port = free_port()
    with prefect_env(home, f"http://127.0.0.1:{port}/api"):
        with prefect_server(port, log_path=home / "server.log", home=home) as url:
            server.connect_clients(url, home)  # as dapx up: URL and credential in the profile
            yield url
            drain_to_server()


@pytest.fixture(scope="session")
def lab_nodes(prefect_api: str, lab: dict) -> str:
    """The lab's nodes saved as node blocks on the session's server (`dapx lab register`, once
    per session, as a user would run it) and the product's work pool; returns the server's URL.
    A test that changes a lab node's block or removes the pool puts it back."""
    run_cli("dapx", "lab", "register")
    server.ensure_work_pool()
    return prefect_api


def dapx(*argv: str) -> int:
    """`dapx ARGV` in this process: the same code as the command, without the 3 s a new Python
    with Prefect takes to start. For set-up and clean-up; a test of what a user sees runs the
    command itself (``run_cli``)."""
    from dapx.cli import main

    return main(list(argv))


def assert_one_line(result: subprocess.CompletedProcess, *words: str) -> None:
    """The command failed the way a person's mistake should: exit 2, one line on stderr that
    names every one of ``words``, no traceback."""
    __tracebackhide__ = True
    shown = f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    assert result.returncode == 2, shown
    assert "Traceback" not in result.stderr + result.stdout, shown
    assert len(result.stderr.strip().splitlines()) == 1, shown
    for word in words:
        assert word in result.stderr, shown


def run_cli(*argv: str, check: bool = True, input: str | None = None, timeout: float = 300,
            profile_only: bool = False) -> subprocess.CompletedProcess:
    """Run `dapx` or `prefect` from the venv, as a user would, with the test server's URL.

    ``profile_only``: without PREFECT_API_URL/PREFECT_API_AUTH_STRING in the environment, as
    a user who exported nothing (the command finds both in PREFECT_HOME's profile)."""
    env = {**os.environ, "COLUMNS": "250"}
    if profile_only:
        env = {k: v for k, v in env.items()
               if k not in ("PREFECT_API_URL", "PREFECT_API_AUTH_STRING")}
    result = subprocess.run([str(BIN / argv[0]), *argv[1:]], capture_output=True, text=True,
                            input=input, timeout=timeout, env=env)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} exited {result.returncode}:\n"
                             f"{result.stdout}\n{result.stderr}")
    return result


def trust(source: str, destination: str, *, revoke: bool = False) -> None:
    """Run the trust-nodes flow in a process of its own against the current test server (for
    a server of a module's own, which stops before the session ends; see ``trust_here``).

    Not in the test process: a flow run in it leaves events and logs queued for that server,
    and when the server stops before the session ends, Prefect's exit-time drain waits for
    it forever."""
    code = ("import asyncio, sys; from dapx.flows.trust import trust_nodes; "
            "asyncio.run(trust_nodes(sys.argv[1], sys.argv[2], revoke=sys.argv[3] == 'yes'))")
    result = subprocess.run([sys.executable, "-c", code, source, destination,
                             "yes" if revoke else "no"], capture_output=True, text=True,
                            timeout=300, env={**os.environ})
    if result.returncode != 0:
        raise AssertionError(f"trust-nodes {source} -> {destination} failed:\n{result.stderr}")


def trust_here(source: str, destination: str, *, revoke: bool = False) -> None:
    """Run the trust-nodes flow in this process, against the session's server (``prefect_api``:
    it outlives the test, and the session drains what the flow left queued before it stops)."""
    import asyncio

    from dapx.flows.trust import trust_nodes

    asyncio.run(trust_nodes(source, destination, revoke=revoke))


def wait_final(run_id: uuid.UUID, timeout: float = 150.0):  # noqa: ANN201 - a FlowRun
    """The flow run once its state is final (polled every 0.25 s; a server that is restarting
    meanwhile is asked again). AssertionError naming the last state after ``timeout``."""
    from prefect.client.orchestration import get_client

    deadline, run = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        try:
            with get_client(sync_client=True) as client:
                run = client.read_flow_run(run_id)
        except Exception:  # noqa: BLE001 - the server restarting
            run = None
        if run is not None and run.state is not None and run.state.is_final():
            return run
        time.sleep(0.25)
    raise AssertionError(f"flow run {run_id} did not finish in {timeout:g} s: "
                         f"{run.state if run else 'server not answering'}")

