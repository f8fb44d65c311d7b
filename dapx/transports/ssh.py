"""SSH transport (asyncssh): pinned host keys, argv commands quoted once, typed errors.

``NodeSession`` is one SSH connection to one node (any ``SshEndpoint``: the node block is
one). Commands are argv lists joined once with ``shlex.join`` (``dapx.core.quoting``); every
call has a timeout; failures become typed errors:

- connection refused/reset/timed out -> ``ConnectionLost`` (a retry may help);
- host key differs from the pinned one -> ``HostKeyError`` naming the node and both fingerprints;
- key refused -> ``AuthError`` naming the node and user;
- non-zero exit -> ``CommandError`` (or ``TransientCommandError`` when stderr says "busy").

All SSH I/O runs on one background event loop, so tasks running in worker threads (each with
its own loop) can share one connection; ``dapx.tasks.ssh`` keeps one per node per flow run.
This module imports nothing of Prefect or the blocks (layers: blocks -> transports -> core).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import signal
import threading
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Optional, Protocol, TypeVar

import asyncssh

from dapx.core.quoting import join_argv, with_env
from dapx.errors import (AuthError, CommandError, ConnectionLost, HostKeyError, InputError,
                         TransientCommandError)

T = TypeVar("T")

DEFAULT_TIMEOUT = 120.0
"""Seconds a command may run unless the caller says otherwise."""

STDERR_TAIL_LINES = 20
MAX_CHANNELS = 8
"""Commands at once on one connection: OpenSSH refuses channels past its MaxSessions (10 by
default), so a connection shared by many runs queues its commands here instead."""

TRANSIENT_STDERR = (
    "dataset is busy", "pool is busy", "device or resource busy", "resource temporarily unavailable",
    "could not get lock", "unable to acquire", "can't lock file", "timeout waiting",
    "connection reset", "broken pipe", "temporary failure",
)
"""Lower-case stderr fragments meaning "try again later" (see ``classify_stderr``)."""

# Host key algorithms to ask for when recording a key: ed25519 first, as OpenSSH prefers it.
_RECORD_HOST_KEY_ALGS = ["ssh-ed25519", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384",
                         "ecdsa-sha2-nistp521", "rsa-sha2-512", "rsa-sha2-256"]


class SshEndpoint(Protocol):
    """What a session needs to know about a node (``dapx.blocks.node.ProxmoxNode`` is one)."""

    name: str
    host: str
    ssh_port: int
    ssh_user: str
    ssh_host_key: Optional[str]

    async def ssh_client_key(self) -> tuple[str, str]:
        """(private key PEM, where it came from for messages); raises InputError."""
        ...


@dataclass(frozen=True)
class Result:
    """What a finished command produced (``stdout`` is empty for streamed commands)."""

    stdout: str
    stderr: str
    exit_status: int


def classify_stderr(stderr: str) -> type[CommandError]:
    """``TransientCommandError`` when stderr says the failure is temporary, else ``CommandError``."""
    lowered = stderr.lower()
    if any(fragment in lowered for fragment in TRANSIENT_STDERR):
        return TransientCommandError
    return CommandError


def _module_logger() -> logging.Logger | logging.LoggerAdapter:
    return logging.getLogger("dapx.ssh")


command_logger: Callable[[], logging.Logger | logging.LoggerAdapter] = _module_logger
"""Where each command line is logged; ``dapx.tasks.ssh`` points it at the Prefect run logger
so the commands show in the run's log in the UI."""


def _logger() -> logging.Logger | logging.LoggerAdapter:
    return command_logger()


# ----------------------------------------------------------------------------------------------
# One background event loop for all SSH I/O


class _TransportLoop:
    """A daemon thread running the event loop every asyncssh connection lives on."""

    _loop: Optional[asyncio.AbstractEventLoop] = None
    _guard = threading.Lock()

    @classmethod
    def get(cls) -> asyncio.AbstractEventLoop:
        with cls._guard:
            if cls._loop is None or cls._loop.is_closed():
                loop = asyncio.new_event_loop()
                threading.Thread(target=loop.run_forever, name="dapx-ssh", daemon=True).start()
                cls._loop = loop
            return cls._loop


