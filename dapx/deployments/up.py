"""`dapx up`: everything the product needs, in the foreground, until Ctrl-C or SIGTERM.

1. a Prefect server on 127.0.0.1 with its embedded SQLite, or on PostgreSQL with ``--database``
   / ``$DAPX_DATABASE_URL`` (unless PREFECT_API_URL points at a server already);
2. the block types registered, the `dapx` process work pool and the product's automations;
3. the lab, when no real nodes are configured (or when asked), its nodes saved as blocks;
4. the built-in deployments and every job's deployment; notify-run (with its automation for
   crashed job runs), daily-summary and protection-status;
5. a process worker on the pool, which runs scheduled and manual runs.

Ctrl-C, SIGTERM (systemd, `docker stop`) and SIGHUP stop everything it started, in reverse
order, within seconds: the worker and its flow runs (a run still in flight afterwards is marked
Crashed, saying why), the lab if this command started it, the server.
"""

from __future__ import annotations

import os
import signal
import subprocess
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Iterator

from prefect.settings import PREFECT_API_URL, temporary_settings

from dapx.deployments import server
from dapx.deployments.processes import stop_tree


def _log_dir() -> Path:
    path = server.prefect_home() / "dapx"
    server.secure_home(path.parent)  # root-only: the database holds every secret
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


class Stop(Exception):
    """SIGTERM or SIGHUP arrived: stop everything, as Ctrl-C does."""


@contextmanager
def _stop_on_signals() -> Iterator[None]:
    """Turn SIGTERM and SIGHUP into ``Stop`` while the body runs (Python's default for SIGTERM
    ends the process at once, leaving the server and the worker running, orphaned)."""
    def stop(signum: int, frame: object) -> None:
        for sig in previous:  # once: a second signal must not cut the clean-up short
            signal.signal(sig, signal.SIG_IGN)
        raise Stop(signal.Signals(signum).name)

    previous: dict = {}

    previous.update({sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGHUP)})
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@contextmanager
def _worker(limit: int) -> Iterator[subprocess.Popen]:
    """A process worker in a session of its own; stopped with its flow runs at exit."""
    proc = subprocess.Popen(server.worker_argv(limit=limit), env=server.worker_env(),
                            start_new_session=True)
    try:
        yield proc
    finally:
        stop_tree(proc, grace=15.0)


def _mark_runs_in_flight(reason: str) -> int:
    """Mark Crashed every run of the dapx pool still Running or Pending after its worker
    stopped (none should be: a flow run reports its own crash on SIGTERM); return how many."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (FlowRunFilter, FlowRunFilterState,
                                                FlowRunFilterStateType, WorkPoolFilter,
                                                WorkPoolFilterName)
    from prefect.client.schemas.objects import StateType
    from prefect.states import Crashed

    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(
                any_=[StateType.RUNNING, StateType.PENDING]))),
            work_pool_filter=WorkPoolFilter(name=WorkPoolFilterName(any_=[server.WORK_POOL])))
        for run in runs:
            client.set_flow_run_state(run.id, Crashed(message=reason), force=True)
    return len(runs)


def run_product(*, port: int = server.DEFAULT_PORT, with_lab: str = "auto",
                worker_limit: int = 4, database: str | None = None) -> int:
    """Run the product until Ctrl-C, SIGTERM or SIGHUP, on ``database`` (a URL from
    ``server.database_url``; None: SQLite); return 0 (or the worker's exit code when the
    worker stopped by itself)."""
    if database:  # the worker and its flow runs (DAPX's own store) use the same database
        os.environ[server.DATABASE_ENV] = database
    with _stop_on_signals():
        try:
            with ExitStack() as stack:
                return _run(stack, port, with_lab, worker_limit, database)
        except (KeyboardInterrupt, Stop) as why:
            print(f"dapx: stopped ({why or 'interrupted'})", flush=True)
            return 0


def _run(stack: ExitStack, port: int, with_lab: str, worker_limit: int,
         database: str | None) -> int:
    api_url = os.environ.get("PREFECT_API_URL")
    external = bool(api_url)
    if api_url:
        server.wait_healthy(api_url, timeout=10)
    else:
        api_url = stack.enter_context(
            server.prefect_server(port, log_path=_log_dir() / "server.log", database=database))
    # Subprocesses read the environment; this process's Prefect settings were loaded at
    # import, so point them at the server too (else the client starts its own).
    os.environ["PREFECT_API_URL"] = api_url
    stack.enter_context(temporary_settings(updates={PREFECT_API_URL: api_url}))
    if not external:  # our server: its URL and credential into the profile, and used here
        credential_file = server.connect_clients(api_url)
        stack.enter_context(server.use_credential(api_url, server.api_credential()))
        print(f"dapx: the API requires a login; the UI asks for the password in "
              f"{credential_file} (root only)")
    print(f"dapx: Prefect server and UI at {api_url.removesuffix('/api')}")
    server.register_blocks()
    server.ensure_work_pool()
    from dapx.deployments.automations import ensure_automations

    ensure_automations()
    if _want_lab(with_lab):
        from dapx.lab import estate
        from dapx.lab.register import register_lab_nodes

        if not any(n["state"] == "running" for n in estate.status()["nodes"].values()):
            stack.callback(estate.down)  # this command starts it: stop it at the end
        estate.up()
        print(f"dapx: lab up; node blocks: {', '.join(register_lab_nodes())}")
    from dapx.deployments.builtin import deploy_builtin

    from dapx.deployments.notify import deploy_notifications

    names = deploy_builtin() + deploy_notifications()
    print(f"dapx: {len(names)} deployments ready: {', '.join(names)}")
    stack.callback(_mark_runs_in_flight, "dapx up was stopped while this run was in flight")
    worker = stack.enter_context(_worker(worker_limit))
    print("dapx: worker started; Ctrl-C (or SIGTERM) stops everything", flush=True)
    return worker.wait()
