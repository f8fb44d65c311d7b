"""Host-key pinning, login and command errors against a real OpenSSH server on loopback."""

from __future__ import annotations

import pytest

from dapx.blocks.node import host_key_fingerprint
from dapx.errors import AuthError, CommandError, ConnectionLost, HostKeyError, TransientCommandError
from dapx.transports.ssh import NodeSession
from tests.helpers.sshd import SshServer, new_key, public_line
from tests.unit.conftest import make_node


@pytest.fixture
def own_sshd(tmp_path, client_key):
    """A server of the test's own: the pinning test replaces its host key."""
    server = SshServer(tmp_path / "sshd")
    server.authorize(public_line(client_key))
    with server:
        yield server


async def test_record_then_enforce_then_refuse_changed_key(own_sshd, client_key):
    unpinned = make_node(own_sshd, client_key)

    # No pinned key and not recording: refused before anything is sent.
    with pytest.raises(HostKeyError, match="no pinned SSH host key"):
        await NodeSession(unpinned).connect()

    # First test records the key the server presents.
    async with unpinned.ssh(record=True) as session:
        assert session.host_key == own_sshd.host_key_line
        assert session.host_key_recorded
        assert (await session.run(["echo", "recorded"])).stdout == "recorded\n"

    # Pinned: accepted.
    pinned = unpinned.model_copy(update={"ssh_host_key": own_sshd.host_key_line})
    async with pinned.ssh() as session:
        assert not session.host_key_recorded
        assert (await session.run(["hostname"])).exit_status == 0

    # The node is "reinstalled": a new host key on the same address is refused, naming both.
    old_fp = host_key_fingerprint(own_sshd.host_key_line)
    own_sshd.replace_host_key()
    new_fp = host_key_fingerprint(own_sshd.host_key_line)
    assert old_fp != new_fp
    for record in (False, True):  # recording never overrides a pinned key
        with pytest.raises(HostKeyError) as info:
            await pinned.ssh(record=record).connect()
        message = str(info.value)
        assert f"expected {old_fp}, got {new_fp}" in message
        assert "pve-test" in message


async def test_wrong_client_key_is_an_auth_error_naming_node_and_user(sshd):
    node = make_node(sshd, new_key(), pinned=sshd.host_key_line)
    with pytest.raises(AuthError) as info:
        await node.ssh().connect()
    assert "pve-test" in str(info.value) and f"{sshd.user}@127.0.0.1" in str(info.value)
    assert "PRIVATE KEY" not in str(info.value)


async def test_closed_port_is_connection_lost_and_retryable(sshd, client_key):
    from tests.helpers.sshd import free_port

    node = make_node(sshd, client_key, pinned=sshd.host_key_line).model_copy(
        update={"ssh_port": free_port()})
    with pytest.raises(ConnectionLost) as info:
        await node.ssh(connect_timeout=3).connect()
    assert info.value.retryable


async def test_command_error_carries_status_and_stderr(sshd, client_key):
    node = make_node(sshd, client_key, pinned=sshd.host_key_line)
    async with node.ssh() as session:
        with pytest.raises(CommandError) as info:
            await session.run(["sh", "-c", "echo first >&2; echo 'no such dataset' >&2; exit 3"])
        err = info.value
        assert err.exit_status == 3
        assert err.stderr_tail == "first\nno such dataset"
        assert err.argv[0] == "sh" and not err.retryable
        assert "exit status 3" in str(err) and "no such dataset" in str(err)

        with pytest.raises(TransientCommandError) as busy:
            await session.run(["sh", "-c", "echo 'cannot destroy rpool/x: dataset is busy' >&2; exit 1"])
        assert busy.value.retryable

        unchecked = await session.run(["sh", "-c", "exit 5"], check=False)
        assert unchecked.exit_status == 5


async def test_input_env_stream_and_timeout(sshd, client_key):
    node = make_node(sshd, client_key, pinned=sshd.host_key_line)
    async with node.ssh() as session:
        assert (await session.run(["cat"], input="to stdin\n")).stdout == "to stdin\n"
        assert (await session.run(["sh", "-c", 'echo "$DAPX_X"'], env={"DAPX_X": "a b"})).stdout == "a b\n"

        lines: list[str] = []
        result = await session.stream(["sh", "-c", "for i in 1 2 3; do echo line$i; done; echo warn >&2"],
                                      lines.append)
        assert lines == ["line1", "line2", "line3"]
        assert result.stderr == "warn" and result.exit_status == 0

        with pytest.raises(CommandError, match="timed out after 0.5 s"):
            await session.run(["sleep", "5"], timeout=0.5)
        # The session is still usable after a command timed out.
        assert (await session.run(["echo", "ok"])).stdout == "ok\n"


async def test_sessions_shared_per_run_across_threads_and_closed_at_end(sshd, client_key):
    import asyncio

    from dapx.tasks.ssh import get_session, node_sessions

    node = make_node(sshd, client_key, pinned=sshd.host_key_line)
    async with node_sessions():
        first = await get_session(node)
        again = await get_session(node)
        # A task in a worker thread runs its own event loop; it still gets the same connection.
        from_thread = await asyncio.to_thread(lambda: asyncio.run(get_session(node)))
        assert first is again is from_thread
        results = await asyncio.gather(*(first.run(["echo", str(i)]) for i in range(8)))
        assert [r.stdout for r in results] == [f"{i}\n" for i in range(8)]
    assert not first.is_open
