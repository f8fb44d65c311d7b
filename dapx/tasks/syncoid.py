"""syncoid on the source node, pushing one dataset to the destination.

The argv comes from ``dapx.core.syncoid_argv``; here we add pv's numeric output so the bytes
moved can be counted and reported while they move: ``--pv-options=-f -n -b -i 1`` makes pv
print the running byte count, one number per line. syncoid writes pv's output and its own
messages to stderr, so every transfer runs under the constant script ``TIED`` (the argv passed
positionally, never inside the script), which merges stderr into stdout to stream both as
lines, and ties the transfer to its SSH channel: the channel is the script's stdin, held open
and never written; when it closes (the run ended, was cancelled or its process was killed),
the script kills its whole process group, so no ``zfs send | ... | zfs receive`` (or btrfs
pipe, or syncoid) outlives the run that started it. The receive on the destination then
reads a cut stream and aborts, leaving the target at its last snapshot.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from dapx.core.syncoid_argv import SyncoidOptions, syncoid_argv, with_shared_master
from dapx.errors import CommandError, TransientCommandError
from dapx.tasks.base import dapx_task

if TYPE_CHECKING:
    from dapx.blocks.node import ProxmoxNode

PV_OPTIONS = "--pv-options=-f -n -b -i 1"
# sshd starts the command in a session (and process group) of its own; in a shell without job
# control every child stays in it, so ``kill 0`` reaches the whole transfer. Background jobs
# get /dev/null as stdin, hence the channel is handed to the watcher as fd 3.
TIED = r'''exec 2>&1 3<&0
"$@" </dev/null 3<&- &
job=$!
{ while read -r _; do :; done; kill -TERM 0; } <&3 &
watch=$!
exec 3<&-
wait "$job"
status=$?
kill "$watch" 2>/dev/null
exit "$status"'''
TRANSFER_TIMEOUT = 24 * 3600.0
TRANSIENT_OUTPUT = ("connection reset", "broken pipe", "connection closed", "timed out",
                    "connection refused", "dataset is busy")
KNOWN_CAUSES = {
    "has been modified": "the destination was written since its newest snapshot, after this "
                         "run's checks; the receive refused the stream and overwrote nothing "
                         "(look at what wrote it; a run with force discards those writes)",
}
"""Output of a failed transfer -> the cause in words (zfs wraps its message over lines)."""


def cause(messages: list[str]) -> str:
    """The one line that says why a transfer failed: a known cause, else its last line."""
    for marker, words in KNOWN_CAUSES.items():
        if any(marker in line for line in messages):
            return words
    return messages[-1] if messages else "no output"


@dataclass
class ByteCounter:
    """Sums pv's running counts; a count going down means syncoid started another send."""

    done: int = 0
    current: int = 0

    def feed(self, line: str) -> bool:
        """Take one output line; True when it was a pv count."""
        text = line.strip()
        if not text.isdigit():
            return False
        value = int(text)
        if value < self.current:
            self.done += self.current
        self.current = value
        return True

    @property
    def total(self) -> int:
        return self.done + self.current


@dataclass
class SyncResult:
    """One finished transfer: bytes pv counted, seconds taken, syncoid's last messages."""

    bytes_sent: int
    seconds: float
    messages: list[str]


def transfer_argv(source_dataset: str, target_host: str, target_dataset: str,
                  options: SyncoidOptions) -> list[str]:
    """``syncoid ... --pv-options=... SRC root@HOST:DST``, sharing one SSH master per
    destination (``dapx.core.syncoid_argv.with_shared_master``)."""
    argv = syncoid_argv(source_dataset, target_host, target_dataset, options)
    return with_shared_master(argv[:-2] + [PV_OPTIONS] + argv[-2:])


def tied_argv(argv: list[str]) -> list[str]:
    """``sh -c TIED sh ARGV...``: ``argv`` with stderr merged, killed with its channel."""
    return ["sh", "-c", TIED, "sh", *argv]


def classify_output(output: str) -> type[CommandError]:
    """A cut connection may work next time; anything else (refused key, diverged) will not."""
    lowered = output.lower()
    return TransientCommandError if any(t in lowered for t in TRANSIENT_OUTPUT) else CommandError


@dapx_task
async def run_syncoid(node: "ProxmoxNode", source_dataset: str, target_host: str,
                      target_dataset: str, options: SyncoidOptions,
                      on_bytes: Callable[[int], None] | None = None) -> SyncResult:
    """Run syncoid on ``node`` (the source) and stream its output.

    ``on_bytes(total)`` is called (on the SSH I/O thread) for each pv count. Out: SyncResult.
    Raises CommandError/TransientCommandError with syncoid's last lines when it fails.
    """
    return await syncoid(node, source_dataset, target_host, target_dataset, options, on_bytes)


async def syncoid(node: "ProxmoxNode", source_dataset: str, target_host: str,
                  target_dataset: str, options: SyncoidOptions,
                  on_bytes: Callable[[int], None] | None = None) -> SyncResult:
    """``run_syncoid``'s work without a task run of its own, for a caller that is its own
    retry: the fleet's quick round, whose failed transfer sends the guest to its own replica
    run (where ``run_syncoid`` retries). Same arguments, result and errors."""
    argv = transfer_argv(source_dataset, target_host, target_dataset, options)
    return await stream_transfer(node, argv, f"syncoid {source_dataset} -> "
                                 f"{target_host}:{target_dataset}", on_bytes)


@dapx_task
async def run_pipe(node: "ProxmoxNode", argv: list[str], what: str,
                   on_bytes: Callable[[int], None] | None = None) -> SyncResult:
    """Run a prepared send pipeline (``dapx.tasks.zfs.pipe_argv``) on the source node."""
    return await stream_transfer(node, argv, what, on_bytes)


async def stream_transfer(node: "ProxmoxNode", argv: list[str], what: str,
                          on_bytes: Callable[[int], None] | None) -> SyncResult:
    """Run a transfer whose output carries pv's numeric counts, tied to its SSH channel."""
    from dapx.tasks.ssh import get_session

    counter, messages = ByteCounter(), []

    def on_line(line: str) -> None:
        if counter.feed(line):
            if on_bytes is not None:
                on_bytes(counter.total)
        elif line.strip():
            messages.append(line.strip())

    started = time.monotonic()
    session = await get_session(node)
    result = await session.stream(tied_argv(argv), on_line, timeout=TRANSFER_TIMEOUT,
                                  check=False, hold_stdin=True)
    if result.exit_status != 0:
        tail = "\n".join(messages[-20:])
        last = cause(messages)
        from dapx.tasks.base import run_logger  # the run's log keeps what the error line cuts

        run_logger().warning("%s failed on node %s; its last output:\n%s", what, node.name,
                             tail or "none")
        raise classify_output(tail)(
            f"{what} failed on node {node.name} (exit status {result.exit_status}): {last}",
            exit_status=result.exit_status, stderr_tail=tail)
    return SyncResult(counter.total, time.monotonic() - started, messages[-20:])
