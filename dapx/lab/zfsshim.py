"""`zfs` for lab nodes: zfs-fuse plus two things OpenZFS does that zfs-fuse does not.

- `zfs get -t TYPE`: Proxmox nodes run OpenZFS 2.x, whose `zfs get -t snapshot` lists only
  snapshots; zfs-fuse 0.7 has no `-t` there. syncoid lists snapshots that way (its fallback
  for old ZFS is broken for remote targets): the wrapper removes `-t TYPE`, runs the real
  /usr/sbin/zfs, and keeps only the lines of the asked types.
- `zfs rename` of a mounted filesystem: OpenZFS unmounts it (and its mounted children),
  renames and mounts it again; zfs-fuse refuses with "dataset is busy". The wrapper does the
  unmount / rename / mount itself (renumbering a guest renames its volumes).
Every other command goes to the real zfs unchanged, straight from a shell front
(``front_script``): starting Python for each `zfs` call cost 30-35 ms (55-75 ms under load),
and a replica run makes about fifteen, where a real node's `zfs` starts in a few ms. A
documented lab difference (dapx/lab/README.md).
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys

REAL_ZFS = "/usr/sbin/zfs"

_FRONT = """#!/bin/sh
# The lab's zfs: Python (dapx/lab/zfsshim.py) only for what zfs-fuse cannot do itself.
case $1 in
  rename) exec {shim} "$@" ;;
  get) if [ $# -eq 7 ] && [ "$2" = -Hpd ] && [ "$3" = 1 ] && [ "$4" = -t ] \\
            && [ "$5" = snapshot ]; then
         # syncoid's snapshot listing (twice a run): the snapshots' lines, zfs's status
         out=$({real} get -Hpd 1 "$6" "$7"); status=$?
         [ -z "$out" ] || printf '%s\\n' "$out" | awk -F '\\t' 'index($1, "@")'
         exit $status
       fi
       for arg in "$@"; do
         case $arg in -*t*) exec {shim} "$@" ;; esac
       done ;;
esac
exec {real} "$@"
"""


def front_script(python: str, real: str = REAL_ZFS) -> str:
    """The node's `zfs`: a shell script that runs the real zfs at once, filters syncoid's
    ``get -Hpd 1 -t snapshot PROPS DATASET`` itself, and runs this module (in ``python``) for
    `rename` and for any other `get` with an option group holding ``t`` (``-t TYPE``; a value
    glued to another option, ``-oname,type``, goes through Python too, which passes it on
    unchanged)."""
    return _FRONT.format(shim=shlex.join([python, "-m", "dapx.lab.zfsshim"]),
                         real=shlex.quote(real))


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


def _zfs(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([REAL_ZFS, *args], capture_output=True, text=True, check=False)


def rename(argv: list[str]) -> int:
    """``zfs rename [-p] SRC DST`` as OpenZFS does it for a mounted filesystem."""
    names = [a for a in argv[1:] if not a.startswith("-")]
    if len(names) != 2 or "@" in names[0]:
        os.execv(REAL_ZFS, [REAL_ZFS, *argv])
    source, target = names
    listing = _zfs("list", "-H", "-o", "name,mounted", "-r", source)
    mounted = [ln.split("\t")[0] for ln in listing.stdout.splitlines() if ln.endswith("\tyes")]
    if listing.returncode != 0 or not mounted:
        os.execv(REAL_ZFS, [REAL_ZFS, *argv])
    for name in reversed(mounted):  # children first
        done = _zfs("umount", name)
        if done.returncode != 0:
            sys.stderr.write(f"cannot unmount '{name}': {done.stderr.strip()}\n")
            for again in mounted[mounted.index(name) + 1:]:
                _zfs("mount", again)
            return 1
    result = _zfs(*argv)
    sys.stdout.write(result.stdout)
    sys.stderr.write(result.stderr)
    now = target if result.returncode == 0 else source
    for name in mounted:
        _zfs("mount", now + name[len(source):])
    return result.returncode


def main(argv: list[str]) -> int:
    if argv and argv[0] == "rename":
        return rename(argv)
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
