"""The `dapx` command: what Prefect's own CLI does not cover.

    dapx up                          run the product (server, blocks, lab if no nodes, worker)
    dapx init                        create the orchestrator's SSH key pair (private half in a block)
    dapx node add|test|list|remove   node blocks (N1, N2)
    dapx lab up|down|status|reset|ssh|register   the simulated estate (X8)
    dapx snapshot list|create|delete|rollback|policy|retention   snapshots (S1-S4)
    dapx notify add|list|test|remove|settings    notification targets (A1-A4)
    dapx status                      protection state of every guest (X4)
    dapx backup list|restore         browse and restore PBS backups (B2)
    dapx migrate                     copy or move a guest once (M1-M3)
    dapx failover JOB [--source-down]   start a replica job's copy as the live guest (X5)
    dapx failback JOB [--storage S]     bring it home, keep the original aside, resume (X5)
    dapx worker --queue SITE         a process worker for one site's jobs (P6)
    dapx install-service [--worker]  systemd units for the product or a worker (P6)

A user mistake prints one line on stderr and exits 2; no traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Callable, Sequence

from dapx.errors import DapxError


def _print_json(data: object) -> None:
    print(json.dumps(data, indent=2, sort_keys=True, default=str))


# --- lab --------------------------------------------------------------------------------------

def cmd_lab(args: argparse.Namespace) -> int:
    from dapx.lab import estate

    if args.lab_cmd == "up":
        state = estate.up()
        _print_lab_status(estate.status(), as_json=False)
        return 0 if state else 1
    if args.lab_cmd == "down":
        estate.down(purge=args.purge)
        print("lab: down" + (" (lab directory removed)" if args.purge else ""))
        return 0
    if args.lab_cmd == "reset":
        estate.reset()
        _print_lab_status(estate.status(), as_json=False)
        return 0
    if args.lab_cmd == "status":
        _print_lab_status(estate.status(), as_json=args.json)
        return 0
    if args.lab_cmd == "ssh":
        argv = estate.ssh_argv(args.node, list(args.command) or None)
        os.execvp(argv[0], argv)
    if args.lab_cmd == "register":
        from dapx.lab.register import register_lab_nodes

        for name in register_lab_nodes():
            print(f"registered node block {name}")
        return 0
    raise DapxError(f"unknown lab command {args.lab_cmd!r}")


def _print_lab_status(status: dict, *, as_json: bool) -> None:
    if as_json:
        _print_json(status)
        return
    nodes = status.get("nodes", {})
    if not nodes:
        print("lab: not running")
        return
    print(f"{'NODE':<6} {'KIND':<4} {'ADDRESS':<15} {'STATE':<8} API")
    for node in nodes.values():
        print(f"{node['name']:<6} {node['kind']:<4} {node['address']:<15} "
              f"{node['state']:<8} {node.get('api_url', '')}")


# --- nodes ------------------------------------------------------------------------------------

def cmd_node(args: argparse.Namespace) -> int:
    from dapx.blocks import manage as nodes_admin

    if args.node_cmd == "add":
        block = nodes_admin.add_node(
            name=args.name, host=args.host, ssh_port=args.port, ssh_user=args.user,
            key_file=args.key_file, kind=args.kind, storage_kind=args.storage,
            api_token_id=args.token_id, api_token_secret_file=args.token_secret_file,
            ssh_host_key=nodes_admin.host_key_argument(args.host_key),
            tls_fingerprint=args.tls_fingerprint, overwrite=args.overwrite,
        )
        print(f"node {block} saved; run `dapx node test {args.name}` to pin its keys")
        return 0
    if args.node_cmd == "test":
        from dapx.flows.nodes import run_node_check

        nodes_admin.load_node(args.name)
        print(run_node_check(args.name))
        return 0
    if args.node_cmd == "list":
        rows = nodes_admin.list_nodes()
        if args.json:
            _print_json(rows)
        else:
            print(f"{'NAME':<16} {'KIND':<4} {'STORAGE':<7} {'HOST':<24} PINNED")
            for r in rows:
                print(f"{r['name']:<16} {r['kind']:<4} {r['storage_kind']:<7} "
                      f"{r['host'] + ':' + str(r['ssh_port']):<24} {r['pinned']}")
        return 0
    if args.node_cmd == "remove":
        nodes_admin.remove_node(args.name)
        print(f"node {args.name} removed")
        return 0
    raise DapxError(f"unknown node command {args.node_cmd!r}")


def cmd_init(args: argparse.Namespace) -> int:
    from dapx.blocks import manage as nodes_admin
    from dapx.deployments import server
    from dapx.deployments.automations import ensure_automations

    server.prepare_clients()  # the API credential exists before any secret is stored
    public = nodes_admin.init_orchestrator_key(overwrite=args.overwrite)
    ensure_automations()
    print("orchestrator key ready; authorise this public key for root on each node:")
    print(public)
    return 0


def cmd_up(args: argparse.Namespace) -> int:
    from dapx.deployments.server import database_url
    from dapx.deployments.up import run_product

    database = database_url(args.database)
    if args.database and database and "@" in database:
        from sqlalchemy.engine import make_url

        if make_url(database).password:
            print("dapx: warning: a password on the command line is visible to every user "
                  "of this host; set DAPX_DATABASE_URL in the environment (or "
                  "/etc/dapx/dapx.env for the service) instead", file=sys.stderr)
    return run_product(port=args.port, with_lab=args.lab, worker_limit=args.limit,
                       database=database)


def cmd_worker(args: argparse.Namespace) -> int:
    from dapx.deployments.service import run_worker

    run_worker(args.queue or [], args.limit, args.name)
    return 0  # not reached: the worker replaces this process


def cmd_install_service(args: argparse.Namespace) -> int:
    from dapx.deployments.service import install

    if args.queue and not args.worker:
        raise DapxError("--queue is for a worker unit: add --worker")
    for line in install(worker=args.worker, queue=args.queue, limit=args.limit,
                        port=args.port, enable=not args.no_enable):
        print(line)
    return 0


# --- parser -----------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dapx", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)

    up = sub.add_parser("up", help="run the product: Prefect server, blocks, deployments, worker")
    up.add_argument("--port", type=int, default=4200, help="Prefect server port (4200)")
    up.add_argument("--lab", choices=["auto", "yes", "no"], default="auto",
                    help="start the lab: auto = only when no real nodes are configured")
    up.add_argument("--limit", type=int, default=4, help="flow runs at once in the worker (4)")
    up.add_argument("--database", metavar="URL",
                    help="PostgreSQL for Prefect's server and DAPX's store, e.g. "
                         "postgresql+asyncpg://dapx:PASSWORD@db:5432/dapx (default: "
                         "$DAPX_DATABASE_URL, else SQLite in the Prefect home)")
    up.set_defaults(func=cmd_up)

    worker = sub.add_parser("worker", help="run a process worker on the dapx pool (prefect "
                            "worker start with the product's settings)")
    worker.add_argument("--queue", action="append", metavar="SITE",
                        help="run only this site's jobs (repeat; default: every queue)")
    worker.add_argument("--limit", type=int, default=4, help="flow runs at once (4)")
    worker.add_argument("--name", help="worker name shown in the UI (default: Prefect's)")
    worker.set_defaults(func=cmd_worker)

    service = sub.add_parser("install-service", help="write the systemd unit of the product "
                             "(dapx up) or of a worker")
    service.add_argument("--worker", action="store_true", help="a worker unit, not the product")
    service.add_argument("--queue", help="the worker's site (work queue)")
    service.add_argument("--limit", type=int, default=4, help="worker: flow runs at once (4)")
    service.add_argument("--port", type=int, default=4200, help="product: server port (4200)")
    service.add_argument("--no-enable", action="store_true",
                         help="write and verify the unit, do not enable or start it")
    service.set_defaults(func=cmd_install_service)

    init = sub.add_parser("init", help="create the orchestrator's SSH key pair")
    init.add_argument("--overwrite", action="store_true", help="replace an existing key")
    init.set_defaults(func=cmd_init)

    node = sub.add_parser("node", help="manage node blocks")
    nsub = node.add_subparsers(dest="node_cmd", required=True)
    add = nsub.add_parser("add", help="register a node (N1)")
    add.add_argument("name", help="block name, e.g. pve-node-01")
    add.add_argument("--host", required=True, help="hostname or IP address")
    add.add_argument("--port", type=int, default=22, help="SSH port (22)")
    add.add_argument("--user", default="root", help="SSH user (root)")
    add.add_argument("--key-file", help="SSH private key file (default: the orchestrator key)")
    add.add_argument("--kind", choices=["pve", "pbs"], default="pve")
    add.add_argument("--storage", choices=["zfs", "btrfs", "other"], default="zfs")
    add.add_argument("--token-id", help="API token id, e.g. root@pam!dapx")
    add.add_argument("--token-secret-file",
                     help="file holding the API token secret ('-' reads stdin)")
    add.add_argument("--host-key", metavar="KEY",
                     help="pin the node's SSH host public key now, checked out of band: the "
                          "line ('ssh-ed25519 AAAA...') or a .pub file holding it")
    add.add_argument("--tls-fingerprint", metavar="SHA256",
                     help="pin the API certificate's SHA-256 fingerprint now, checked out of "
                          "band (pvenode cert info / proxmox-backup-manager cert info)")
    add.add_argument("--overwrite", action="store_true", help="replace an existing node block")
    test = nsub.add_parser("test", help="test SSH and API, pin host key and TLS fingerprint (N2)")
    test.add_argument("name")
    lst = nsub.add_parser("list", help="list node blocks")
    lst.add_argument("--json", action="store_true")
    rm = nsub.add_parser("remove", help="delete a node block")
    rm.add_argument("name")
    node.set_defaults(func=cmd_node)

    lab = sub.add_parser("lab", help="the simulated Proxmox estate (root)")
    lsub = lab.add_subparsers(dest="lab_cmd", required=True)
    lsub.add_parser("up", help="build and start the lab (idempotent)")
    down = lsub.add_parser("down", help="stop the lab and remove everything it made")
    down.add_argument("--purge", action="store_true",
                      help="also delete the lab directory (keys, images, certificates)")
    lsub.add_parser("reset", help="down, then up")
    st = lsub.add_parser("status", help="nodes, addresses, states")
    st.add_argument("--json", action="store_true")
    ssh = lsub.add_parser("ssh", help="run a command on a lab node over SSH")
    ssh.add_argument("node")
    ssh.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND...")
    lsub.add_parser("register", help="save the lab's nodes as node blocks")
    lab.set_defaults(func=cmd_lab)

    _add_job_parser(sub)
    _add_snapshot_parser(sub)
    _add_notify_parsers(sub)
    _add_backup_parser(sub)
    _add_migrate_parser(sub)
    return parser


def _add_job_parser(sub: argparse._SubParsersAction) -> None:
    from dapx.deployments.cli import add_job_parser

    add_job_parser(sub)


def _add_snapshot_parser(sub: argparse._SubParsersAction) -> None:
    from dapx.deployments.snapshot_cli import add_snapshot_parser

    add_snapshot_parser(sub)


def _add_notify_parsers(sub: argparse._SubParsersAction) -> None:
    from dapx.deployments.notify_cli import add_notify_parsers

    add_notify_parsers(sub)


def _add_backup_parser(sub: argparse._SubParsersAction) -> None:
    from dapx.deployments.pbs_cli import add_backup_parser

    add_backup_parser(sub)


def _add_migrate_parser(sub: argparse._SubParsersAction) -> None:
    from dapx.deployments.migration_cli import (add_failback_parser, add_failover_parser,
                                                add_migrate_parser)

    add_migrate_parser(sub)
    add_failover_parser(sub)
    add_failback_parser(sub)


def _use_running_server() -> None:
    """With no Prefect API configured, talk to the server `dapx up` runs on 127.0.0.1:4200
    when it answers, instead of Prefect's in-process server on the same SQLite file."""
    from prefect.settings import PREFECT_API_URL

    from dapx.deployments.server import DEFAULT_PORT, is_healthy, use_saved_credential

    use_saved_credential()
    if os.environ.get("PREFECT_API_URL") or PREFECT_API_URL.value():
        return
    url = f"http://127.0.0.1:{DEFAULT_PORT}/api"
    if is_healthy(url):
        os.environ["PREFECT_API_URL"] = url
        from prefect.settings import temporary_settings

        temporary_settings(updates={PREFECT_API_URL: url}).__enter__()  # for this process


