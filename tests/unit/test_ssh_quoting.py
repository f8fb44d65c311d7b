"""Arbitrary argument strings never escape their argument: joined once, split back identically.

Checked twice: through a local POSIX shell (fast, many examples) and through a real sshd and the
remote login shell (what the product does).
"""

from __future__ import annotations

import asyncio
import subprocess

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dapx.core.quoting import check_argv, join_argv, with_env
from dapx.errors import InputError
from tests.unit.conftest import make_node

# Any text but NUL (refused by check_argv, impossible in argv) and lone surrogates (not UTF-8).
ARG = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\0"), max_size=40)
NASTY = ["", " ", "'", '"', "$(touch /tmp/dapx-pwned)", "`id`", "a;b", "a\nb", "\\", "-n", "*", "~", "$HOME",
         "a|b", "&&", "#x", "é ü 日本", "\t", "'\"'\"'"]


def split_back(stdout: bytes) -> list[str]:
    """printf '%s\\0' output -> the arguments it printed."""
    return [part.decode() for part in stdout.split(b"\0")[:-1]]


@settings(max_examples=300, deadline=None)
@given(st.lists(ARG | st.sampled_from(NASTY), min_size=1, max_size=6))
def test_local_shell_splits_joined_line_back(args):
    line = join_argv(["printf", "%s\\0", *args])
    # Test-only use of a shell string: it IS the joined line under test, run by sh -c exactly as
    # sshd hands it to the login shell.
    out = subprocess.run(["sh", "-c", line], capture_output=True, check=True).stdout
    assert split_back(out) == args


@pytest.fixture(scope="module")
def remote(sshd, client_key):
    """One pinned session to the test sshd, driven from sync code through its own loop."""
    node = make_node(sshd, client_key, pinned=sshd.host_key_line)
    session = node.ssh()
    asyncio.run(session.connect())
    yield session
    asyncio.run(session.close())


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(ARG | st.sampled_from(NASTY), min_size=1, max_size=6))
def test_remote_login_shell_gets_exact_args(remote, args):
    result = asyncio.run(remote.run(["printf", "%s\\0", *args]))
    assert split_back(result.stdout.encode()) == args


def test_bad_argv_is_refused():
    for bad in ("zfs list", [], ["zfs", None], ["a\0b"]):
        with pytest.raises(InputError):
            check_argv(bad)  # type: ignore[arg-type]
    with pytest.raises(InputError):
        with_env(["true"], {"A;B": "x"})
    assert with_env(["zfs", "list"], {"LC_ALL": "C"}) == ["env", "LC_ALL=C", "zfs", "list"]


def test_empty_input_reaches_end_of_file(remote):
    """An empty stdin ends at once (asyncssh alone would never send EOF: ``cat`` would hang)."""
    result = asyncio.run(remote.run(["wc", "-c"], input="", timeout=10))
    assert result.stdout.strip() == "0"
    assert asyncio.run(remote.run(["cat"], input="abc", timeout=10)).stdout == "abc"
