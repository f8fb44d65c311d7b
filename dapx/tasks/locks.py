"""Global concurrency limits: one run at a time per guest and destination (DESIGN safety rule).

The product creates its own limits (limit 1) before using them, so nobody has to set them up
in the UI; ``strict=True`` makes a missing limit an error instead of a silent no-op. A second
run waits for the slot, then fails with a message naming what holds it.
"""

from __future__ import annotations

import re
from contextlib import AsyncExitStack, asynccontextmanager
from typing import AsyncIterator, Awaitable, Callable

from dapx.errors import InputError, TransientError

DEFAULT_WAIT = 600.0
"""Seconds a run waits for another run of the same guest and destination."""

_NAME = re.compile(r"[a-z0-9][a-z0-9.-]{0,199}")


class LockTimeout(TransientError):
    """Another run held the slot for longer than we were willing to wait."""


def replica_lock_name(source: str, vmid: int, destination: str) -> str:
    """``dapx-replica-pve1-100-to-pve3``: the limit for one guest replicated to one node."""
    name = f"dapx-replica-{source}-{vmid}-to-{destination}"
    if not _NAME.fullmatch(name):
        raise InputError(f"cannot build a lock name from {source!r}, {vmid!r}, {destination!r}")
    return name


def dataset_lock_name(source: str, dataset: str, destination: str) -> str:
    """``dapx-dataset-pve1-rpool-data-share-to-pve3-1a2b3c4d``: one dataset replicated to
    one node. Dataset names may hold capitals, ``_`` and ``:``, which limit names may not:
    they are folded to dashes and a hash of the exact names keeps different datasets apart."""
    import hashlib

    digest = hashlib.sha256(f"{source}\0{dataset}\0{destination}".encode()).hexdigest()[:8]
    folded = re.sub(r"[^a-z0-9.-]+", "-", dataset.lower())[:120]
    name = f"dapx-dataset-{source}-{folded}-to-{destination}-{digest}"
    if not _NAME.fullmatch(name):
        raise InputError(f"cannot build a lock name from {source!r}, {dataset!r}, "
                         f"{destination!r}")
    return name


async def ensure_limit(name: str, limit: int = 1) -> None:
    """Create the global concurrency limit ``name`` (limit 1) unless it exists already."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    async with get_client() as client:
        try:
            await client.read_global_concurrency_limit_by_name(name)
            return
        except ObjectNotFound:
            pass
        try:
            await client.create_global_concurrency_limit(
                GlobalConcurrencyLimitCreate(name=name, limit=limit))
        except ObjectAlreadyExists:  # another run created it between our two calls
            pass


@asynccontextmanager
async def exclusive(name: str, what: str, wait: float = DEFAULT_WAIT) -> AsyncIterator[None]:
    """Hold the slot of limit ``name`` for the body; ``what`` names the work in messages.

    Raises LockTimeout when no slot frees up within ``wait`` seconds. Only the acquisition is
    guarded: a timeout raised by the body itself passes through unchanged.
    """
    from prefect.concurrency.asyncio import (
        AcquireConcurrencySlotTimeoutError,
        concurrency,
    )

    await ensure_limit(name)
    async with AsyncExitStack() as stack:
        try:
            await stack.enter_async_context(
                concurrency(name, occupy=1, timeout_seconds=wait, strict=True))
        except AcquireConcurrencySlotTimeoutError:
            raise LockTimeout(f"another run is already {what} (concurrency limit {name!r} "
                              f"held); waited {wait:g} s. Try again when it has finished") from None
        yield


async def run_exclusively(name: str, what: str, wait: float, dry_run: bool,
                          body: Callable[[bool], Awaitable[None]]) -> None:
    """``body(dry_run)`` with the flow run's node sessions open, holding lock ``name`` unless
    it is a dry run (a plan changes nothing, so it never waits for a running transfer)."""
    from dapx.tasks.ssh import node_sessions

    async with node_sessions():
        if dry_run:
            await body(True)
        else:
            async with exclusive(name, what, wait):
                await body(False)
