"""The renames that set a copy aside or swap one in, repeated (or settled by the next run)
after a run was cut between the rename and the mount: the copy is mounted again, so a
filesystem volume (a container's subvol; in the lab every disk) is never left renamed but
unmounted, its files out of sight, on real zfs-fuse.

Scratch datasets under ``rpool/dapx-renames`` on pve3; the module removes them at the end.
"""

from __future__ import annotations

import pytest
from prefect import flow

from dapx.blocks.node import ProxmoxNode
from dapx.lab import estate
from dapx.tasks import zfs
from dapx.tasks.ssh import node_sessions
from test_replica_helpers import scratch_harness, sh
from tests.helpers import tiny_guests

pytestmark = pytest.mark.lab

NODE, ROOT = "pve3", "rpool/dapx-renames"


@pytest.fixture(scope="module", autouse=True)
def prefect_lab(request: pytest.FixtureRequest):
    yield from scratch_harness(request, NODE, ROOT)


def make(name: str, text: str) -> str:
    """A mounted filesystem with its child (a container's subvol and its tree) holding text."""
    dataset = f"{ROOT}/{name}"
    sh(NODE, ["zfs", "create", dataset])
    sh(NODE, ["zfs", "create", f"{dataset}/child"])
    sh(NODE, ["sh", "-c", 'echo "$1" > "/$2/child/file"', "sh", text, dataset])
    return dataset


def cut_after_rename(old: str, new: str) -> None:
    """What a run cut between its rename and its mount leaves: ``new``, unmounted."""
    sh(NODE, ["zfs", "umount", old])
    sh(NODE, ["zfs", "rename", old, new])
    assert set(mounted(new).values()) == {"no"}


def mounted(dataset: str) -> dict[str, str]:
    out = sh(NODE, ["zfs", "list", "-H", "-o", "name,mounted", "-r", dataset])
    return dict(line.split("\t") for line in out.splitlines())


def content(dataset: str) -> str:
    return sh(NODE, ["cat", f"/{dataset}/child/file"]).strip()


async def test_a_repeated_rename_mounts_what_a_cut_left_unmounted() -> None:
    old, new = make("ct-101", "guest data"), f"{ROOT}/ct-9101"
    cut_after_rename(old, new)
    node = await ProxmoxNode.aload(NODE)
    async with node_sessions():
        await zfs.rename_unmounted(node, old, new)
    assert mounted(new) == {new: "yes", f"{new}/child": "yes"}
    assert content(new) == "guest data"
    async with node_sessions():  # and once more: nothing left to do, nothing changes
        await zfs.rename_unmounted(node, old, new)
    assert mounted(new) == {new: "yes", f"{new}/child": "yes"}


async def test_a_repeated_swap_mounts_the_copy_swapped_in() -> None:
    target, incoming, old = make("replica", "old copy"), make("incoming", "new copy"), \
        f"{ROOT}/old"
    sh(NODE, ["zfs", "umount", target])
    sh(NODE, ["zfs", "rename", target, old])
    cut_after_rename(incoming, target)
    node = await ProxmoxNode.aload(NODE)
    async with node_sessions():
        await zfs.swap_in.fn(node, target, incoming, old)
    assert mounted(target) == {target: "yes", f"{target}/child": "yes"}
    assert content(target) == "new copy"


async def test_a_repeated_renumber_mounts_the_volume_a_cut_left_unmounted() -> None:
    from dapx.tasks.renumber import renumber_guest

    old, new = 7301, 7302
    tiny_guests.make(NODE, [old])
    try:
        before = sh(NODE, ["sha256sum", f"/rpool/data/vm-{old}-disk-0/disk.raw"]).split()[0]
        cut_after_rename(f"rpool/data/vm-{old}-disk-0", f"rpool/data/vm-{new}-disk-0")
        node = await ProxmoxNode.aload(NODE)
        async with node_sessions():
            assert await renumber_guest.fn(node, "qemu", old, new) is True
        assert mounted(f"rpool/data/vm-{new}-disk-0") == {f"rpool/data/vm-{new}-disk-0": "yes"}
        after = sh(NODE, ["sha256sum", f"/rpool/data/vm-{new}-disk-0/disk.raw"]).split()[0]
        assert after == before
        conf = sh(NODE, ["cat", f"/etc/pve/nodes/{NODE}/qemu-server/{new}.conf"])
        assert f"local-zfs:vm-{new}-disk-0" in conf
        assert estate.run(NODE, ["test", "-e", f"/etc/pve/nodes/{NODE}/qemu-server/{old}.conf"]
                          ).returncode == 1
    finally:
        tiny_guests.remove(NODE, [old, new])


async def test_the_next_run_mounts_a_swap_cut_before_its_mount() -> None:
    from dapx.flows import resend

    target = make("vm-9102-disk-0", "new copy")
    staging = resend.staging_for([target], tree=False)
    old = staging.old[target]
    sh(NODE, ["zfs", "create", "-p", old])  # the old copy, renamed aside
    sh(NODE, ["zfs", "umount", target])  # the run died after the renames, before the mount
    node = await ProxmoxNode.aload(NODE)

    @flow  # settle_swaps calls tasks: inside a flow run, as in the replica flow
    async def next_run() -> dict[str, zfs.DatasetState]:
        async with node_sessions():
            found = await zfs.dataset_states(node, staging.all_names())
            return await resend.settle_swaps(node, staging, found, dry_run=False)

    settled = await next_run()
    assert mounted(target) == {target: "yes", f"{target}/child": "yes"}
    assert content(target) == "new copy"
    assert settled[target].exists and not settled[old].exists
