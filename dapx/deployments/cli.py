"""`dapx job create|list|run|remove`: jobs as Prefect deployments (R1, R2, R4, M4)."""

from __future__ import annotations

import argparse
import json
import re

from pydantic import ValidationError

from dapx.core.types import validation_message
from dapx.errors import InputError


def cmd_job(args: argparse.Namespace) -> int:
    from dapx.deployments import jobs

    if args.job_cmd == "create":
        return _create(args)
    if args.job_cmd == "list":
        rows = jobs.list_jobs()
        if args.json:
            print(json.dumps(rows, indent=2, default=str))
            return 0
        print(f"{'JOB':<24} {'FLOW':<16} {'SCHEDULE':<28} {'SITE':<12} STATE")
        for r in rows:
            state = "paused" if r["paused"] else ("active" if r["schedule"] != "-" else "-")
            print(f"{r['name']:<24} {r['flow']:<16} {r['schedule']:<28} {r['site']:<12} "
                  f"{state}")
        return 0
    if args.job_cmd == "run":
        return _run(args)
    if args.job_cmd == "remove":
        jobs.remove_job(args.name)
        print(f"job {args.name} removed")
        return 0
    if args.job_cmd in ("pause", "resume"):
        changed = jobs.set_job_paused(args.name, args.job_cmd == "pause")
        done = "paused" if args.job_cmd == "pause" else "active"
        print(f"job {args.name} {done}" + ("" if changed else " already"))
        return 0
    raise InputError(f"unknown job command {args.job_cmd!r}")


def _run(args: argparse.Namespace) -> int:
    """Start a run; with --plan or --wait, wait for it and print its plan or result table;
    exit 1 when the run did not complete (its state message on stderr, one line)."""
    import sys

    from dapx.deployments import jobs

    params = {"dry_run": True} if args.plan else {}
    if args.force:
        params["force"] = True
    run_id = jobs.run_job(args.name, parameters=params)
    if not (args.plan or args.wait):
        print(f"flow run {run_id} scheduled now")
        return 0
    state = jobs.wait_for_run(run_id)
    kind = "markdown" if args.plan else "table"
    for artifact in jobs.run_artifacts(run_id, kind):
        print(artifact.data if kind == "markdown" else _text_table(artifact))
    if not state.is_completed():
        message = " ".join((state.message or "").split())
        print(f"dapx: flow run {run_id} {state.type.value.lower()}: {message}", file=sys.stderr)
        return 1
    print(f"flow run {run_id} completed")
    return 0


