"""Retried mutating steps are safe to repeat (issue 8): the SSH connection drops right after a
command ran on the node, the task is retried by Prefect, and the retry finds the work done
instead of failing (``dataset already exists``, ``could not find any snapshots``...).

The drop is real in effect: the command runs on the lab node, then the caller sees
``ConnectionLost`` exactly as when the channel closes before the exit status arrives.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from prefect import flow

from dapx.blocks.manage import aload_nodes
from dapx.errors import ConnectionLost
from dapx.lab import estate
from test_replica_helpers import harness, lab_state, sh, zfs_snapshots

pytestmark = pytest.mark.lab

ZFS_NODE, ZFS_DISKS = "pve1", ["rpool/data/vm-100-disk-0", "rpool/data/vm-100-disk-1"]
BTRFS_NODE = "pve2"
BTRFS_DISK = "/var/lib/pve/local-btrfs/images/200/vm-200-disk-0"


@pytest.fixture(scope="module", autouse=True)
def prefect_lab(request: pytest.FixtureRequest) -> Iterator[None]:
    lab_state(request)
    yield from harness(request)


class DropAfterRun:
    """Stands in for ``dapx.tasks.ssh.run`` in one task module: the first command whose argv
    starts with ``prefix`` and that succeeds on the node is followed by the connection
    'dropping' (the caller never learns that it succeeded)."""

    def __init__(self, real, prefix: list[str]):  # noqa: ANN001
        self.real, self.prefix, self.dropped, self.calls = real, prefix, 0, []

    async def __call__(self, node, argv, **kwargs):  # noqa: ANN001, ANN204
        self.calls.append(list(argv))
        result = await self.real(node, argv, **kwargs)
        if argv[: len(self.prefix)] == self.prefix and not self.dropped and \
                result.exit_status == 0:
            self.dropped += 1
            raise ConnectionLost(f"cannot reach node {node.name} over SSH: Connection lost "
                                 "(test: after the command ran)")
        return result


def destroy_until_gone(node: str, dataset: str, name: str) -> None:
    """Remove a snapshot this module made (zfs-fuse may call it busy for a moment after a
    release or a send): later modules list every snapshot of VM 100."""
    for _ in range(20):
        if name not in zfs_snapshots(node, dataset):
            return
        sh(node, ["zfs", "destroy", f"{dataset}@{name}"], check=False)
        time.sleep(0.5)
    raise AssertionError(f"{dataset}@{name} could not be removed")


def drop_after(monkeypatch: pytest.MonkeyPatch, module, prefix: list[str]) -> DropAfterRun:  # noqa: ANN001
    wrapper = DropAfterRun(module.run, prefix)
    monkeypatch.setattr(module, "run", wrapper)
    return wrapper


async def test_zfs_snapshot_and_destroy_survive_a_drop_after_the_command(monkeypatch) -> None:  # noqa: ANN001
    from dapx.tasks import zfs

    name = f"dapx_retrytest_{int(time.time())}"

    @flow(name="retry-zfs-snapshot")
    async def snapshot_then_destroy() -> tuple[bool, list[str]]:
        (node,) = await aload_nodes(ZFS_NODE)
        atomic = await zfs.take_snapshots(node, ZFS_DISKS, name)
        taken = [d for d in ZFS_DISKS if name in zfs_snapshots(ZFS_NODE, d)]
        assert taken == ZFS_DISKS, "the first attempt's snapshot is not there"
        gone = []
        for dataset in ZFS_DISKS:
            gone += await zfs.destroy_snapshots(node, dataset, [name])
        return atomic, gone

    snap = drop_after(monkeypatch, zfs, ["zfs", "snapshot"])
    try:
        _atomic, gone = await snapshot_then_destroy()  # one command on OpenZFS; zfs-fuse
        assert snap.dropped == 1  # takes one name per command (then: one per disk)
        assert [c[:2] for c in snap.calls].count(["zfs", "snapshot"]) >= 2  # really retried
        assert gone == [name, name]
        assert all(name not in zfs_snapshots(ZFS_NODE, d) for d in ZFS_DISKS)
    finally:
        for dataset in ZFS_DISKS:
            destroy_until_gone(ZFS_NODE, dataset, name)

    # destroy dropped after it ran: the retry finds the snapshot gone and is done
    sh(ZFS_NODE, ["zfs", "snapshot", f"{ZFS_DISKS[0]}@{name}"])
    monkeypatch.undo()
    destroy = drop_after(monkeypatch, zfs, ["zfs", "destroy"])

    @flow(name="retry-zfs-destroy")
    async def destroy_only() -> list[str]:
        (node,) = await aload_nodes(ZFS_NODE)
        return await zfs.destroy_snapshots(node, ZFS_DISKS[0], [name])

    assert await destroy_only() == [name]
    assert destroy.dropped == 1 and name not in zfs_snapshots(ZFS_NODE, ZFS_DISKS[0])


async def test_a_snapshot_that_cannot_be_destroyed_still_fails() -> None:
    """'Already gone' is the only failure taken as done: a held snapshot is an error."""
    from dapx.errors import CommandError
    from dapx.tasks import zfs

    name = f"dapx_heldtest_{int(time.time())}"
    snap = f"{ZFS_DISKS[0]}@{name}"
    sh(ZFS_NODE, ["zfs", "snapshot", snap])
    sh(ZFS_NODE, ["zfs", "hold", "dapx-test", snap])
    (node,) = await aload_nodes(ZFS_NODE)
    try:
        with pytest.raises(CommandError, match="zfs destroy failed on node pve1"):
            await zfs.destroy_snapshots.fn(node, ZFS_DISKS[0], [name])
        assert name in zfs_snapshots(ZFS_NODE, ZFS_DISKS[0])
    finally:
        sh(ZFS_NODE, ["zfs", "release", "dapx-test", snap], check=False)
        destroy_until_gone(ZFS_NODE, ZFS_DISKS[0], name)


async def test_btrfs_snapshot_and_delete_survive_a_drop_after_the_command(monkeypatch) -> None:  # noqa: ANN001
    from dapx.tasks import btrfs

    name = f"dapx_retrytest_{int(time.time())}"
    path = f"{BTRFS_DISK}@{name}"

    @flow(name="retry-btrfs-snapshot")
    async def snapshot_then_delete() -> list[str]:
        (node,) = await aload_nodes(BTRFS_NODE)
        await btrfs.snapshot_readonly(node, [BTRFS_DISK], name)
        assert sh(BTRFS_NODE, ["btrfs", "property", "get", "-ts", path, "ro"]).strip() \
            == "ro=true"
        return await btrfs.delete_subvolumes(node, [path])

    snap = drop_after(monkeypatch, btrfs, ["btrfs", "subvolume", "snapshot"])
    try:
        assert await snapshot_then_delete() == [path]
        assert snap.dropped == 1
        assert sum(c[:3] == ["btrfs", "subvolume", "snapshot"] for c in snap.calls) == 2
        assert estate.run(BTRFS_NODE, ["test", "-e", path]).returncode == 1  # deleted
    finally:
        sh(BTRFS_NODE, ["btrfs", "subvolume", "delete", path], check=False)

    sh(BTRFS_NODE, ["btrfs", "subvolume", "snapshot", "-r", BTRFS_DISK, path])
    monkeypatch.undo()
    delete = drop_after(monkeypatch, btrfs, ["btrfs", "subvolume", "delete"])

    @flow(name="retry-btrfs-delete")
    async def delete_only() -> list[str]:
        (node,) = await aload_nodes(BTRFS_NODE)
        return await btrfs.delete_subvolumes(node, [path])

    try:
        assert await delete_only() == [path]
        assert delete.dropped == 1
    finally:
        sh(BTRFS_NODE, ["btrfs", "subvolume", "delete", path], check=False)
