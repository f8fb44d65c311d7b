"""`python -m dapx.lab up|down|status|reset|ssh NODE [-- CMD...]`.

For testing the lab alone; the product's command line is `dapx lab ...` (dapx/cli.py).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time

from dapx.errors import DapxError
from dapx.lab import estate


def main(argv: list[str] | None = None) -> int:
    """Run one lab command; returns the exit status."""
    args = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if not args:
        print("usage: python -m dapx.lab up|down [--purge]|status [--json]|reset"
              "|ssh NODE [-- CMD...]")
        return 2
    cmd, rest = args[0], args[1:]
    t0 = time.monotonic()
    try:
        if cmd == "up":
            estate.up()
        elif cmd == "down":
            estate.down(purge="--purge" in rest)
        elif cmd == "reset":
            estate.reset()
        elif cmd == "status":
            st = estate.status()
            if "--json" in rest:
                print(json.dumps(st, indent=2))
            else:
                for n in st["nodes"].values():
                    print(f"{n['name']:6} {n['kind']:4} {n['address']:15} {n['state']:8} "
                          f"{n['api_url']}")
            return 0
        elif cmd == "ssh" and rest:
            remote = rest[2:] if len(rest) > 1 and rest[1] == "--" else rest[1:]
            ssh = estate.ssh_argv(rest[0], remote or None)
            os.execvp(ssh[0], ssh)
        else:
            print(f"unknown command {cmd!r}", file=sys.stderr)
            return 2
    except DapxError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"{cmd}: done in {time.monotonic() - t0:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
