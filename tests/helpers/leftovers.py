"""Prefect servers left behind by a test or bench run that was killed (a timeout, a second
Ctrl-C): each runs in a session of its own, so it outlives the run that started it, and an
idle server still uses 2-3% of a core. Seven found at once here made a benchmark's figures
wrong. A new session stops them: `prefect server start` processes that lost their parent
(adopted by init) and whose PREFECT_HOME lies in a test or bench home; never another server.
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


def orphaned_test_servers() -> list[int]:
    """Pids of the `prefect server start` processes whose parent is gone and whose home is a
    test's or a bench's."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
            argv = (proc / "cmdline").read_bytes().split(b"\0")
            if ppid != 1 or not _is_server(argv):
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
    stopped = []
    for pid in orphaned_test_servers():
        try:
            os.kill(pid, signal.SIGTERM)
            stopped.append(pid)
        except ProcessLookupError:
            pass
    return stopped
