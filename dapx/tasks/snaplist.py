"""Every snapshot on a node in ONE SSH command (S3): ZFS pools, BTRFS mounts, storage.cfg and
every guest config, read by ``dapx.core.snapview``'s constant script. Never one call per
guest: the view of 200 guests costs the same single round trip as the view of one."""

from __future__ import annotations

from typing import TYPE_CHECKING

from dapx.core.snapview import NodeListing, listing_argv, parse_listing
from dapx.errors import CommandError
from dapx.tasks.base import dapx_task
from dapx.tasks.ssh import run

if TYPE_CHECKING:
    from dapx.blocks.node import ProxmoxNode


@dapx_task(name="list-node-snapshots")
async def list_node_snapshots(node: "ProxmoxNode") -> NodeListing:
    """Parse the node's one-command listing. Raises CommandError when a listing tool failed
    (its last stderr line), ConnectionLost as every SSH task."""
    result = await run(node, listing_argv(), check=False, timeout=300)
    # A dataset destroyed between the listing of names and its ``zfs get`` is no error.
    errors = [ln for ln in result.stderr.splitlines()
              if ln.strip() and "does not exist" not in ln]
    if result.exit_status != 0 or errors:
        raise CommandError(f"listing snapshots on {node.name} failed: "
                           f"{(errors or ['exit status ' + str(result.exit_status)])[-1]}",
                           exit_status=result.exit_status, stderr_tail="\n".join(errors[-20:]))
    return parse_listing(result.stdout)
