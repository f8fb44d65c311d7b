"""One SSH session per node per flow run, shared by the run's tasks.

``get_session(node)`` returns the current flow run's open session to that node (a
``dapx.transports.ssh.NodeSession``), opening it on first use; ``async with node_sessions():``
around a flow body closes them at the end. Commands run by a session are logged to the
Prefect run logger, so they show in the run's log in the UI.
"""

from __future__ import annotations

import asyncio
import uuid
from contextlib import asynccontextmanager
from contextvars import ContextVar
from typing import TYPE_CHECKING, AsyncIterator

from dapx.tasks.base import run_logger
from dapx.transports import ssh as transport
from dapx.transports.ssh import NodeSession, _on_transport

if TYPE_CHECKING:
    from dapx.blocks.node import ProxmoxNode


transport.command_logger = run_logger

_sessions: dict[tuple[str, str], NodeSession] = {}
_locks: dict[tuple[str, str], asyncio.Lock] = {}
_shared_scope: ContextVar[str | None] = ContextVar("dapx_shared_ssh_scope", default=None)


def _run_key() -> str:
    """Id of the current flow run ("" outside any run): sessions are shared within one run,
    or within the ``shared_sessions`` scope around it (a fleet run and its guests' runs)."""
    from prefect.context import FlowRunContext, TaskRunContext

    shared = _shared_scope.get()
    if shared is not None:
        return shared
    task_ctx = TaskRunContext.get()
    if task_ctx is not None and task_ctx.task_run.flow_run_id:
        return str(task_ctx.task_run.flow_run_id)
    flow_ctx = FlowRunContext.get()
    if flow_ctx is not None and flow_ctx.flow_run is not None:
        return str(flow_ctx.flow_run.id)
    return ""


async def get_session(node: "ProxmoxNode") -> NodeSession:
    """The current flow run's open session to ``node``, connected on first use.

    Raises what ``NodeSession.connect`` raises. Close with ``node_sessions()`` or ``close_sessions``.
    """
    key = (_run_key(), node.name)
    session = _sessions.get(key)
    if session is not None and session.is_open:
        return session
    lock = _locks.setdefault(key, asyncio.Lock())  # dict ops are atomic under the GIL
    # The lock lives on the transport loop: every connect for a key is serialised there.
    return await _on_transport(_open_locked(key, node, lock))


async def connect_ahead(*nodes: "ProxmoxNode") -> None:
    """Open the run's sessions to ``nodes`` now, side by side, so that the first task that
    needs one finds it ready. A node that cannot be reached is left for that task to report
    (with its retries and its one-line cause): nothing is raised here."""
    await asyncio.gather(*(get_session(n) for n in nodes), return_exceptions=True)


async def _open_locked(key: tuple[str, str], node: "ProxmoxNode", lock: asyncio.Lock) -> NodeSession:
    async with lock:
        session = _sessions.get(key)
        if session is None or not session.is_open:
            session = NodeSession(node)
            await session.connect()
            _sessions[key] = session
        return session


async def close_sessions(run_key: str | None = None) -> None:
    """Close every cached session of one flow run (default: the current one)."""
    key = _run_key() if run_key is None else run_key
    for cache_key in [k for k in _sessions if k[0] == key]:
        session = _sessions.pop(cache_key)
        _locks.pop(cache_key, None)
        await session.close()


@asynccontextmanager
async def node_sessions() -> AsyncIterator[None]:
    """Wrap a flow body: its tasks share one connection per node, closed when the body ends
    (inside ``shared_sessions``, by the scope's owner instead)."""
    if _shared_scope.get() is not None:
        yield
        return
    key = _run_key()
    try:
        yield
    finally:
        await close_sessions(key)


@asynccontextmanager
async def shared_sessions() -> AsyncIterator[None]:
    """Every flow run started in the body (a fleet run's guests, as subflows) shares one
    connection per node, closed when the body ends: a guest's run costs no SSH handshake.
    Commands on a shared connection queue past ``MAX_CHANNELS`` at once."""
    token = _shared_scope.set(f"shared-{uuid.uuid4()}")
    key = _shared_scope.get()
    try:
        yield
    finally:
        _shared_scope.reset(token)
        await close_sessions(key)


async def run(node: "ProxmoxNode", argv: list[str], **kwargs):  # noqa: ANN201 - a Result
    """Run ``argv`` on ``node`` over the flow run's shared session (see ``NodeSession.run``)."""
    return await (await get_session(node)).run(argv, **kwargs)


def command_failure(node: "ProxmoxNode", what: str, argv: list[str], result) -> Exception:  # noqa: ANN001
    """The error ``run(check=True)`` would raise for ``result`` (a finished command that
    failed): TransientCommandError when stderr says busy, else CommandError, naming ``what``
    and the node with stderr's last line. For tasks that inspect a failure before raising."""
    from dapx.transports.ssh import classify_stderr

    last = ((result.stderr or result.stdout).strip().splitlines() or ["?"])[-1]
    return classify_stderr(result.stderr)(f"{what} failed on node {node.name}: {last}",
                                          argv=argv, exit_status=result.exit_status)
