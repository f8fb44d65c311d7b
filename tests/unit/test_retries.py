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
    the lock's request goes again after 0.1 s, not after the client's own 2 s (which it
    sleeps even when told to retry 0 times). A real HTTP server on loopback answers 503
    twice, then 204; any other error is raised at once."""
    import asyncio
    import time

    import httpx
    from prefect.client.schemas.actions import VariableUpdate
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from dapx.tasks.locks import lock_client, soon_again

    answers: list[int] = [503, 503, 204]
    seen: list[str] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = (await reader.readuntil(b"\r\n\r\n")).decode()
        length = next((int(h.split(":")[1]) for h in head.split("\r\n")
                       if h.lower().startswith("content-length:")), 0)
        await reader.readexactly(length)
        method, path = head.split()[:2]
        status = 404 if "/csrf-token" in path else answers.pop(0)  # no CSRF here
        seen.append(f"{method} {path} {status}")
        body = b"" if status < 300 else b'{"detail": "no"}'
        writer.write(f"HTTP/1.1 {status} X\r\nContent-Type: application/json\r\n"
                     f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    update = VariableUpdate(name="dapx-lock-x", value="1")
    try:
        with temporary_settings({PREFECT_API_URL: f"http://127.0.0.1:{port}/api"}):
            async with lock_client() as client:
                started = time.monotonic()
                await soon_again(lambda: client.update_variable(update))
                took = time.monotonic() - started
                answers[:] = [400]
                with pytest.raises(httpx.HTTPStatusError):
                    await soon_again(lambda: client.update_variable(update))
    finally:
        server.close()
    assert [line for line in seen if "csrf" not in line] == [
        "PATCH /api/variables/name/dapx-lock-x 503", "PATCH /api/variables/name/dapx-lock-x 503",
        "PATCH /api/variables/name/dapx-lock-x 204", "PATCH /api/variables/name/dapx-lock-x 400"]
    assert took < 1.0, f"{took:.2f} s"


async def test_a_holder_record_that_fails_leaves_the_others_written_and_says_how_many(
        monkeypatch, caplog) -> None:  # noqa: ANN001
    import contextlib
    import uuid

    from dapx.tasks import locks

    written: list[str] = []

    async def write(client, name: str, holder) -> None:  # noqa: ANN001
        if name == "b":
            raise ConnectionError("server went away")
        written.append(name)

    @contextlib.asynccontextmanager
    async def client():  # noqa: ANN202 - the writes above never use it
        yield None

    monkeypatch.setattr(locks, "_write_holder", write)
    monkeypatch.setattr(locks, "lock_client", client)
    with caplog.at_level("WARNING"):
        await locks._write_holders({uuid.uuid4(): ["a", "b", "c"]}, None)
    assert written == ["a", "c"]
    assert "holder records of 1 of 3 lock(s): server went away" in caplog.text
