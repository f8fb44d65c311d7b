"""The guest-snapshot tasks' PVE calls against fakepve (PVE 9 schema): create with and
without RAM state, list, roll back, delete, each followed by its UPID; a repeat is a no-op."""

from __future__ import annotations

import asyncio

import pytest

from dapx.errors import ApiError, NotFoundError
from dapx.tasks import pve as tasks
from tests.api.test_pve_client import cert_fingerprint, node_block, pve  # noqa: F401


@pytest.fixture
def block(pve, cert_fingerprint):  # noqa: F811
    return node_block(pve, cert_fingerprint)


def test_snapshot_tasks_against_the_pve_schema(block) -> None:
    async def scenario() -> list[str]:
        kind = await tasks.guest_kind.fn(block, 100)
        assert kind == "qemu"
        await tasks.create_snapshot.fn(block, kind, 100, "with-ram", "dapx", True)
        await tasks.create_snapshot.fn(block, kind, 100, "with-ram", "dapx", True)  # repeat
        await tasks.create_snapshot.fn(block, kind, 100, "plain_1", None, False)
        listed = await tasks.list_snapshots.fn(block, kind, 100)
        await tasks.rollback_snapshot.fn(block, kind, 100, "plain_1")
        await tasks.delete_snapshot.fn(block, kind, 100, "with-ram")
        await tasks.delete_snapshot.fn(block, kind, 100, "with-ram")  # repeat: already gone
        after = await tasks.list_snapshots.fn(block, kind, 100)
        assert [s["name"] for s in after] == ["plain_1"]
        return [s["name"] for s in listed]

    assert sorted(asyncio.run(scenario())) == ["plain_1", "with-ram"]


def test_unknown_guest_and_refused_names(block) -> None:
    with pytest.raises(NotFoundError, match="guest 555 is not on node pve1"):
        asyncio.run(tasks.guest_kind.fn(block, 555))
    client = block.api()
    with pytest.raises(ApiError):
        client.create_snapshot("pve1", "qemu", 100, "1-bad")
