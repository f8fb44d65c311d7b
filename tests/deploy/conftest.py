"""A real Prefect server for the deploy tier: started once per test session on a free port.

Tests drive it the way users do: `dapx` and `prefect` commands in subprocesses with
PREFECT_API_URL set, and the Prefect client for assertions.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from dapx.deployments.server import prefect_server

BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def prefect_api(tmp_path_factory: pytest.TempPathFactory) -> str:
    """API URL of a real `prefect server start` with its own SQLite database."""
    home = tmp_path_factory.mktemp("prefect-home")
    old = {k: os.environ.get(k) for k in ("PREFECT_HOME", "PREFECT_API_URL")}
    os.environ["PREFECT_HOME"] = str(home)
    with prefect_server(_free_port(), log_path=home / "server.log") as url:
        os.environ["PREFECT_API_URL"] = url
        from prefect.settings import PREFECT_API_URL, temporary_settings

        with temporary_settings(updates={PREFECT_API_URL: url}):
            yield url
    for key, value in old.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def run_cli(*argv: str, check: bool = True, input: str | None = None,
            timeout: float = 300) -> subprocess.CompletedProcess:
    """Run `dapx` or `prefect` from the venv, as a user would, with the test server's URL."""
    result = subprocess.run([str(BIN / argv[0]), *argv[1:]], capture_output=True, text=True,
                            input=input, timeout=timeout, env={**os.environ, "COLUMNS": "250"})
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} exited {result.returncode}:\n"
                             f"{result.stdout}\n{result.stderr}")
    return result
