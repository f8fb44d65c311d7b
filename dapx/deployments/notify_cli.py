"""`dapx notify add|list|test|remove|settings` (A1-A4) and `dapx status` (X4).

An Apprise URL is read from a file or stdin, never from the command line (other users can
read a process's arguments). Nothing here prints a URL: targets are shown by name, service
and host.
"""

from __future__ import annotations

import argparse
import json

from dapx.errors import InputError


def cmd_notify(args: argparse.Namespace) -> int:
    from dapx.blocks import notifications as targets

    if args.notify_cmd == "add":
        scheme = targets.add_target(args.name, args.url_file, overwrite=args.overwrite)
        print(f"notification target {args.name} ({scheme}) saved; "
              f"`dapx notify test {args.name}` sends a test message")
        return 0
    if args.notify_cmd == "list":
        return _list(targets, as_json=args.json)
    if args.notify_cmd == "test":
        deliveries = targets.send_test_message(args.name)
        for d in deliveries:
            print(f"{d.target}: sent" if d.sent else f"{d.target}: NOT sent: {d.reason}")
        return 0 if all(d.sent for d in deliveries) else 1
    if args.notify_cmd == "remove":
        targets.remove_target(args.name)
        print(f"notification target {args.name} removed")
        return 0
    if args.notify_cmd == "settings":
        return _settings(targets, args)
    raise InputError(f"unknown notify command {args.notify_cmd!r}")


def _list(targets, *, as_json: bool) -> int:  # noqa: ANN001 - the notifications module
    rows = targets.list_targets()
    block = targets.load_notifications()
    if as_json:
        print(json.dumps({"targets": rows, "default_recipient": block and
                          block.default_recipient, "summary": block and
                          f"{block.summary_time} {block.summary_timezone}"}, indent=2))
        return 0
    print(f"{'TARGET':<20} {'SERVICE':<10} HOST")
    for r in rows:
        print(f"{r['name']:<20} {r['service']:<10} {r['host']}")
    if block is not None:
        print(f"default recipient: {block.default_recipient or '-'}; daily summary at "
              f"{block.summary_time} {block.summary_timezone}")
    return 0


def _settings(targets, args: argparse.Namespace) -> int:  # noqa: ANN001
    block = targets.update_settings(recipient=args.recipient, summary_time=args.summary_at,
                                    summary_timezone=args.timezone)
    print(f"default recipient: {block.default_recipient or '-'}; daily summary at "
          f"{block.summary_time} {block.summary_timezone}")
    if args.summary_at or args.timezone:
        from dapx.deployments.notify import deploy_summary

        print(f"deployment {deploy_summary()} rescheduled")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from dapx.flows.protection import run_protection_status

    report = run_protection_status()
    if args.json:
        print(json.dumps(report.model_dump(mode="json"), indent=2))
        return 1 if report.problems else 0
    columns = ("guest", "name", "state", "replica age", "backup age", "jobs", "why")
    widths = {c: max([len(c)] + [len(r.get(c, "")) for r in report.rows]) for c in columns}
    widths["why"] = len("why")  # the last column is not padded
    print(" ".join(c.upper().ljust(widths[c]) for c in columns).rstrip())
    for row in report.rows:
        print(" ".join(row.get(c, "").ljust(widths[c]) for c in columns).rstrip())
    for node, why in sorted(report.unreachable.items()):
        print(f"node {node} did not answer: {why}")
    print(f"{len(report.rows)} guests, {report.problems} late or unprotected")
    return 1 if report.problems else 0


def add_notify_parsers(sub: argparse._SubParsersAction) -> None:
    """Add `notify` and `status` to the top-level parser."""
    notify = sub.add_parser("notify", help="notification targets (Apprise URLs) and settings")
    nsub = notify.add_subparsers(dest="notify_cmd", required=True)
    add = nsub.add_parser("add", help="add a target: an Apprise URL read from a file or stdin")
    add.add_argument("name", help="target name, e.g. ops-mail")
    add.add_argument("--url-file", required=True,
                     help="file holding the Apprise URL ('-' reads stdin), e.g. "
                     "mailtos://user:pass@smtp.example.com:587?from=dapx@example.com")
    add.add_argument("--overwrite", action="store_true", help="replace an existing target")
    lst = nsub.add_parser("list", help="targets (name, service, host) and settings")
    lst.add_argument("--json", action="store_true")
    test = nsub.add_parser("test", help="send a test message; says per target if it went out")
    test.add_argument("name", nargs="?", help="only this target")
    rm = nsub.add_parser("remove", help="delete a target")
    rm.add_argument("name")
    settings = nsub.add_parser("settings", help="default recipient, daily summary time")
    settings.add_argument("--recipient", help="default recipient of mail targets naming none")
    settings.add_argument("--summary-at", help="time of the daily summary, HH:MM (08:00)")
    settings.add_argument("--timezone", help="time zone of the summary, e.g. Europe/Rome")
    notify.set_defaults(func=cmd_notify)

    status = sub.add_parser("status", help="protection state of every guest (exit 1 when "
                            "some guest is late or unprotected)")
    status.add_argument("--json", action="store_true")
    status.set_defaults(func=cmd_status)
