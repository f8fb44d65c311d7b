"""Running processes on a node (``ps``): is a receive into a target still running?"""

from __future__ import annotations

from typing import TYPE_CHECKING

from dapx.core.processes import PS_ARGV, busy_message, receives_into
from dapx.errors import ConflictError
from dapx.tasks.base import dapx_task
from dapx.tasks.ssh import run

if TYPE_CHECKING:
    from dapx.blocks.node import ProxmoxNode


@dapx_task
async def refuse_running_receive(node: "ProxmoxNode", names: list[str]) -> None:
    """Raise ConflictError (one line, naming the process) when a ``zfs receive`` or ``btrfs
    receive`` into one of ``names`` (datasets or receive directories) runs on ``node``."""
    found = receives_into((await run(node, PS_ARGV, timeout=60)).stdout, names)
    if found:
        raise ConflictError(busy_message(node.name, found))
