"""ZFS on a node over SSH: snapshot lists for many datasets at once, snapshots, rollback,
destroy, owner marks, feature detection. Argv comes from ``dapx.core.zfs_argv`` (or is built
here from validated names); every function takes the node block and uses the flow run's
shared SSH session.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from dapx.core import zfs_argv
from dapx.core.snapnames import OWNER_PROPERTY
from dapx.core.snapshots import Snapshot
from dapx.core.validate import snapshot_path, validate_dataset_name
from dapx.errors import CommandError, InputError
from dapx.tasks.base import dapx_task
from dapx.tasks.ssh import run

if TYPE_CHECKING:
    from dapx.blocks.node import ProxmoxNode

STATE_PROPS = ("guid", "createtxg", "creation", OWNER_PROPERTY, "used", "referenced")
WRITTEN_SLACK = 1024 * 1024
"""Bytes of difference tolerated before we call a target written to since its newest
snapshot: on zfs-fuse a rollback, an aborted receive or atime updates leave ~80 KiB of
metadata that the newest snapshot no longer shares with the head."""


@dataclass
class DatasetState:
    """One dataset as ``zfs get`` shows it; ``exists`` False when there is no such dataset."""

    name: str
    exists: bool = False
    owner: str | None = None
    referenced: int = 0
    snapshots: list[Snapshot] = field(default_factory=list)
    snapshot_space: dict[str, tuple[int, int]] = field(default_factory=dict)
    """short name -> (used, referenced) of each snapshot"""

    @property
    def written(self) -> bool:
        """True when the head changed since its newest snapshot.

        zfs-fuse has no ``written`` property and its ``usedbydataset`` is unreliable, so: the
        head's size differs from the newest snapshot's, or that snapshot now owns blocks of
        its own (the head overwrote them). Writes smaller than WRITTEN_SLACK can slip by.
        """
        if not self.snapshots:
            return False
        used, referenced = self.snapshot_space.get(self.snapshots[-1].name, (0, 0))
        return used > WRITTEN_SLACK or abs(self.referenced - referenced) > WRITTEN_SLACK


def states_argv(datasets: list[str]) -> list[str]:
    """One ``zfs get`` for several datasets and their snapshots (4 columns with source)."""
    return ["zfs", "get", "-H", "-p", "-r", "-d", "1", "-o", "name,property,value,source",
            ",".join(STATE_PROPS), *[validate_dataset_name(d) for d in datasets]]


def parse_states(output: str, datasets: list[str]) -> dict[str, DatasetState]:
    """``states_argv`` output -> {dataset: DatasetState} for every requested dataset."""
    states = {d: DatasetState(d) for d in datasets}
    snapshot_lines: dict[str, list[str]] = {d: [] for d in datasets}
    for line in output.splitlines():
        parts = line.split("\t")
        if len(parts) != 4:
            continue
        name, prop, value, source = parts
        base = name.partition("@")[0]
        if base not in states:
            continue
        state = states[base]
        if "@" in name:
            snapshot_lines[base].append("\t".join(parts[:3]))
            _space(state, name.partition("@")[2], prop, value)
            continue
        state.exists = True
        if prop == OWNER_PROPERTY and value != "-" and source.startswith(("local", "received")):
            state.owner = value
        elif prop == "referenced" and value.isdigit():
            state.referenced = int(value)
    for name, lines in snapshot_lines.items():
        states[name].snapshots = zfs_argv.parse_snapshot_props("\n".join(lines), name)
    return states


def _space(state: DatasetState, short: str, prop: str, value: str) -> None:
    """Record a snapshot's used/referenced bytes."""
    if prop in ("used", "referenced") and value.isdigit():
        used, referenced = state.snapshot_space.get(short, (0, 0))
        state.snapshot_space[short] = ((int(value), referenced) if prop == "used"
                                       else (used, int(value)))


@dapx_task
async def dataset_states(node: "ProxmoxNode", datasets: list[str]) -> dict[str, DatasetState]:
    """Every dataset's existence, owner mark, head size and snapshots, in one command.

    A missing dataset is reported as ``exists=False``; any other zfs error raises CommandError.
    """
    if not datasets:
        return {}
    result = await run(node, states_argv(datasets), check=False, timeout=120)
    other = [ln for ln in result.stderr.splitlines()
             if ln.strip() and "does not exist" not in ln]
    if result.exit_status != 0 and other:
        raise CommandError(f"zfs get failed on node {node.name}: {other[-1]}",
                           exit_status=result.exit_status, stderr_tail="\n".join(other[-20:]))
    return parse_states(result.stdout, datasets)


@dapx_task
async def dataset_tree(node: "ProxmoxNode", dataset: str) -> list[str]:
    """``dataset`` and its descendants on ``node``, parents first.

    Raises InputError when the dataset does not exist or a descendant has a name dapx
    refuses; CommandError for any other zfs failure.
    """
    result = await run(node, zfs_argv.list_tree(dataset), check=False, timeout=120)
    if result.exit_status != 0:
        if "does not exist" in result.stderr:
            raise InputError(f"dataset {dataset} does not exist on node {node.name}; check "
                             "the name (zfs list) and the source node")
        raise CommandError(f"zfs list failed on node {node.name}: "
                           f"{(result.stderr.strip().splitlines() or ['?'])[-1]}",
                           exit_status=result.exit_status)
    return zfs_argv.parse_tree(result.stdout, dataset)