async def _on_transport(coro: Awaitable[T]) -> T:
    """Run ``coro`` on the transport loop and await its result from any loop."""
    loop = _TransportLoop.get()
    try:
        running = asyncio.get_running_loop()
    except RuntimeError:  # pragma: no cover - always called from a coroutine
        running = None
    if running is loop:
        return await coro
    return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, loop))  # type: ignore[arg-type]


# ----------------------------------------------------------------------------------------------
# The session


class _PinningClient(asyncssh.SSHClient):
    """Remembers the host key the server presented, and accepts it only in record mode."""

    def __init__(self, accept_unknown: bool) -> None:
        self.accept_unknown = accept_unknown
        self.presented: Optional[asyncssh.SSHKey] = None

    def validate_host_public_key(self, host: str, addr: str, port: int, key: asyncssh.SSHKey) -> bool:
        # Only called for keys NOT in the trusted (pinned) set.
        self.presented = key
        return self.accept_unknown


def _openssh_line(key: asyncssh.SSHKey) -> str:
    """``"ssh-ed25519 AAAA..."`` without a comment."""
    return " ".join(key.export_public_key("openssh").decode().split()[:2])


class NodeSession:
    """One SSH connection to one node; ``async with NodeSession(node) as s: await s.run([...])``.

    ``record=True`` is for the node test only: when the block has no pinned host key, the key
    the server presents is accepted and exposed as ``host_key`` for the caller to pin.
    Without a pinned key and without ``record``, connecting raises HostKeyError.
    """

    def __init__(self, node: SshEndpoint, *, record: bool = False, connect_timeout: float = 15.0,
                 default_timeout: float = DEFAULT_TIMEOUT) -> None:
        self.node = node
        self.record = record
        self.connect_timeout = connect_timeout
        self.default_timeout = default_timeout
        self.host_key: Optional[str] = node.ssh_host_key
        self._conn: Optional[asyncssh.SSHClientConnection] = None
        self._channels: Optional[asyncio.Semaphore] = None  # made on the transport loop

    @property
    def where(self) -> str:
        """``"node pve1 (root@198.18.213.11:22)"``, for messages."""
        return f"node {self.node.name} ({self.node.ssh_user}@{self.node.host}:{self.node.ssh_port})"

    @property
    def is_open(self) -> bool:
        return self._conn is not None and not self._conn.is_closed()

    @property
    def host_key_recorded(self) -> bool:
        """True when this session accepted a host key that was not pinned before."""
        return self.is_open and self.node.ssh_host_key is None and self.host_key is not None

    async def __aenter__(self) -> "NodeSession":
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- connecting ----------------------------------------------------------------------------

    async def connect(self) -> None:
        """Open the connection. Raises HostKeyError, AuthError, ConnectionLost, InputError."""
        if self.is_open:
            return
        if not self.node.ssh_host_key and not self.record:
            raise HostKeyError(f"{self.where} has no pinned SSH host key: test the node first "
                               f"(dapx node test {self.node.name}) to record it")
        key = await self._client_key()
        await _on_transport(self._connect(key))

    async def _client_key(self) -> asyncssh.SSHKey:
        """The private key to log in with (the endpoint says where it comes from)."""
        pem, source = await self.node.ssh_client_key()
        try:
            return asyncssh.import_private_key(pem)
        except (asyncssh.KeyImportError, ValueError):
            # Never include the key text: the message would carry the secret.
            raise InputError(f"{source} is not a valid unencrypted OpenSSH private key") from None

    async def _connect(self, client_key: asyncssh.SSHKey) -> None:
        pinned = asyncssh.import_public_key(self.node.ssh_host_key) if self.node.ssh_host_key else None
        client = _PinningClient(accept_unknown=pinned is None and self.record)
        algs = [a.decode() for a in pinned.sig_algorithms] if pinned else _RECORD_HOST_KEY_ALGS
        try:
            conn, _ = await asyncssh.create_connection(
                lambda: client, self.node.host, self.node.ssh_port,
                # Trust exactly the pinned key; a (trusted, CA, revoked) tuple never falls back
                # to ~/.ssh/known_hosts.
                known_hosts=([pinned] if pinned else [], [], []),
                server_host_key_algs=algs,
                username=self.node.ssh_user, client_keys=[client_key], agent_path=None,
                password=None, kbdint_auth=False, gss_auth=False, host_based_auth=False,
                preferred_auth="publickey", config=None,
                connect_timeout=self.connect_timeout, login_timeout=self.connect_timeout,
                keepalive_interval=15, keepalive_count_max=4)
        except asyncssh.HostKeyNotVerifiable:
            raise self._host_key_error(pinned, client.presented) from None
        except asyncssh.KeyExchangeFailed as exc:
            if pinned is not None and "host key" in exc.reason.lower():
                raise self._host_key_error(pinned, None) from None
            raise ConnectionLost(f"SSH key exchange with {self.where} failed: {exc.reason}") from None
        except asyncssh.PermissionDenied:
            raise AuthError(f"SSH key refused by {self.where}: authorise the orchestrator's public key "
                            f"in ~{self.node.ssh_user}/.ssh/authorized_keys on {self.node.name}") from None
        except (OSError, asyncio.TimeoutError, asyncssh.DisconnectError) as exc:
            raise ConnectionLost(f"cannot reach {self.where} over SSH: {_reason(exc)}") from None
        self._conn = conn
        server_key = conn.get_server_host_key()
        self.host_key = _openssh_line(server_key) if server_key else self.host_key

    def _host_key_error(self, pinned: Optional[asyncssh.SSHKey],
                        presented: Optional[asyncssh.SSHKey]) -> HostKeyError:
        got = presented.get_fingerprint("sha256") if presented else "no key of the pinned type"
        if pinned is None:
            return HostKeyError(f"{self.where} presented an unknown SSH host key {got}: "
                                f"test the node to record it")
        return HostKeyError(
            f"SSH host key of {self.where} changed: expected {pinned.get_fingerprint('sha256')}, got {got}. "
            f"If the node was reinstalled on purpose, clear its pinned host key and test it again")

    async def close(self) -> None:
        """Close the connection (idempotent)."""
        conn, self._conn = self._conn, None
        if conn is not None:
            await _on_transport(_close(conn))

    # -- commands ------------------------------------------------------------------------------

    async def run(self, argv: list[str], *, input: str | bytes | None = None,
                  timeout: float | None = None, check: bool = True,
                  env: Mapping[str, str] | None = None,
                  classify: Callable[[str], type[CommandError]] = classify_stderr) -> Result:
        """Run ``argv`` on the node and return its output.

        In: argv (never a shell string; never secrets), optional stdin, timeout in seconds
        (default ``default_timeout``), ``check`` to raise on non-zero exit, ``env`` prefixed via
        ``env NAME=VALUE``, ``classify`` mapping stderr to the error class.
        Raises: CommandError/TransientCommandError (exit status, stderr tail), ConnectionLost.
        """
        args = with_env(argv, env)
        command = join_argv(args)
        limit = timeout or self.default_timeout
        _logger().info("%s: %s", self.node.name, command)
        await self.connect()
        data = input.encode() if isinstance(input, str) else input
        proc = await _on_transport(self._guard(self._run(command, data, limit), args, limit))
        result = Result(stdout=_text(proc.stdout), stderr=_text(proc.stderr),
                        exit_status=_exit_status(proc))
        if check and result.exit_status != 0:
            raise self._command_error(args, result.exit_status, result.stderr, classify)
        return result

    async def _run(self, command: str, data: bytes | None, limit: float) -> asyncssh.SSHCompletedProcess:
        assert self._conn is not None
        if data == b"":  # asyncssh sends no EOF for empty input: the command would wait forever
            return await self._conn.run(command, stdin=asyncssh.DEVNULL, encoding=None,
                                        check=False, timeout=limit)
        return await self._conn.run(command, input=data, encoding=None, check=False, timeout=limit)

    async def stream(self, argv: list[str], on_line: Callable[[str], Any], *,
                     timeout: float | None = None, check: bool = True,
                     env: Mapping[str, str] | None = None,
                     classify: Callable[[str], type[CommandError]] = classify_stderr,
                     hold_stdin: bool = False) -> Result:
        """Run ``argv`` and call ``on_line(line)`` for each stdout line as it arrives.

        ``on_line`` is a plain function, called on the SSH I/O thread: keep it short.
        ``hold_stdin`` keeps the command's stdin open (nothing is ever written) until it
        ends, so it reads end-of-file exactly when the channel closes: the run finished,
        was cancelled, or its process died. Returns a Result with empty stdout and the
        stderr tail. Raises as ``run``.
        """
        args = with_env(argv, env)
        command = join_argv(args)
        limit = timeout or self.default_timeout
        _logger().info("%s: %s", self.node.name, command)
        await self.connect()
        status, stderr = await _on_transport(self._guard(self._stream(command, on_line, hold_stdin),
                                                         args, limit))
        if check and status != 0:
            raise self._command_error(args, status, stderr, classify)
        return Result(stdout="", stderr=stderr, exit_status=status)

    async def _stream(self, command: str, on_line: Callable[[str], Any],
                      hold_stdin: bool) -> tuple[int, str]:
        assert self._conn is not None
        tail: deque[str] = deque(maxlen=STDERR_TAIL_LINES)
        stdin = asyncssh.PIPE if hold_stdin else asyncssh.DEVNULL
        async with self._conn.create_process(command, encoding=None, stdin=stdin) as proc:
            async def pump_stdout() -> None:
                while line := await proc.stdout.readline():  # b"" only at end of output
                    on_line(_text(line).rstrip("\n"))

            async def pump_stderr() -> None:
                while line := await proc.stderr.readline():
                    tail.append(_text(line).rstrip("\n"))

            await asyncio.gather(pump_stdout(), pump_stderr())
            completed = await proc.wait(check=False)
        return _exit_status(completed), "\n".join(tail)

    async def _guard(self, coro: Awaitable[T], args: list[str], limit: float) -> T:
        """Apply the timeout and map connection trouble to ConnectionLost (drops the connection).
        At most MAX_CHANNELS commands run at once on the connection (the wait counts in the
        timeout)."""
        if self._channels is None:
            self._channels = asyncio.Semaphore(MAX_CHANNELS)
        try:
            async with asyncio.timeout(limit):
                async with self._channels:
                    return await coro
        except (asyncio.TimeoutError, asyncssh.TimeoutError):
            raise CommandError(f"`{_short(args)}` on {self.where} timed out after {limit:g} s",
                               argv=args, exit_status=None) from None
        except (OSError, asyncssh.DisconnectError, asyncssh.ChannelOpenError, BrokenPipeError) as exc:
            self._conn = None
            raise ConnectionLost(f"SSH connection to {self.where} lost: {_reason(exc)}") from None
        finally:
            if inspect.iscoroutine(coro) and inspect.getcoroutinestate(coro) == "CORO_CREATED":
                coro.close()  # timed out while queued for a channel: never started

    def _command_error(self, args: list[str], status: int, stderr: str,
                       classify: Callable[[str], type[CommandError]]) -> CommandError:
        tail = "\n".join(stderr.strip().splitlines()[-STDERR_TAIL_LINES:])
        last = tail.splitlines()[-1] if tail else "no error output"
        cls = classify(stderr)
        return cls(f"`{_short(args)}` failed on node {self.node.name} (exit status {status}): {last}",
                   argv=args, exit_status=status, stderr_tail=tail)


async def _close(conn: asyncssh.SSHClientConnection) -> None:
    conn.close()
    await conn.wait_closed()


def _text(data: bytes | str | None) -> str:
    if data is None:
        return ""
    return data if isinstance(data, str) else data.decode("utf-8", errors="replace")


def _exit_status(proc: Any) -> int:
    """Exit status; a command killed by a signal counts as 128 + signal, as a shell reports it."""
    if proc.exit_status is not None and proc.exit_status >= 0:
        return int(proc.exit_status)
    signame = (proc.exit_signal or ("",))[0]
    number = getattr(signal, f"SIG{signame}", None)
    return 128 + int(number) if number is not None else 255


def _short(args: list[str], limit: int = 200) -> str:
    line = join_argv(args)
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _reason(exc: BaseException) -> str:
    if isinstance(exc, asyncio.TimeoutError):
        return "timed out"
    text = getattr(exc, "reason", "") or str(exc) or type(exc).__name__
    return " ".join(str(text).split())
