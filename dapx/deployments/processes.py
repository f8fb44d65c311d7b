"""Process trees: the worker starts each flow run in a session of its own, so a signal to the
worker's process group never reaches them; stopping the product walks the tree instead."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path


def _parents() -> dict[int, int]:
    """pid -> parent pid of every live process (Linux /proc)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            found[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    return found


def descendants(pid: int) -> list[int]:
    """Every live process below ``pid`` (children first)."""
    parents = _parents()
    found, frontier = [], [pid]
    while frontier:
        children = [p for p, parent in parents.items() if parent in frontier]
        found += children
        frontier = children
    return found


def signal_tree(pid: int, sig: int) -> None:
    """Send ``sig`` to ``pid``'s process group and to the group of every process below it."""
    groups = {pid}
    for child in descendants(pid):
        try:
            groups.add(os.getpgid(child))
        except ProcessLookupError:
            pass
    for group in groups:
        try:
            os.killpg(group, sig)
        except (ProcessLookupError, PermissionError):
            pass


def stop_tree(proc: subprocess.Popen, grace: float) -> None:
    """SIGTERM to ``proc`` and everything it started, SIGKILL to what is left after ``grace``
    seconds. Flow runs that get SIGTERM report themselves Crashed."""
    tree = [proc.pid, *descendants(proc.pid)]
    signal_tree(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and _alive(tree):
        proc.poll()
        time.sleep(0.2)
    for pid in _alive(tree):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait()


def _alive(pids: list[int]) -> list[int]:
    live = []
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z":
            live.append(pid)
    return live
