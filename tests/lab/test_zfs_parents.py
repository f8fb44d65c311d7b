"""The parent a receive needs, created by several runs at the same moment (a fleet's first
round: every guest's run creates ``rpool/replica`` on its destination): every run goes on,
on real zfs-fuse, and a parent that cannot be made still fails with ZFS's own words.

Scratch datasets under ``rpool/dapx-parents`` on pve1; the module removes them at the end.
"""

from __future__ import annotations

import asyncio

import pytest

from dapx.blocks.node import ProxmoxNode
from dapx.errors import CommandError
from dapx.tasks import zfs
from dapx.tasks.ssh import node_sessions
from test_replica_helpers import scratch_harness, sh

pytestmark = pytest.mark.lab

NODE, ROOT = "pve1", "rpool/dapx-parents"


@pytest.fixture(scope="module", autouse=True)
def prefect_lab(request: pytest.FixtureRequest):
    yield from scratch_harness(request, NODE, ROOT)


async def test_runs_creating_the_same_parent_at_once_all_go_on() -> None:
    node = await ProxmoxNode.aload(NODE)
    async with node_sessions():
        for attempt in range(6):  # new levels each round: any of them may be raced for
            parent = f"{ROOT}/round-{attempt}/site/replica"
            outcomes = await asyncio.gather(*(zfs.create_parents.fn(node, parent)
                                              for _ in range(6)), return_exceptions=True)
            assert [repr(o) for o in outcomes if o is not None] == []
            assert sh(NODE, ["zfs", "list", "-H", "-o", "name", parent]).strip() == parent
        with pytest.raises(CommandError, match="no-such-pool"):
            await zfs.create_parents.fn(node, "no-such-pool/replica")
