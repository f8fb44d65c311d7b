"""Run a command given as an argv list (never a shell string); raise with stderr on failure."""

from __future__ import annotations

import subprocess


class CommandFailed(RuntimeError):
    """A command exited non-zero; the message carries its stderr, as PVE's run_command does."""


def run(argv: list[str], input_bytes: bytes | None = None, timeout: float = 600) -> str:
    """Run argv, return stdout text; raises CommandFailed with "command '...' failed: <stderr>"."""
    proc = subprocess.run(argv, input=input_bytes, capture_output=True, timeout=timeout, check=False)
    if proc.returncode != 0:
        err = proc.stderr.decode("utf-8", "replace").strip()
        raise CommandFailed(f"command '{' '.join(argv)}' failed: exit code {proc.returncode}: {err}")
    return proc.stdout.decode("utf-8", "replace")
