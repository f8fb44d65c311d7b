"""`zfs` for lab nodes: zfs-fuse plus the `-t TYPE` filter of OpenZFS's `zfs get`.

Proxmox nodes run OpenZFS 2.x, whose `zfs get -t snapshot` lists only snapshots; zfs-fuse
0.7 has no `-t` there. syncoid lists snapshots that way (its fallback for old ZFS is broken
for remote targets), so lab nodes get this wrapper first on PATH: it removes `-t TYPE`, runs
the real /usr/sbin/zfs, and keeps only the lines of the asked types. Every other command
goes to the real zfs unchanged. A documented lab difference (dapx/lab/README.md).
"""

from __future__ import annotations

import os
import subprocess
import sys

REAL_ZFS = "/usr/sbin/zfs"
_VALUE_FLAGS = set("dost")  # `zfs get` options that take a value


def split_type_filter(args: list[str]) -> tuple[list[str], set[str] | None, bool]:
    """``get`` arguments -> (arguments without -t, the asked types or None, -H given)."""
    out: list[str] = []
    types, scripted, i = None, False, 0
    while i < len(args) and args[i].startswith("-") and len(args[i]) > 1:
        group = args[i][1:]
        for j, flag in enumerate(group):
            scripted |= flag == "H"
            if flag in _VALUE_FLAGS:
                value = group[j + 1:]
                if not value:
                    i += 1
                    value = args[i] if i < len(args) else ""
                if flag == "t":
                    types = set(value.split(","))
                else:
                    out += [f"-{flag}", value]
                break
            out.append(f"-{flag}")
        i += 1
    return out + args[i:], types, scripted


def matches(name: str, types: set[str]) -> bool:
    """Whether ``name`` (dataset, snapshot or bookmark) is of one of ``types``."""
    kind = "snapshot" if "@" in name else "bookmark" if "#" in name else "filesystem"
    return "all" in types or kind in types


def main(argv: list[str]) -> int:
    if not argv or argv[0] != "get":
        os.execv(REAL_ZFS, [REAL_ZFS, *argv])
    args, types, scripted = split_type_filter(argv[1:])
    if types is None:
        os.execv(REAL_ZFS, [REAL_ZFS, *argv])
    proc = subprocess.run([REAL_ZFS, "get", *args], stdout=subprocess.PIPE)
    lines = proc.stdout.decode(errors="surrogateescape").splitlines(keepends=True)
    header = [] if scripted or not lines else [lines.pop(0)]
    kept = [line for line in lines if line.split() and matches(line.split()[0], types)]
    sys.stdout.write("".join(header + kept))
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