@dapx_task
async def take_snapshots(node: "ProxmoxNode", datasets: list[str], name: str) -> bool:
    """Snapshot every dataset as ``<ds>@<name>`` in ONE ``zfs snapshot`` (atomic across them).

    Returns True when atomic; zfs versions that take one name per command get one command
    per dataset (returns False: the disks may differ by milliseconds).
    """
    paths = [snapshot_path(d, name) for d in datasets]
    result = await run(node, ["zfs", "snapshot", *paths], check=False, timeout=120)
    if result.exit_status == 0:
        return True
    if len(paths) == 1 or "usage" not in result.stderr.lower() + result.stdout.lower():
        raise CommandError(f"zfs snapshot failed on node {node.name}: "
                           f"{(result.stderr.strip().splitlines() or ['?'])[-1]}",
                           argv=["zfs", "snapshot", *paths], exit_status=result.exit_status)
    for path in paths:
        await run(node, ["zfs", "snapshot", path], timeout=120)
    return False


@dapx_task
async def destroy_snapshots(node: "ProxmoxNode", dataset: str, names: list[str]) -> list[str]:
    """Destroy ``dataset@name`` for each name (never recursive); returns the names destroyed."""
    for name in names:
        await run(node, zfs_argv.destroy_snapshot(dataset, name), timeout=300)
    return names


@dapx_task
async def rollback(node: "ProxmoxNode", dataset: str, name: str) -> None:
    """``zfs rollback -r dataset@name``: only from a forced plan (destroys later snapshots)."""
    await run(node, zfs_argv.rollback(dataset, name), timeout=300)


@dapx_task
async def destroy_dataset(node: "ProxmoxNode", dataset: str) -> None:
    """``zfs destroy -r dataset``: only from a forced plan that replaces the target."""
    await run(node, zfs_argv.destroy_dataset(dataset), timeout=600)


@dapx_task
async def create_parents(node: "ProxmoxNode", dataset: str) -> None:
    """``zfs create -p dataset`` (idempotent): the parent a receive needs."""
    await run(node, zfs_argv.create_parents(dataset), timeout=120)


@dapx_task
async def mark_owned(node: "ProxmoxNode", dataset: str, owner: str) -> None:
    """Set ``dapx:owner=<owner>`` on a dataset dapx created (plans refuse unmarked targets)."""
    await run(node, zfs_argv.set_user_property(dataset, OWNER_PROPERTY, owner), timeout=120)


@dapx_task
async def supports_resume(node: "ProxmoxNode", pool: str) -> bool:
    """True when the node's ZFS has resumable receive (OpenZFS: ``receive_resume_token``
    exists; zfs-fuse answers 'bad property list')."""
    argv = ["zfs", "get", "-H", "-o", "value", "receive_resume_token",
            validate_dataset_name(pool)]
    return (await run(node, argv, check=False, timeout=60)).exit_status == 0


@dapx_task
async def syncoid_can_list(node: "ProxmoxNode", pool: str) -> bool:
    """True when ``zfs get -t snapshot`` works here. syncoid 2.1.0 needs it on a remote
    target: its fallback for older ZFS (zfs-fuse, Solaris) puts the ssh command in twice and
    fails with 'snapshots couldn't be listed'."""
    argv = ["zfs", "get", "-H", "-p", "-d", "1", "-t", "snapshot", "guid",
            validate_dataset_name(pool)]
    return (await run(node, argv, check=False, timeout=60)).exit_status == 0


# The direct pipeline, for nodes where syncoid cannot run (see syncoid_can_list). A constant
# script: every value arrives as a positional argument; the remote command ($7) is one string
# quoted with shlex.join, which ssh hands to the destination's shell (quoted once, there).
_PIPE = r'''exec 2>&1
base=$1 snap=$2 key=$3 known=$4 port=$5 dest=$6 remote=$7 rate=$8
if [ -n "$base" ]; then set -- -I "$base" "$snap"; else set -- "$snap"; fi
meter() { if [ -n "$rate" ]; then pv -f -n -b -i 1 -L "$rate"; else pv -f -n -b -i 1; fi; }
zfs send "$@" | meter | ssh -i "$key" -o UserKnownHostsFile="$known" \
  -o GlobalKnownHostsFile=/dev/null -o StrictHostKeyChecking=yes -o BatchMode=yes \
  -o IdentitiesOnly=yes -p "$port" "$dest" "$remote"'''


def pipe_argv(source_dataset: str, base: str | None, snapshot: str, target_host: str,
              target_dataset: str, *, key: str, known_hosts: str, port: int,
              rate: str | None) -> list[str]:
    """``zfs send [-I base] src@snap | pv | ssh dest zfs receive -F target`` as one argv."""
    import shlex

    from dapx.core.validate import validate_abs_path, validate_host, parse_bandwidth

    remote = shlex.join(["zfs", "receive", "-F", validate_dataset_name(target_dataset)])
    return ["sh", "-c", _PIPE, "sh",
            snapshot_path(source_dataset, base) if base else "",
            snapshot_path(source_dataset, snapshot), validate_abs_path(key, "ssh key"),
            validate_abs_path(known_hosts, "known_hosts file"), str(int(port)),
            f"root@{validate_host(target_host)}", remote, parse_bandwidth(rate) if rate else ""]