QUIET_EXEMPT = ("up", "lab", "worker")
"""Commands whose Prefect console logs stay on: they run the server or workers."""


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `dapx` console script."""
    # Prefect's server would send usage telemetry out; DAPX sends nothing anywhere unasked.
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.cmd not in QUIET_EXEMPT:
        # Flows a command runs in this process log to the run (the UI), not to the terminal:
        # the command prints its result, or its error as one line.
        os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "CRITICAL")
        _quiet_exit_sends()
    if args.cmd not in ("up", "lab"):
        _use_running_server()
    if getattr(args, "command", None) and args.command[:1] == ["--"]:
        args.command = args.command[1:]
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        if args.cmd != "lab":  # the lab commands never import Prefect (2-3 s saved)
            from dapx.ui_extensions.logs import quiet_user_errors

            quiet_user_errors()
        return func(args)
    except DapxError as exc:
        print(f"dapx: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # Prefect's server unreachable or refusing us: one line too
        problem = _prefect_problem(exc)
        if problem is None:
            raise
        print(f"dapx: error: {problem}", file=sys.stderr)
        return 2


def _quiet_exit_sends() -> None:
    """As a command exits, Prefect sends what it still holds for the server (the event that
    loading a node block emits...) and its workers say "Still processing items: 1 items
    remaining..." on stderr, through loggers named after them that have no handler: after a
    one-line error, a second line that means nothing to the user. The items are still sent."""
    import logging

    for service in ("EventsWorker", "APILogWorker"):
        logging.getLogger(service).addHandler(logging.NullHandler())


def _prefect_problem(exc: BaseException) -> str | None:
    """One line for a Prefect API that cannot be used (nobody answers, login refused), or
    None when ``exc`` is something else (a bug keeps its traceback)."""
    import httpx

    from dapx.deployments.server import prefect_api_url

    url = prefect_api_url() or "the Prefect API URL"
    while exc is not None and not isinstance(exc, httpx.HTTPError):
        exc = exc.__cause__ or exc.__context__
    if isinstance(exc, httpx.TransportError):
        return (f"no Prefect server answers at {url} ({type(exc).__name__}); start the "
                "product with `dapx up` (or ./scripts/up.sh), or point PREFECT_API_URL at "
                "a running server")
    if isinstance(exc, httpx.HTTPStatusError) and exc.response.status_code in (401, 403):
        return (f"the Prefect server at {url} refused the login ({exc.response.status_code}); "
                "the credential is in $PREFECT_HOME/dapx/api-auth on the server's host: put "
                "it in PREFECT_API_AUTH_STRING")
    return None


if __name__ == "__main__":
    sys.exit(main())
