"""The migration side of the command line (M1-M4), and failover and failback (X5).

    dapx job create migration --source pve1 --guest 100 --dest pve3 --dest-vmid 9100 \\
        --memory 4096 --cores 4 --bridge-map vmbr0=vmbr1 --schedule "0 2 * * *" --force
    dapx migrate --source pve1 --guest 100 --dest pve2 --move [--plan]

A job is a deployment of ``vm-migration`` (a copy job on a schedule refreshes its copy each
run); ``dapx migrate`` runs the flow once, in this process, and prints its result. Bad input
is one line on stderr (exit 2) before anything is written or run.
"""

from __future__ import annotations

import argparse
import asyncio
import json

from dapx.errors import InputError

MIGRATION_OPTIONS = ("move", "transport", "target_storage", "storage_map", "nic_bridge",
                     "memory", "cores", "sockets", "cpu", "new_macs", "snapshot_first",
                     "keep_snapshots", "start_after", "restart", "force")
"""Options only a migration takes (other job kinds refuse them)."""


def add_migration_options(parser: argparse.ArgumentParser) -> None:
    """The options of a migration (``job create migration`` and ``migrate``)."""
    parser.add_argument("--move", action="store_true",
                        help="migration: move the guest (PVE's migration) instead of copying it")
    parser.add_argument("--transport", choices=["auto", "zfs", "btrfs", "vzdump"],
                        help="migration: how a copy's data travels (auto: by storage)")
    parser.add_argument("--target-storage", help="migration: destination storage for every disk")
    parser.add_argument("--storage-map", help="migration: source=destination storages, "
                        "e.g. local=local-zfs")
    parser.add_argument("--nic-bridge", help="migration: card=bridge, e.g. net1=vmbr2")
    parser.add_argument("--memory", type=int, help="migration: memory in MiB (16 or more)")
    parser.add_argument("--cores", type=int, help="migration: CPU cores")
    parser.add_argument("--sockets", type=int, help="migration: CPU sockets (VMs)")
    parser.add_argument("--cpu", help="migration: CPU type (VMs), e.g. host")
    parser.add_argument("--new-macs", action="store_true",
                        help="migration: new MAC addresses for a copy")
    parser.add_argument("--snapshot-first", action="store_true",
                        help="migration: take a Proxmox snapshot of the source first")
    parser.add_argument("--keep-snapshots", type=int,
                        help="migration: how many of those snapshots to keep (3)")
    parser.add_argument("--start-after", action="store_true",
                        help="migration: start the copy or the moved guest afterwards")
    parser.add_argument("--restart", action="store_true",
                        help="migration: move a running container in restart mode")
    parser.add_argument("--force", action="store_true",
                        help="migration: a copy may replace the guest at the target VMID "
                        "(kept until the new copy is complete)")


def migration_job(args: argparse.Namespace):  # noqa: ANN201 - a MigrationJob
    """The MigrationJob the options describe; InputError (one line) when they are wrong."""
    from dapx.core.migration_job import MigrationJob

    missing = [f"--{n}" for n, v in (("source", args.source), ("guest", args.guest),
                                      ("dest", args.dest)) if v is None]
    if missing:
        raise InputError(f"a migration needs {', '.join(missing)}")
    fields = {"source": args.source, "guest": args.guest, "destination": args.dest,
              "mode": "move" if args.move else "copy", "dest_vmid": args.dest_vmid,
              "transport": args.transport, "target_storage": args.target_storage,
              "storage_map": args.storage_map, "bridge_map": args.bridge_map,
              "nic_bridges": args.nic_bridge, "memory": args.memory, "cores": args.cores,
              "sockets": args.sockets, "cpu": args.cpu, "new_macs": args.new_macs,
              "snapshot_first": args.snapshot_first, "keep_snapshots": args.keep_snapshots,
              "start_after": args.start_after, "restart": args.restart, "force": args.force,
              "compression": args.compress, "bwlimit": args.bwlimit,
              "notify": getattr(args, "notify", None)}
    return MigrationJob.from_input(**{k: v for k, v in fields.items()
                                      if v is not None and v is not False})


def create_migration_job(args: argparse.Namespace, refuse) -> int:  # noqa: ANN001
    """``dapx job create migration``: a deployment of ``vm-migration``."""
    from dapx.deployments import jobs

    refuse(args, "migration", "dataset", "dest_dataset", "recursive", "method", "pool",
           "subfolder", "no_register", "cpu_host", "keep", "carry_keys")
    spec = migration_job(args)
    name = args.name or f"{spec.mode}-vm{spec.guest}-to-{spec.destination}"[:63].rstrip("-")
    full = jobs.create_job(name, "vm-migration", spec, schedule=args.schedule,
                           timezone=args.timezone, paused=args.paused, replace=args.replace,
                           site=args.site)
    print(f"job {full} saved" + (f", schedule {args.schedule}" if args.schedule else ""))
    return 0


