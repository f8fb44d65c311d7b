"""`dapx job create fleet`: a set of guests as one job (X7).

    dapx job create fleet --source pve1,pve2 --dest pve3 [--route pve3=pve1]
        [--guests 100,101 | --pve-pool prod | --tag replicate] [--storage-kind zfs]
        [--vmid-offset 10000] [--per-source 4 --per-dest 4] [--schedule "*/15 * * * *"]
        [--site site-a]
"""

from __future__ import annotations

import argparse
import re

from dapx.core.fleet import FleetJob
from dapx.errors import InputError

REPLICA_ONLY = ("guest", "dataset", "dest_dataset", "recursive", "method", "dest_vmid",
                "cpu_host", "bridge_map", "carry_keys")


def parse_routes(sources: str | None, dest: str | None, extra: list[str] | None
                 ) -> dict[str, str]:
    """``--source pve1,pve2 --dest pve3 --route pve3=pve1`` -> {pve1: pve3, pve2: pve3,
    pve3: pve1}. Raises InputError for a malformed route, a source given twice, --source
    without --dest (or the reverse), or no route at all."""
    routes: dict[str, str] = {}
    if bool(sources) != bool(dest):
        raise InputError("a fleet job takes --source with --dest (and/or --route SRC=DST)")
    pairs = [(s.strip(), str(dest)) for s in (sources or "").split(",") if s.strip()]
    for text in extra or []:
        source, sep, target = text.partition("=")
        if not sep or not source.strip() or not target.strip():
            raise InputError(f"--route takes SRC=DST (e.g. pve3=pve1), got {text!r}")
        pairs.append((source.strip(), target.strip()))
    for source, target in pairs:
        if source in routes:
            raise InputError(f"node {source!r} is a source twice; give each source one "
                             "destination")
        routes[source] = target
    if not routes:
        raise InputError("a fleet job needs --source and --dest, or --route SRC=DST")
    return routes


def parse_vmids(text: str | None) -> list[int]:
    """``"100,101"`` -> [100, 101]; InputError for anything but numbers and commas."""
    if not text:
        return []
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not all(re.fullmatch(r"[0-9]{1,10}", t) for t in items):
        raise InputError("--guests takes VMIDs separated by commas, e.g. 100,101")
    return [int(t) for t in items]


def fleet_spec(args: argparse.Namespace) -> FleetJob:
    """The FleetJob the options describe; InputError with one line for bad input."""
    from dapx.core.jobspec import _from_input

    fields = {"routes": parse_routes(args.source, args.dest, args.route),
              "vmids": parse_vmids(args.guests), "pool": args.pve_pool, "tag": args.tag,
              "storage": args.storage_kind, "vmid_offset": args.vmid_offset,
              "per_source": args.per_source, "per_destination": args.per_dest,
              "dest_pool": args.pool, "subfolder": args.subfolder,
              "compression": args.compress, "keep": args.keep,
              "register_vm": False if args.no_register else None, "bwlimit": args.bwlimit,
              "notify": args.notify}
    return _from_input(FleetJob, {k: v for k, v in fields.items() if v is not None})


def default_name(spec: FleetJob) -> str:
    """``fleet-pve1-pve2-to-pve3``, cut to a valid job name."""
    targets = sorted(set(spec.routes.values()))
    name = f"fleet-{'-'.join(sorted(spec.routes))}-to-{'-'.join(targets)}"
    return name[:63].rstrip("-")


def create_fleet(args: argparse.Namespace) -> int:
    """Save the fleet job; print its name."""
    from dapx.deployments import jobs
    from dapx.deployments.cli import _refuse

    _refuse(args, "fleet", *REPLICA_ONLY)
    spec = fleet_spec(args)
    name = args.name or default_name(spec)
    full = jobs.create_job(name, "fleet-replica", spec, schedule=args.schedule,
                           timezone=args.timezone, paused=args.paused, replace=args.replace,
                           site=args.site)
    print(f"job {full} saved" + (f", schedule {args.schedule}" if args.schedule else ""))
    return 0
