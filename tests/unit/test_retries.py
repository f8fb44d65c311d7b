"""Task retries follow the error's type: a transient error is retried, a permanent one is not,
in sync and in async tasks alike (retry_if_transient is every DAPX task's retry condition)."""

from __future__ import annotations

import asyncio

import pytest
from prefect import flow, task

from dapx.errors import CommandError, ConnectionLost, TransientCommandError, retry_if_transient

RETRY = dict(retries=2, retry_delay_seconds=0, retry_condition_fn=retry_if_transient)


def test_transient_errors_are_retried_permanent_ones_are_not(prefect_harness) -> None:  # noqa: ANN001
    calls = {"async transient": 0, "async permanent": 0, "sync transient": 0, "busy": 0}

    @task(**RETRY)
    async def async_transient() -> None:
        calls["async transient"] += 1
        raise ConnectionLost("connection to pve1 lost")

    @task(**RETRY)
    async def async_permanent() -> None:
        calls["async permanent"] += 1
        raise CommandError("cannot open 'rpool/x': dataset does not exist")

    @task(**RETRY)
    def sync_transient() -> None:
        calls["sync transient"] += 1
        raise ConnectionLost("connection to pve1 lost")

    @task(**RETRY)
    async def busy_then_ok() -> str:
        calls["busy"] += 1
        if calls["busy"] < 2:
            raise TransientCommandError("cannot destroy: dataset is busy")
        return "done"

    @flow
    async def run_all() -> str:
        for coro in (async_transient, async_permanent):
            try:
                await coro()
            except Exception:
                pass
        try:
            sync_transient()
        except ConnectionLost:
            pass
        return await busy_then_ok()

    assert asyncio.run(run_all()) == "done"
    assert calls == {"async transient": 3, "async permanent": 1, "sync transient": 3, "busy": 2}


async def test_a_busy_prefect_server_is_asked_again_within_a_fraction_of_a_second() -> None:
    """A SQLite Prefect server answers 503 to a write while it stores another run's events:
    the lock's request goes again after 0.1 s, not after the client's own 2 s."""
    import time

    import httpx

    from dapx.tasks.locks import soon_again

    answers = [503, 503, 200]

    async def call() -> int:
        status = answers.pop(0)
        if status != 200:
            request = httpx.Request("POST", "http://server/api/x")
            raise httpx.HTTPStatusError("busy", request=request,
                                        response=httpx.Response(status, request=request))
        return status

    started = time.monotonic()
    assert await soon_again(call) == 200 and not answers
    assert time.monotonic() - started < 1.0
    answers[:] = [409]
    with pytest.raises(httpx.HTTPStatusError):
        await soon_again(call)
