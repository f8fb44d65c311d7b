"""`dapx snapshot list|create|delete|rollback|policy|retention` (S1-S4).

Each command checks its input first (one line on stderr, exit 2, nothing run), then runs
the flow in this process and prints its result.
"""

from __future__ import annotations

import argparse
import json

from pydantic import ValidationError

from dapx.core.types import validation_message
from dapx.core.validate import validate_node_name, validate_vmid
from dapx.errors import InputError


def cmd_snapshot(args: argparse.Namespace) -> int:
    handlers = {"list": _list, "create": _change, "delete": _change, "rollback": _change,
                "policy": _policy, "retention": _retention}
    return handlers[args.snap_cmd](args)


def _print(result, as_json: bool) -> None:  # noqa: ANN001 - a pydantic model
    print(json.dumps(result.model_dump(mode="json"), indent=2) if as_json else result)


def _list(args: argparse.Namespace) -> int:
    from dapx.flows.snapshot_view import run_snapshot_view

    if args.guest is not None:
        validate_vmid(args.guest)
    if args.node:
        validate_node_name(args.node)
    elif not args.all_nodes:
        raise InputError("snapshot list needs --node NODE or --all-nodes")
    _print(run_snapshot_view(node=args.node, guest=args.guest, all_nodes=args.all_nodes),
           args.json)
    return 0


def _change(args: argparse.Namespace) -> int:
    from dapx.core.pvesnap import validate_pve_snapshot_name
    from dapx.flows.guest_snapshot import run_guest_snapshot

    validate_node_name(args.node)
    validate_vmid(args.guest)
    validate_pve_snapshot_name(args.name)
    extra = {"description": args.description, "vmstate": args.vmstate} \
        if args.snap_cmd == "create" else {}
    _print(run_guest_snapshot(node=args.node, guest=args.guest, action=args.snap_cmd,
                              name=args.name, **extra), args.json)
    return 0


def _policy(args: argparse.Namespace) -> int:
    from dapx.core.sanoidconf import PERIODS, SanoidPolicy
    from dapx.flows.snapshot_policy import run_snapshot_policy

    validate_node_name(args.node)
    validate_vmid(args.guest)
    fields = {p: getattr(args, p) for p in PERIODS if getattr(args, p) is not None}
    try:
        policy = SanoidPolicy(enabled=not args.off, template=args.template, **fields)
    except ValidationError as exc:
        raise InputError(validation_message(exc)) from None
    _print(run_snapshot_policy(node=args.node, guest=args.guest, policy=policy,
                               dry_run=args.plan), args.json)
    return 0


def _retention(args: argparse.Namespace) -> int:
    import asyncio

    from dapx.flows.snapshot_retention import snapshot_retention

    _print(asyncio.run(snapshot_retention(dry_run=args.plan, jobs=args.job or None)),
           args.json)
    return 0


def add_snapshot_parser(sub: argparse._SubParsersAction) -> None:
    """Add the `snapshot` command group to the top-level parser."""
    snap = sub.add_parser("snapshot", help="guest snapshots, sanoid policies, retention")
    ssub = snap.add_subparsers(dest="snap_cmd", required=True)

    lst = ssub.add_parser("list", help="every snapshot of a guest (or all guests), grouped")
    lst.add_argument("--guest", type=int, help="VMID (default: every guest)")
    lst.add_argument("--node", help="node the guest is on")
    lst.add_argument("--all-nodes", action="store_true", help="look on every PVE node")
    lst.add_argument("--json", action="store_true")

    for action, text in (("create", "take a Proxmox snapshot"),
                         ("delete", "delete a Proxmox snapshot"),
                         ("rollback", "roll the guest back to a Proxmox snapshot")):
        cmd = ssub.add_parser(action, help=text)
        cmd.add_argument("--node", required=True)
        cmd.add_argument("--guest", required=True, type=int)
        cmd.add_argument("--name", required=True, help="snapshot name (letter first, "
                         "letters, digits, _ and -, at most 40)")
        if action == "create":
            cmd.add_argument("--description")
            cmd.add_argument("--vmstate", action="store_true", help="include the RAM state")
        cmd.add_argument("--json", action="store_true")

    pol = ssub.add_parser("policy", help="the guest's sanoid policy in the node's sanoid.conf")
    pol.add_argument("--node", required=True)
    pol.add_argument("--guest", required=True, type=int)
    pol.add_argument("--template", default="default",
                     help="production, default, minimal, backup or vm")
    for period in ("hourly", "daily", "weekly", "monthly", "yearly"):
        pol.add_argument(f"--{period}", type=int, help=f"{period} snapshots to keep")
    pol.add_argument("--off", action="store_true", help="remove the guest's policy")
    pol.add_argument("--plan", action="store_true", help="dry run: show the change only")
    pol.add_argument("--json", action="store_true")

    ret = ssub.add_parser("retention", help="apply every replica job's keep on both sides")
    ret.add_argument("--job", action="append", help="only this job (repeatable)")
    ret.add_argument("--plan", action="store_true", help="dry run: what would go and why")
    ret.add_argument("--json", action="store_true")
    snap.set_defaults(func=cmd_snapshot)
