"""Per-node limits for fleet runs: Prefect global concurrency limits the product creates, one
for the replica runs sending from a node and one for those receiving on it. Every job's guests
share them, whichever worker runs the job, so a node never carries more transfers at once than
its limit however many fleet jobs overlap.

A limit is created with ``DEFAULT_NODE_SLOTS`` the first time a run needs it; change a node's
value with Prefect's own command (``prefect gcl update dapx-node-pve1-send --limit 8``): it is
never reset. Slots are taken with a lease as the locks' are (``dapx.tasks.locks``: renewed
while the guest runs), so a run that dies frees its slots within a lease (60 s).
"""

from __future__ import annotations

import asyncio
from contextlib import asynccontextmanager
from typing import AsyncIterator

from dapx.core.fleet import DEFAULT_NODE_SLOTS


async def node_limits(names: list[str]) -> dict[str, int]:
    """The value of each limit in ``names``, creating missing ones with DEFAULT_NODE_SLOTS."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    async with get_client() as client:
        async def one(name: str) -> int:
            try:
                return (await client.read_global_concurrency_limit_by_name(name)).limit
            except ObjectNotFound:
                pass
            try:
                await client.create_global_concurrency_limit(
                    GlobalConcurrencyLimitCreate(name=name, limit=DEFAULT_NODE_SLOTS))
            except ObjectAlreadyExists:  # another run made it meanwhile
                return (await client.read_global_concurrency_limit_by_name(name)).limit
            return DEFAULT_NODE_SLOTS

        values = await asyncio.gather(*(one(n) for n in names))
    return dict(zip(names, values))


@asynccontextmanager
async def node_slots(names: list[str], flow_run: str | None) -> AsyncIterator[None]:
    """Hold one slot of every limit in ``names`` (taken together, so two runs never deadlock
    holding one each) for the body, waiting as long as it takes; the lease is renewed while
    the body runs and released after it.

    The locks' own lease calls, not Prefect's ``concurrency()``: that starts a thread per
    holder which builds a client of its own (~55 ms of CPU each here), and a fleet's 100
    transfers spent 23% of their run's CPU on them (measured with py-spy)."""
    from dapx.tasks.locks import kept, wait_for_slots

    lease = await wait_for_slots(names, flow_run)
    async with kept({lease: names}):
        yield
