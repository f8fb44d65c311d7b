"""A guest copied as a vzdump archive streamed node to node: ``vzdump --stdout | pv | ssh
dest qmrestore -`` (``pct restore VMID -`` for a container), run on the SOURCE node.

The archive never touches a disk or the orchestrator: vzdump writes it to the pipe, pv
counts its bytes (``-n -b``: one running total per second, on stderr), and the destination
restores it from stdin under the VMID given, disks on the storage given. The SSH hop uses the
source's replication key and the dapx known_hosts file, as the replica pipes do (trust-nodes
sets them up). A copy on the same node pipes into the restore directly.

The script is constant; every value arrives as a positional argument, and the remote command
is one argv joined once (``shlex.join``) from checked values. vzdump's exit status is kept in
a temporary file (POSIX sh has no pipefail), so a source that failed after the receiver
accepted a short archive still fails the copy.
"""

from __future__ import annotations

import shlex
from typing import TYPE_CHECKING, Callable, Literal

from dapx.core.syncoid_argv import STREAM_SSH
from dapx.core.validate import (parse_bandwidth, validate_abs_path, validate_host,
                                validate_storage_id, validate_vmid)
from dapx.tasks.base import dapx_task

if TYPE_CHECKING:
    from dapx.blocks.node import ProxmoxNode
    from dapx.tasks.syncoid import SyncResult

_PIPE = r'''exec 2>&1
vmid=$1 mode=$2 key=$3 known=$4 port=$5 dest=$6 remote=$7 rate=$8
status=$(mktemp) || exit 1
trap 'rm -f "$status"' EXIT
meter() { if [ -n "$rate" ]; then pv -f -n -b -i 1 -L "$rate"; else pv -f -n -b -i 1; fi; }
receive() {
  if [ -z "$dest" ]; then sh -c "$remote"; else
    ''' + STREAM_SSH + r'''
  fi
}
{ vzdump "$vmid" --stdout --mode "$mode"; echo "$?" > "$status"; } | meter | receive
received=$?
sent=$(cat "$status")
if [ "$received" != 0 ]; then
  echo "the restore on the destination failed (exit status $received; vzdump: ${sent:-killed})"
  exit 1
fi
if [ "$sent" != 0 ]; then echo "vzdump failed (exit status ${sent:-killed})"; exit 1; fi'''

_UNLOCK = {"qemu": ["qm", "unlock"], "lxc": ["pct", "unlock"]}


def restore_argv(kind: Literal["qemu", "lxc"], vmid: int, storage: str,
                 unique: bool) -> list[str]:
    """The destination's side: ``qmrestore - VMID --storage S`` or ``pct restore VMID - ...``
    (``--unique 1``: new MAC addresses). Never ``--force``: the VMID must be free."""
    vmid, storage = validate_vmid(vmid), validate_storage_id(storage)
    extra = ["--unique", "1"] if unique else []
    if kind == "qemu":
        return ["qmrestore", "-", str(vmid), "--storage", storage, *extra]
    return ["pct", "restore", str(vmid), "-", "--storage", storage, *extra]


def pipe_argv(vmid: int, target_host: str | None, remote: list[str], *, key: str,
              known_hosts: str, port: int, rate: str | None,
              mode: Literal["snapshot", "suspend", "stop"] = "snapshot") -> list[str]:
    """The whole pipeline as one argv for the source node (``target_host`` None: this node)."""
    return ["sh", "-c", _PIPE, "sh", str(validate_vmid(vmid)), mode,
            validate_abs_path(key, "ssh key"), validate_abs_path(known_hosts, "known_hosts file"),
            str(int(port)), f"root@{validate_host(target_host)}" if target_host else "",
            shlex.join(remote), parse_bandwidth(rate) if rate else ""]


@dapx_task(name="stream-vzdump", retries=0)
async def stream_copy(source: "ProxmoxNode", argv: list[str], what: str,
                      on_bytes: Callable[[int], None] | None = None) -> "SyncResult":
    """Run the pipeline on ``source`` and stream its output; bytes counted by pv. Not retried:
    a half-restored guest must be cleaned up first, never restored over. Raises CommandError
    with the pipeline's last line."""
    from dapx.tasks.syncoid import stream_transfer

    return await stream_transfer(source, argv, what, on_bytes)


@dapx_task(name="unlock-guest")
async def unlock_guest(node: "ProxmoxNode", kind: Literal["qemu", "lxc"], vmid: int) -> None:
    """``qm unlock`` / ``pct unlock`` over SSH: a restore killed part way leaves its guest
    locked (``create``), and PVE refuses to destroy a locked guest through the API."""
    from dapx.tasks.ssh import run

    await run(node, [*_UNLOCK[kind], str(validate_vmid(vmid))])
