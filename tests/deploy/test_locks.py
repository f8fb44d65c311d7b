"""Deploy tier, locks that never leak: against a Prefect server run the way `dapx up` runs it
(file-backed concurrency leases), a lock held by a run that died is freed at the next attempt,
a waiting run is told who holds the lock, and a held lock survives a server restart (neither
lost nor leaked)."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Iterator

import pytest

from tests.deploy.conftest import OwnServer, prefect_env


@pytest.fixture(scope="module")
def own_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OwnServer]:
    own = OwnServer(tmp_path_factory.mktemp("locks-prefect-home"))
    with prefect_env(own.home, own.api_url):
        own.start()
        yield own
        own.stop()


async def _flow_run(state: str = "RUNNING") -> uuid.UUID:
    """A flow run in ``state`` (what a holder's run looks like to the lock)."""
    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.states import State, StateType

    @flow(name="lock-holder")
    def holder() -> None:  # never run: only its flow run record matters
        pass

    async with get_client() as client:
        run = await client.create_flow_run(holder, state=State(type=StateType(state)))
    return run.id


async def _set_state(run: uuid.UUID, state: str) -> None:
    from prefect.client.orchestration import get_client
    from prefect.states import State, StateType

    async with get_client() as client:
        await client.set_flow_run_state(run, State(type=StateType(state)), force=True)


async def test_a_live_holder_is_named_and_a_dead_one_is_freed_at_once(own_server) -> None:
    from dapx.tasks.locks import LockTimeout, acquire, ensure_limit, release

    name = "dapx-test-lock-dead-holder"
    await ensure_limit(name)
    first = await _flow_run()
    lease = await acquire(name, "testing locks", 1, str(first))
    started = time.monotonic()
    with pytest.raises(LockTimeout, match=f"another run is already testing locks.*{first}.*"
                                          "running.*lease ends"):
        await acquire(name, "testing locks", 2, str(await _flow_run()))
    assert time.monotonic() - started >= 2

    await _set_state(first, "CRASHED")  # killed hard: it never released the lock
    started = time.monotonic()
    second = await acquire(name, "testing locks", 30, str(await _flow_run()))
    assert time.monotonic() - started < 5, "a dead holder's slot must be freed at once"
    assert second != lease
    await release(name, second)


async def test_a_held_lock_survives_a_server_restart(own_server) -> None:
    from prefect.client.orchestration import get_client

    from dapx.tasks.locks import LockTimeout, acquire, ensure_limit, release

    name = "dapx-test-lock-restart"
    await ensure_limit(name)
    holder = await _flow_run()
    lease = await acquire(name, "testing a restart", 1, str(holder))
    await asyncio.to_thread(own_server.restart)
    async with get_client() as client:
        # In-memory lease storage would answer 410 here (lease lost, slot leaked for good).
        await client.renew_concurrency_lease(lease, lease_duration=60)
        assert (await client.read_global_concurrency_limit_by_name(name)).active_slots == 1
    with pytest.raises(LockTimeout):  # still held: not lost either
        await acquire(name, "testing a restart", 2, str(await _flow_run()))
    await release(name, lease)
    started = time.monotonic()
    again = await acquire(name, "testing a restart", 10, str(await _flow_run()))
    assert time.monotonic() - started < 3, "the released slot must be free at once"
    await release(name, again)


async def test_a_fleet_holds_the_free_locks_at_once_and_gives_them_all_back(own_server) -> None:
    from prefect.client.orchestration import get_client

    from dapx.tasks.locks import (LockTimeout, _read_holder, acquire, ensure_limit,
                                  holding_free, release)

    names = [f"dapx-test-fleet-{i}" for i in range(3)]
    await ensure_limit(names[0])  # one exists already, the others are created on the way
    busy = await acquire(names[0], "a guest's own run", 1, str(await _flow_run()))
    async with holding_free(names) as held:
        assert held == set(names[1:])  # the busy one is left to its own run
        with pytest.raises(LockTimeout):  # and the others are really held
            await acquire(names[1], "another run", 1, str(await _flow_run()))
    async with get_client() as client:  # their holder records were written (beside the body)
        assert all([await _read_holder(client, n) for n in names[1:]])
    await release(names[0], busy)
    async with holding_free(names) as held:  # all free: one lease for every name
        assert held == set(names)
    for name in names:  # every slot was given back
        lease = await acquire(name, "after the fleet", 2, str(await _flow_run()))
        await release(name, lease)


async def test_a_guest_lock_records_its_holder_before_the_body_and_gives_the_slot_back(
        own_server) -> None:
    """``exclusive`` (every guest's run) takes the slot and writes the record naming its
    holder before the body (a run killed in its first moments is then freed at once): a
    waiter finds the record, and the slot is free after it."""
    from prefect.client.orchestration import get_client

    from dapx.tasks.locks import LockTimeout, _read_holder, acquire, exclusive, release

    name = "dapx-test-lock-exclusive"
    async with exclusive(name, "a guest's run", 1):
        async with get_client() as client:
            holder = await _read_holder(client, name)  # written before the body
        assert holder is not None and uuid.UUID(holder.lease)
        with pytest.raises(LockTimeout):  # the record's lease is really held
            await acquire(name, "another run", 1, str(await _flow_run()))
    lease = await acquire(name, "after it", 2, str(await _flow_run()))
    assert str(lease) != holder.lease
    await release(name, lease)


async def test_a_round_done_before_its_holder_records_gives_the_slots_back_without_waiting(
        own_server, monkeypatch) -> None:
    """A fleet round's holder records only name the run to waiters: a round that ends while
    they are still being written (a SQLite server answering 503 meanwhile) stops the writer
    and gives the slots back, instead of waiting for the records, and nothing is written
    after."""
    from dapx.tasks import locks

    names = ["dapx-test-lock-slow-record-a", "dapx-test-lock-slow-record-b"]
    writing, stopped = asyncio.Event(), asyncio.Event()

    async def never_done(client, lock, holder) -> None:  # noqa: ANN001 - as _write_holder
        writing.set()
        try:
            await asyncio.Event().wait()  # a write the server keeps answering busy
        finally:
            stopped.set()

    monkeypatch.setattr(locks, "_write_holder", never_done)

    async def run() -> None:
        async with locks.holding_free(names) as held:
            assert held == set(names)
            await writing.wait()

    await asyncio.wait_for(run(), 20)  # waiting for the writer would never end
    assert stopped.is_set()
    for name in names:  # the slots are free
        lease = await locks.take(name, "the next run", 2, str(await _flow_run()))
        await locks.release(name, lease)


@pytest.mark.parametrize("shared", [False, True], ids=["own-clients", "one-shared-client"])
async def test_node_slots_hold_a_slot_of_each_limit_and_a_full_node_waits(own_server,
                                                                         shared) -> None:
    """A fleet's transfer holds one slot of its source's and its destination's limits while
    it runs; with a limit full, the next transfer waits and goes in once the first is done;
    every slot is given back. A limit deleted in use is named, not ignored. The same through
    the one lock client a fleet run shares (``shared_lock_client``)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate

    from dapx.errors import InputError
    from dapx.tasks.locks import lock_client, shared_lock_client
    from dapx.tasks.node_limits import node_slots

    send, receive = f"dapx-test-node-a-send-{shared}", f"dapx-test-node-b-receive-{shared}"
    sharing = shared_lock_client() if shared else contextlib.nullcontext()
    async with sharing, get_client() as client:
        if shared:  # every lock call in the block goes through the block's client
            assert lock_client() is lock_client()
        await client.create_global_concurrency_limit(
            GlobalConcurrencyLimitCreate(name=send, limit=1))
        await client.create_global_concurrency_limit(
            GlobalConcurrencyLimitCreate(name=receive, limit=2))

        async def active() -> list[int]:
            return [(await client.read_global_concurrency_limit_by_name(n)).active_slots
                    for n in (send, receive)]

        order: list[str] = []
        first_in, first_may_leave = asyncio.Event(), asyncio.Event()

        async def first() -> None:
            async with node_slots([send, receive], str(await _flow_run())):
                order.append("first in")
                first_in.set()
                await first_may_leave.wait()
                order.append("first out")

        async def second() -> None:
            await first_in.wait()
            async with node_slots([send, receive], str(await _flow_run())):
                order.append("second in")

        both = asyncio.gather(first(), second())
        await first_in.wait()
        await asyncio.sleep(1.5)  # the second asks, and is told to wait (send is full)
        assert await active() == [1, 1] and order == ["first in"]
        first_may_leave.set()
        await asyncio.wait_for(both, 30)
        assert order == ["first in", "first out", "second in"]
        assert await active() == [0, 0]

        await client.delete_global_concurrency_limit_by_name(receive)
        with pytest.raises(InputError, match=receive):
            async with node_slots([send, receive], None):
                pass
        # the slot of the limit that is left was given back
        assert (await client.read_global_concurrency_limit_by_name(send)).active_slots == 0
