"""Prefect servers left behind by a test or bench run that was killed (a timeout, a second
Ctrl-C): each runs in a session of its own, so it outlives the run that started it, and an
idle server still uses 2-3% of a core (seven found here at once took a fifth of a core
during a benchmark). A new session stops them: `prefect server start` processes that lost
their parent (adopted by init), whose PREFECT_HOME lies in a test or bench home, and that
have run for 10 minutes; never another server.
"""

from __future__ import annotations

import getpass
import os
import signal
import tempfile
from pathlib import Path


def _homes() -> tuple[str, ...]:
    tmp = tempfile.gettempdir()
    return (f"{tmp}/pytest-of-{getpass.getuser()}/", f"{tmp}/dapx-bench-")


def _is_server(argv: list[bytes]) -> bool:
    """``[python] .../prefect server start ...``"""
    return (any(a.endswith(b"/prefect") for a in argv[:2])
            and any(argv[i:i + 2] == [b"server", b"start"] for i in range(len(argv))))


MIN_AGE = 600.0
"""Seconds an orphan must have run: a test session running beside this one may have left
a server on purpose moments ago (a test of a crash), and is still checking on it."""


def orphaned_test_servers(min_age: float = MIN_AGE) -> list[int]:
    """Pids of the `prefect server start` processes whose parent is gone, whose home is a
    test's or a bench's, and that have run for ``min_age`` seconds at least."""
    uptime = float(Path("/proc/uptime").read_text().split()[0])
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
            ppid, started = int(fields[1]), int(fields[19]) / os.sysconf("SC_CLK_TCK")
            argv = (proc / "cmdline").read_bytes().split(b"\0")
            if ppid != 1 or uptime - started < min_age or not _is_server(argv):
                continue
            env = (proc / "environ").read_bytes().split(b"\0")
        except (OSError, ValueError, IndexError):
            continue  # gone meanwhile, or not ours to read
        home = next((e[len(b"PREFECT_HOME="):].decode(errors="replace") for e in env
                     if e.startswith(b"PREFECT_HOME=")), "")
        if home.startswith(_homes()):
            found.append(int(proc.name))
    return found


def stop_orphaned_test_servers() -> list[int]:
    """SIGTERM every server ``orphaned_test_servers`` finds; the pids stopped."""
    return stop(orphaned_test_servers())


def stop(pids: list[int]) -> list[int]:
    """SIGTERM each of ``pids``; those that were still there."""
    stopped = []
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
            stopped.append(pid)
        except ProcessLookupError:
            pass
    return stopped