def _text_table(artifact) -> str:  # noqa: ANN001 - a Prefect table artifact
    """A table artifact as aligned text, its description first."""
    rows = json.loads(artifact.data) if isinstance(artifact.data, str) else artifact.data
    if not rows:
        return artifact.description or ""
    columns = list(rows[0])
    cells = [[str(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    lines = [artifact.description or ""]
    lines += ["  ".join(c.ljust(w) for c, w in zip(columns, widths))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)


PBS_OPTIONS = ("node", "guests", "storage", "dest_storage", "mode", "pbs", "start", "unique",
               "keep_last", "keep_hourly", "keep_daily", "keep_weekly", "keep_monthly",
               "keep_yearly")


FLEET_OPTIONS = ("route", "guests", "pve_pool", "tag", "storage_kind", "vmid_offset",
                 "per_source", "per_dest")
"""Options only fleet jobs take."""


def _kind_options(kind: str) -> tuple[str, ...]:
    """The options only some job kinds take that ``kind`` does not (refused, never ignored)."""
    from dapx.deployments.migration_cli import MIGRATION_OPTIONS

    special = {"backup": PBS_OPTIONS, "recovery": PBS_OPTIONS, "migration": MIGRATION_OPTIONS,
               "fleet": FLEET_OPTIONS}
    own = set(special.get(kind, ()))
    return tuple(dict.fromkeys(n for k, names in special.items() if k != kind
                               for n in names if n not in own))


def _create(args: argparse.Namespace) -> int:
    from dapx.deployments import jobs, migration_cli, pbs_cli

    # A bad name, cron line, time zone or site is said before any node is looked at.
    jobs.check_job_options(args.name, args.schedule, args.timezone, args.site)
    _refuse(args, args.kind, *_kind_options(args.kind))
    if args.kind in ("backup", "recovery"):
        create = pbs_cli.create_backup_job if args.kind == "backup" \
            else pbs_cli.create_recovery_job
        return create(args, _refuse)
    if args.kind == "migration":
        _require(args, args.kind, "source", "guest", "dest")
        return migration_cli.create_migration_job(args, _refuse)
    if args.kind == "fleet":
        from dapx.deployments.fleet_cli import create_fleet

        return create_fleet(args)
    _require(args, args.kind, "source", "dest")
    if args.kind == "dataset":
        return _create_dataset(args)
    return _create_replica(args)


def _require(args: argparse.Namespace, kind: str, *names: str) -> None:
    """argparse cannot make options required per kind: InputError naming the missing ones."""
    missing = [f"--{n.replace('_', '-')}" for n in names if getattr(args, n) is None]
    if missing:
        raise InputError(f"job create {kind} needs {', '.join(missing)}")


def _refuse(args: argparse.Namespace, kind: str, *names: str) -> None:
    """Options of the other kind are refused, not silently ignored."""
    given = [f"--{n.replace('_', '-')}" for n in names if getattr(args, n) not in (None, False)]
    if given:
        raise InputError(f"job create {kind} does not take {', '.join(given)}")


def _create_dataset(args: argparse.Namespace) -> int:
    from dapx.core.jobspec import DatasetJob
    from dapx.deployments import jobs

    _require(args, "dataset", "dataset", "dest_dataset")
    _refuse(args, "dataset", "guest", "method", "pool", "subfolder", "dest_vmid",
            "no_register", "cpu_host", "bridge_map", "carry_keys", *FLEET_OPTIONS)
    fields = {"source": args.source, "dataset": args.dataset, "destination": args.dest,
              "dest_dataset": args.dest_dataset, "recursive": args.recursive,
              "compression": args.compress, "keep": args.keep, "bwlimit": args.bwlimit,
              "notify": args.notify}
    spec = DatasetJob.from_input(**{k: v for k, v in fields.items() if v is not None})
    default = re.sub(r"[^a-z0-9-]+", "-", f"ds-{spec.dataset}-to-{spec.destination}".lower())
    name = args.name or default.strip("-")[:63].rstrip("-")
    full = jobs.create_job(name, "dataset-replica", spec, schedule=args.schedule,
                           timezone=args.timezone, paused=args.paused, replace=args.replace,
                           site=args.site)
    print(f"job {full} saved" + (f", schedule {args.schedule}" if args.schedule else ""))
    return 0


def _create_replica(args: argparse.Namespace) -> int:
    from dapx.core.jobspec import ReplicaJob
    from dapx.deployments import jobs

    _require(args, "replica", "guest")
    _refuse(args, "replica", "dataset", "dest_dataset", "recursive")
    fields = {
        "source": args.source, "guest": args.guest, "destination": args.dest,
        "dest_pool": args.pool, "subfolder": args.subfolder, "dest_vmid": args.dest_vmid,
        "compression": args.compress, "keep": args.keep, "register_vm": not args.no_register,
        "cpu_host": args.cpu_host, "bridge_map": args.bridge_map or {}, "bwlimit": args.bwlimit,
        "notify": args.notify, "carry_keys": args.carry_keys,
    }
    try:
        spec = ReplicaJob(**{k: v for k, v in fields.items() if v is not None})
    except ValidationError as exc:
        raise InputError(validation_message(exc)) from None
    method = args.method or _storage_kind(spec.source)
    if method not in ("zfs", "btrfs"):
        raise InputError(f"node {spec.source} keeps guests on {method!r} storage; "
                         "use a replica through PBS (recovery job) for it")
    name = args.name or f"vm{spec.guest}-to-{spec.destination}"
    full = jobs.create_job(name, f"{method}-replica", spec, schedule=args.schedule,
                           timezone=args.timezone, paused=args.paused, replace=args.replace,
                           site=args.site)
    print(f"job {full} saved" + (f", schedule {args.schedule}" if args.schedule else ""))
    return 0


def _storage_kind(node: str) -> str:
    from dapx.blocks.manage import load_node

    return load_node(node).storage_kind


def _add_pbs_job_options(create: argparse.ArgumentParser) -> None:
    from dapx.deployments.pbs_cli import add_pbs_job_options

    add_pbs_job_options(create)


def _add_migration_job_options(create: argparse.ArgumentParser) -> None:
    from dapx.deployments.migration_cli import add_migration_options

    add_migration_options(create)


def add_job_parser(sub: argparse._SubParsersAction) -> None:
    """Add the `job` command group to the top-level parser."""
    job = sub.add_parser("job", help="scheduled jobs (Prefect deployments)")
    jsub = job.add_subparsers(dest="job_cmd", required=True)

    create = jsub.add_parser("create", help="create a job (or replace one, with --replace)")
    create.add_argument("kind", choices=["replica", "dataset", "backup", "recovery", "migration",
                                         "fleet"],
                        help="replica: a guest's disks; dataset: a plain ZFS dataset; "
                        "backup: guests to PBS with retention; recovery: a replica through PBS; "
                        "migration: copy or move a guest, with hardware changes; "
                        "fleet: a set of guests, each its own replica run")
    create.add_argument("--name", help="job name (default vm<guest>-to-<dest>, "
                        "ds-<dataset>-to-<dest>)")
    create.add_argument("--source", help="source node (fleet: nodes, e.g. pve1,pve2; backup "
                        "takes --node)")
    create.add_argument("--guest", type=int, help="replica, recovery, migration: the guest's "
                        "VMID")
    create.add_argument("--dataset", help="dataset: the dataset on the source (rpool/data/share)")
    create.add_argument("--dest", help="destination node")
    create.add_argument("--dest-dataset",
                        help="dataset: the dataset on the destination (rpool/backup/share)")
    create.add_argument("--recursive", action="store_true",
                        help="dataset: also replicate every child dataset")
    create.add_argument("--method", choices=["zfs", "btrfs"],
                        help="default: the source node's storage kind")
    create.add_argument("--pool", help="destination pool (rpool)")
    create.add_argument("--subfolder", help="destination sub-folder (replica)")
    create.add_argument("--dest-vmid", type=int, help="VMID on the destination")
    create.add_argument("--schedule", help='cron line, e.g. "*/15 * * * *"')
    create.add_argument("--compress", choices=["lz4", "zstd", "gzip", "none"])
    create.add_argument("--keep", type=int, help="snapshots to keep on each side (3)")
    create.add_argument("--no-register", action="store_true", help="do not register the VM")
    create.add_argument("--cpu-host", action="store_true", help="set cpu: host on the replica")
    create.add_argument("--bridge-map", help="vmbr0=vmbr1,...")
    create.add_argument("--carry-key", action="append", dest="carry_keys", metavar="KEY",
                        help="replica: keep this config key although it runs code as root or "
                             "passes a host device through (hookscript, hostpci0, "
                             "lxc.mount.entry...); repeat for each key")
    create.add_argument("--bwlimit", help="bandwidth limit, e.g. 50M")
    create.add_argument("--notify", choices=["always", "failure", "daily", "never"])
    create.add_argument("--paused", action="store_true", help="create with the schedule paused")
    create.add_argument("--timezone", help="time zone of the schedule (IANA name, e.g. "
                        "Europe/Rome; default: this machine's)")
    create.add_argument("--replace", action="store_true",
                        help="replace an existing job's options (a paused schedule stays paused)")
    _add_pbs_job_options(create)
    _add_migration_job_options(create)
    create.add_argument("--site", help="work queue of the dapx pool whose workers run the job "
                        "(e.g. site-a; default: the pool's default queue)")
    _add_fleet_options(create)

    lst = jsub.add_parser("list", help="list jobs")
    lst.add_argument("--json", action="store_true")
    run = jsub.add_parser("run", help="run a job now")
    run.add_argument("name")
    run.add_argument("--plan", action="store_true",
                     help="dry run: wait for the run and print its plan; nothing changes")
    run.add_argument("--wait", action="store_true",
                     help="wait for the run, print its result table, exit 1 if it failed")
    run.add_argument("--force", action="store_true", help="allow rolling back a diverged target")
    rm = jsub.add_parser("remove", help="delete a job")
    rm.add_argument("name")
    pause = jsub.add_parser("pause", help="stop a job's scheduled runs (a run by hand still runs)")
    pause.add_argument("name")
    resume = jsub.add_parser("resume", help="start a job's scheduled runs again, however it "
                             "was paused (UI, prefect, a failover)")
    resume.add_argument("name")
    job.set_defaults(func=cmd_job)


def _add_fleet_options(create: argparse.ArgumentParser) -> None:
    """Options of `dapx job create fleet` (--source may list several nodes there)."""
    fleet = create.add_argument_group("fleet jobs (--source pve1[,pve2] --dest pve3)")
    fleet.add_argument("--route", action="append", metavar="SRC=DST",
                       help="fleet: the guests of SRC go to DST (repeat; adds to --source/--dest)")
    fleet.add_argument("--pve-pool", help="fleet: only guests in this PVE pool")
    fleet.add_argument("--tag", help="fleet: only guests with this PVE tag")
    fleet.add_argument("--storage-kind", choices=["replicable", "zfs", "btrfs"],
                       help="fleet: replicable (default: every guest on ZFS or BTRFS), zfs, btrfs")
    fleet.add_argument("--vmid-offset", type=int,
                       help="fleet: destination VMID = source VMID + offset (0)")
    fleet.add_argument("--per-source", type=int,
                       help="fleet: at most N guests at once per source node (the node's limit)")
    fleet.add_argument("--per-dest", type=int,
                       help="fleet: at most N guests at once per destination node")
