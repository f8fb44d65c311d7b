"""The PBS side of the command line (B1, B2, R5).

    dapx job create backup --node pve1 --guests 100,101 --storage pbs --keep-last 7 ...
    dapx job create recovery --source pve3 --guest 300 --dest pve1 --dest-vmid 9300 ...
    dapx backup list [--node N] [--storage S] [--guest N] [--json]
    dapx backup restore --storage pbs --backup vm/300/latest --dest pve1 --dest-storage local

Job kinds become deployments of ``pbs-backup`` / ``pbs-recovery``; ``backup list`` and
``backup restore`` run their flow in this process and print its result. Bad input is one
line (exit 2) before anything is written or run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re

from dapx.errors import InputError

KEEP_OPTIONS = ("keep_last", "keep_hourly", "keep_daily", "keep_weekly", "keep_monthly",
                "keep_yearly")


def add_keep_options(parser: argparse.ArgumentParser) -> None:
    """--keep-last ... --keep-yearly (PBS's keep options)."""
    for option in KEEP_OPTIONS:
        period = option.split("_")[1]
        parser.add_argument("--" + option.replace("_", "-"), type=int,
                            help=f"backup/recovery: PBS retention, keep-{period}")


def retention_of(args: argparse.Namespace) -> dict[str, int] | None:
    """The keep counts given (None when none was)."""
    counts = {k: getattr(args, k) for k in KEEP_OPTIONS if getattr(args, k) is not None}
    return counts or None


def _guests(text: str | None) -> list[int]:
    if not text:
        return []
    if not re.fullmatch(r"[0-9]+(,[0-9]+)*", text.strip()):
        raise InputError(f"--guests {text!r} must be VMIDs separated by commas, e.g. 100,101")
    return [int(v) for v in text.strip().split(",")]


def _save(name: str, flow: str, spec, args: argparse.Namespace) -> int:  # noqa: ANN001
    from dapx.deployments import jobs

    full = jobs.create_job(name, flow, spec, schedule=args.schedule, timezone=args.timezone,
                           paused=args.paused, replace=args.replace, site=args.site)
    print(f"job {full} saved" + (f", schedule {args.schedule}" if args.schedule else ""))
    return 0


def create_backup_job(args: argparse.Namespace, refuse) -> int:  # noqa: ANN001
    """``dapx job create backup``."""
    from dapx.core.jobspec import BackupJob

    if not args.node or not args.storage:
        raise InputError("job create backup needs --node and --storage")
    refuse(args, "backup", "source", "dest", "guest", "dataset", "dest_dataset", "recursive",
           "method", "pool", "subfolder", "dest_vmid", "no_register", "cpu_host",
           "bridge_map", "bwlimit", "compress", "keep", "dest_storage", "start", "unique",
           "carry_keys")
    fields = {"node": args.node, "guests": _guests(args.guests), "storage": args.storage,
              "retention": retention_of(args) or {}, "mode": args.mode, "pbs_node": args.pbs,
              "notify": args.notify}
    spec = BackupJob.from_input(**{k: v for k, v in fields.items() if v is not None})
    which = "-".join(map(str, spec.guests)) if spec.guests else "all"
    name = args.name or f"backup-{spec.node}-{which}"[:63].rstrip("-")
    return _save(name, "pbs-backup", spec, args)


def create_recovery_job(args: argparse.Namespace, refuse) -> int:  # noqa: ANN001
    """``dapx job create recovery``."""
    from dapx.core.jobspec import RecoveryJob

    missing = [f"--{n.replace('_', '-')}" for n in ("source", "guest", "dest", "storage",
                                                     "dest_storage") if getattr(args, n) is None]
    if missing:
        raise InputError(f"job create recovery needs {', '.join(missing)}")
    refuse(args, "recovery", "node", "guests", "dataset", "dest_dataset", "recursive",
           "method", "pool", "subfolder", "no_register", "cpu_host", "bwlimit", "compress",
           "keep")
    fields = {"source": args.source, "guest": args.guest, "destination": args.dest,
              "dest_vmid": args.dest_vmid, "storage": args.storage,
              "dest_storage": args.dest_storage, "bridge_map": args.bridge_map,
              "start": args.start, "unique": args.unique, "mode": args.mode,
              "retention": retention_of(args), "pbs_node": args.pbs, "notify": args.notify,
              "carry_keys": args.carry_keys}
    spec = RecoveryJob.from_input(**{k: v for k, v in fields.items() if v is not None})
    name = args.name or f"vm{spec.guest}-to-{spec.destination}-pbs"
    return _save(name, "pbs-recovery", spec, args)


def add_pbs_job_options(create: argparse.ArgumentParser) -> None:
    """The options only backup and recovery jobs take."""
    create.add_argument("--node", help="backup: node to ask for the guests")
    create.add_argument("--guests", help="backup: VMIDs, e.g. 100,101 (default: every guest "
                        "of --node); fleet: only these guests")
    create.add_argument("--storage", help="backup/recovery: the PVE storage of type pbs")
    create.add_argument("--dest-storage", help="recovery: storage for the copy's disks")
    create.add_argument("--mode", choices=["snapshot", "suspend", "stop"],
                        help="backup/recovery: vzdump mode (snapshot)")
    create.add_argument("--pbs", help="backup/recovery: the PBS node block (default: found "
                        "by the storage's server)")
    create.add_argument("--start", action="store_true", help="recovery: start the copy")
    create.add_argument("--unique", action="store_true", help="recovery: new MAC addresses")
    add_keep_options(create)


# -----------------------------------------------------------------------------------------------
# dapx backup list | restore


def _default_node() -> str:
    from dapx.blocks.manage import list_nodes

    names = [r["name"] for r in list_nodes() if r["kind"] == "pve"]
    if not names:
        raise InputError("no PVE node block; add one with `dapx node add` or pass --node")
    return names[0]


def cmd_backup(args: argparse.Namespace) -> int:
    """``dapx backup list`` / ``dapx backup restore``."""
    if args.backup_cmd == "list":
        return _list(args)
    if args.backup_cmd == "restore":
        return _restore(args)
    raise InputError(f"unknown backup command {args.backup_cmd!r}")


def _list(args: argparse.Namespace) -> int:
    from dapx.core.validate import validate_node_name, validate_storage_id, validate_vmid
    from dapx.flows.restore import list_rows, pbs_backup_list

    node = validate_node_name(args.node or _default_node())
    storage = validate_storage_id(args.storage)
    guest = validate_vmid(args.guest) if args.guest is not None else None
    found = asyncio.run(pbs_backup_list(node, storage, guest))
    if args.json:
        print(json.dumps(found.model_dump(mode="json")["backups"], indent=2))
        return 0
    rows = list_rows(found.backups)
    print(f"{'GUEST':<7} {'KIND':<5} {'TIME':<21} {'SIZE':>10} {'VERIFIED':<9} {'PROT':<4} "
          "VOLUME ID")
    for r in rows:
        print(f"{r['guest']:<7} {r['kind']:<5} {r['time']:<21} {r['size']:>10} "
              f"{r['verified']:<9} {r['protected']:<4} {r['volume id']}")
    if not rows:
        print(f"(no backups on {storage} seen from {node})")
    return 0


def _restore(args: argparse.Namespace) -> int:
    from dapx.core.jobspec import RestoreRequest
    from dapx.core.units import human_bytes
    from dapx.flows.restore import pbs_restore

    fields = {"storage": args.storage, "backup": args.backup, "destination": args.dest,
              "dest_vmid": args.dest_vmid, "dest_storage": args.dest_storage,
              "unique": args.unique, "bridge_map": args.bridge_map, "start": args.start}
    request = RestoreRequest.from_input(**{k: v for k, v in fields.items() if v is not None})
    result = asyncio.run(pbs_restore(request, force=args.force, dry_run=args.plan))
    if args.plan:
        print(f"plan only: would restore {result.backup} to {result.destination} as VMID "
              f"{result.vmid} on {result.storage}"
              + (f", replacing {result.replaced}" if result.replaced else ""))
        return 0
    print(f"restored {result.backup} to {result.destination} as VMID {result.vmid} "
          f"(storage {result.storage}, {human_bytes(result.bytes)}, {result.seconds:g} s)"
          + (f", replaced {result.replaced}" if result.replaced else "")
          + (", started" if result.started else ""))
    if result.leftover:
        print(f"note: the replaced guest could not be destroyed: {result.leftover}")
    return 0


def add_backup_parser(sub: argparse._SubParsersAction) -> None:
    """Add the `backup` command group to the top-level parser."""
    backup = sub.add_parser("backup", help="browse and restore PBS backups (B2)")
    bsub = backup.add_subparsers(dest="backup_cmd", required=True)
    lst = bsub.add_parser("list", help="backups on a PBS storage, per guest, newest first")
    lst.add_argument("--node", help="node to ask (default: the first PVE node block)")
    lst.add_argument("--storage", default="pbs", help="PVE storage of type pbs (pbs)")
    lst.add_argument("--guest", type=int, help="only this guest's backups")
    lst.add_argument("--json", action="store_true")
    rst = bsub.add_parser("restore", help="restore a backup (runs the flow, prints the result)")
    rst.add_argument("--storage", default="pbs", help="PVE storage of type pbs (pbs)")
    rst.add_argument("--backup", required=True,
                     help="vm/300/2025-11-26T02:00:00Z, vm/300/latest or the volume id")
    rst.add_argument("--dest", required=True, help="destination node")
    rst.add_argument("--dest-vmid", type=int, help="VMID (default: the backed-up guest's)")
    rst.add_argument("--dest-storage", required=True, help="storage for the disks")
    rst.add_argument("--bridge-map", help="vmbr1=vmbr0,...")
    rst.add_argument("--unique", action="store_true", help="new MAC addresses")
    rst.add_argument("--start", action="store_true", help="start the guest afterwards")
    rst.add_argument("--force", action="store_true",
                     help="replace a guest at that VMID (kept until the restore is complete)")
    rst.add_argument("--plan", action="store_true", help="dry run: check and plan only")
    backup.set_defaults(func=cmd_backup)
