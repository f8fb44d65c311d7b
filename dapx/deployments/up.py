"""`dapx up`: everything the product needs, in the foreground, until Ctrl-C.

1. a Prefect server on 127.0.0.1 with its embedded SQLite (unless PREFECT_API_URL points at one);
2. the block types registered and the `dapx` process work pool;
3. the lab, when no real nodes are configured (or when asked), its nodes saved as blocks;
4. the built-in deployments and every job's deployment;
5. a process worker on the pool, which runs scheduled and manual runs.
"""

from __future__ import annotations

import os
import subprocess
from contextlib import ExitStack
from pathlib import Path

from prefect.settings import PREFECT_API_URL, temporary_settings

from dapx.deployments import server


def _log_dir() -> Path:
    path = Path(os.environ.get("PREFECT_HOME", Path.home() / ".prefect")) / "dapx"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _want_lab(mode: str) -> bool:
    if mode in ("yes", "no"):
        return mode == "yes"
    from dapx.blocks.manage import list_nodes
    from dapx.lab.common import SUBNET
    import ipaddress

    lab_net = ipaddress.ip_network(SUBNET)

    def in_lab(host: str) -> bool:
        try:
            return ipaddress.ip_address(host) in lab_net
        except ValueError:
            return False

    return not [n for n in list_nodes() if not in_lab(n["host"] or "")]


def run_product(*, port: int = server.DEFAULT_PORT, with_lab: str = "auto",
                worker_limit: int = 4) -> int:
    """Run the product until interrupted; return the worker's exit code."""
    with ExitStack() as stack:
        api_url = os.environ.get("PREFECT_API_URL")
        if api_url:
            server.wait_healthy(api_url, timeout=10)
        else:
            api_url = stack.enter_context(
                server.prefect_server(port, log_path=_log_dir() / "server.log"))
        # Subprocesses read the environment; this process's Prefect settings were loaded at
        # import, so point them at the server too (else the client starts its own).
        os.environ["PREFECT_API_URL"] = api_url
        stack.enter_context(temporary_settings(updates={PREFECT_API_URL: api_url}))
        print(f"dapx: Prefect server and UI at {api_url.removesuffix('/api')}")
        server.register_blocks()
        server.ensure_work_pool()
        if _want_lab(with_lab):
            from dapx.lab.register import register_lab_nodes
            from dapx.lab import estate

            estate.up()
            print(f"dapx: lab up; node blocks: {', '.join(register_lab_nodes())}")
        from dapx.deployments.builtin import deploy_builtin

        names = deploy_builtin()
        print(f"dapx: {len(names)} deployments ready: {', '.join(names)}")
        print("dapx: worker started; Ctrl-C stops everything")
        try:
            return subprocess.call(server.worker_argv(limit=worker_limit))
        except KeyboardInterrupt:
            return 0
