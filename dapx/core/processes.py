"""Which running processes receive into a dataset or directory (pure: ``ps`` output in).

A run killed hard can leave a ``zfs receive`` (or ``btrfs receive``) behind on the
destination; planning refuses to start while one writes the target. The check reads
``ps -e -o pid= -o args=`` on the destination and looks for a receive command naming the
target (or something below it) as a whole word, however it was quoted.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

_RECEIVE = re.compile(r"\b(?:zfs\s+(?:receive|recv)|btrfs\s+receive)\b")
_RECEIVER = re.compile(r"(?:\S*/)?(?:zfs\s+(?:receive|recv)|btrfs\s+receive)\b")

PS_ARGV = ["ps", "-e", "-o", "pid=", "-o", "args="]


def receives_into(ps_output: str, names: Iterable[str]) -> list[tuple[int, str]]:
    """(pid, command line) of each process receiving into one of ``names`` or below it (a
    ``zfs receive`` itself, or a shell or ssh session running one), receivers first."""
    patterns = [re.compile(r"(?:^|[\s'\"=:])" + re.escape(n) + r"(?:$|[\s'\"/])")
                for n in names]
    found = []
    for line in ps_output.splitlines():
        pid, _, args = line.strip().partition(" ")
        if pid.isdigit() and _RECEIVE.search(args) and any(p.search(args) for p in patterns):
            found.append((int(pid), " ".join(args.split())))
    # the receiving process itself first, then the shells and ssh sessions around it
    return sorted(found, key=lambda f: not _RECEIVER.match(f[1]))


def busy_message(node: str, found: list[tuple[int, str]]) -> str:
    """One line naming the first receive found."""
    pid, args = found[0]
    short = args if len(args) <= 160 else args[:157] + "..."
    return (f"a receive into a target of this run is still running on {node} (pid {pid}: "
            f"{short}); another run, or one that died, may have left it: wait for it to end "
            "or stop it, then run again")
