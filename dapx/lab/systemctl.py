"""A tiny `systemctl` for lab nodes, which have no systemd (a documented lab difference).

Supports: enable/disable [--now] UNIT..., start/stop/restart UNIT..., is-enabled UNIT,
is-active UNIT, status UNIT, daemon-reload, list-timers. It only records unit state in
/etc/dapx-lab/systemctl.json; nothing is run by timers (tests run sanoid themselves).
Exit codes follow systemctl: is-enabled 0/1, is-active and status 0/3.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

STATE = Path("/etc/dapx-lab/systemctl.json")


def _load() -> dict[str, dict[str, bool]]:
    try:
        return json.loads(STATE.read_text())
    except (OSError, ValueError):
        return {}


def _save(state: dict[str, dict[str, bool]]) -> None:
    STATE.write_text(json.dumps(state, indent=1, sort_keys=True) + "\n")


def _unit(name: str) -> str:
    return name if "." in name else name + ".service"


def _set(units: list[str], **flags: bool) -> int:
    state = _load()
    for u in units:
        state.setdefault(_unit(u), {"enabled": False, "active": False}).update(flags)
    _save(state)
    return 0


def _query(unit: str, key: str, yes: str, no: str, fail: int) -> int:
    on = _load().get(_unit(unit), {}).get(key, False)
    print(yes if on else no)
    return 0 if on else fail


def _status(unit: str) -> int:
    rec = _load().get(_unit(unit), {})
    active = rec.get("active", False)
    enabled = "enabled" if rec.get("enabled") else "disabled"
    print(f"* {_unit(unit)} - {_unit(unit)} (dapx lab shim)\n"
          f"     Loaded: loaded (/lib/systemd/system/{_unit(unit)}; {enabled})\n"
          f"     Active: {'active (waiting)' if active else 'inactive (dead)'}")
    return 0 if active else 3


def main(argv: list[str]) -> int:
    """Run one systemctl command; returns the exit status."""
    args = [a for a in argv if not a.startswith("-")]
    now = "--now" in argv
    if not args:
        print("systemctl (dapx lab shim): missing command", file=sys.stderr)
        return 1
    cmd, units = args[0], args[1:]
    if cmd == "daemon-reload":
        return 0
    if cmd == "list-timers":
        for unit, rec in sorted(_load().items()):
            if unit.endswith(".timer") and rec.get("active"):
                print(f"n/a n/a n/a n/a {unit} {unit.removesuffix('.timer')}.service")
        return 0
    if not units:
        print(f"systemctl (dapx lab shim): {cmd} needs a unit", file=sys.stderr)
        return 1
    if cmd == "enable":
        return _set(units, enabled=True, **({"active": True} if now else {}))
    if cmd == "disable":
        return _set(units, enabled=False, **({"active": False} if now else {}))
    if cmd in ("start", "restart", "reload", "try-restart"):
        return _set(units, active=True)
    if cmd == "stop":
        return _set(units, active=False)
    if cmd == "is-enabled":
        return _query(units[0], "enabled", "enabled", "disabled", 1)
    if cmd == "is-active":
        return _query(units[0], "active", "active", "inactive", 3)
    if cmd == "status":
        return _status(units[0])
    print(f"systemctl (dapx lab shim): unsupported command {cmd}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