def cmd_migrate(args: argparse.Namespace) -> int:
    """``dapx migrate``: run the flow once here; print its result (or its plan)."""
    from dapx.core.units import human_bytes
    from dapx.flows.migration import vm_migration

    spec = migration_job(args)
    result = asyncio.run(vm_migration(job=spec, dry_run=args.plan))
    if args.json:
        print(json.dumps(result.model_dump(mode="json"), indent=2))
        return 0
    what = "planned (dry run; see the plan artifact)" if result.dry_run else "done"
    print(f"{result.mode} of guest {result.guest} from {result.source} to {result.destination}"
          f"/{result.dest_vmid} by {result.transport}: {what}")
    if not result.dry_run:
        print(f"{human_bytes(result.bytes)} in {result.seconds:g} s; hardware changed: "
              f"{result.hardware_text}; " + ("started" if result.started else "not started"))
    return 0


def add_migrate_parser(sub: argparse._SubParsersAction) -> None:
    """Add ``dapx migrate`` to the top-level parser."""
    migrate = sub.add_parser("migrate", help="copy or move a guest once (M1-M3)")
    migrate.add_argument("--source", help="node the guest is on")
    migrate.add_argument("--guest", type=int, help="VMID of the guest")
    migrate.add_argument("--dest", help="destination node")
    migrate.add_argument("--dest-vmid", type=int, help="VMID on the destination")
    migrate.add_argument("--bridge-map", help="vmbr0=vmbr1,...")
    migrate.add_argument("--compress", choices=["lz4", "zstd", "gzip", "none"])
    migrate.add_argument("--bwlimit", help="bandwidth limit, e.g. 50M")
    migrate.add_argument("--plan", action="store_true", help="dry run: the plan only")
    migrate.add_argument("--json", action="store_true", help="print the result as JSON")
    add_migration_options(migrate)
    migrate.set_defaults(func=cmd_migrate)


def cmd_failover(args: argparse.Namespace) -> int:
    """``dapx failover JOB``: run the failover flow here; print what it did."""
    from dapx.deployments.jobs import validate_job_name
    from dapx.flows.failover import failover

    result = asyncio.run(failover(job_name=validate_job_name(args.job),
                                  source_down=args.source_down))
    if args.json:
        print(json.dumps(result.model_dump(mode="json"), indent=2))
        return 0
    print(f"guest {result.guest} of {result.source} {result.started} on {result.destination} "
          f"as {result.dest_vmid} ({result.source_state}); last copy: {result.last_copy}; "
          f"job {result.job} {result.schedule}; config {result.config}")
    return 0


def add_failover_parser(sub: argparse._SubParsersAction) -> None:
    """Add ``dapx failover`` to the top-level parser."""
    parser = sub.add_parser("failover", help="start a replica job's copy as the live guest "
                            "and pause the job (X5)")
    parser.add_argument("job", help="the replica job (zfs or btrfs) whose copy starts")
    parser.add_argument("--source-down", action="store_true",
                        help="the source node is down: start the replica from its newest "
                        "snapshot without asking the source (refused while the guest runs there)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.set_defaults(func=cmd_failover)


def cmd_failback(args: argparse.Namespace) -> int:
    """``dapx failback JOB``: run the failback flow here; print what it did."""
    from dapx.deployments.jobs import validate_job_name
    from dapx.flows.failback import failback

    from dapx.core.validate import validate_storage_id

    storage = validate_storage_id(args.storage) if args.storage else ""
    result = asyncio.run(failback(job_name=validate_job_name(args.job), storage=storage))
    if args.json:
        print(json.dumps(result.model_dump(mode="json"), indent=2))
        return 0
    print(f"guest {result.guest} {result.started} on {result.source} again (from "
          f"{result.destination}/{result.dest_vmid}); copies: {result.copies}; original: "
          f"{result.original}; live copy: {result.live_copy}; job {result.job} "
          f"{result.schedule}, replica: {result.replica}")
    return 0


def add_failback_parser(sub: argparse._SubParsersAction) -> None:
    """Add ``dapx failback`` to the top-level parser."""
    parser = sub.add_parser("failback", help="bring a failed-over guest home to its repaired "
                            "node, keep the original aside, resume the job (X5)")
    parser.add_argument("job", help="the replica job that was failed over")
    parser.add_argument("--storage", default="", help="PVE storage at home for the disks "
                        "(default: the original guest's)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.set_defaults(func=cmd_failback)
