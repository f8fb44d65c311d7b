"""Argv to command line: the one place a command is quoted (pure, no I/O).

Every remote command is built as a list of strings and joined here once, at the transport,
with ``shlex.join``. The remote shell then splits it back into exactly the same list, whatever
the strings contain (quotes, spaces, newlines, ``$()``, ``;``): a property test checks that.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping, Sequence

from dapx.errors import InputError

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def check_argv(argv: Sequence[str]) -> list[str]:
    """Return ``argv`` as a list after checking it; raises InputError if it is empty, is a
    single string (a shell line in disguise), or holds a non-string or a NUL byte."""
    if isinstance(argv, (str, bytes)):
        raise InputError("a command must be a list of arguments, not one string")
    args = list(argv)
    if not args:
        raise InputError("a command must have at least one argument")
    for arg in args:
        if not isinstance(arg, str):
            raise InputError(f"command argument {arg!r} is not a string")
        if "\0" in arg:
            raise InputError("command arguments cannot contain NUL bytes")
    return args


def join_argv(argv: Sequence[str]) -> str:
    """``["zfs", "list", "a b"]`` -> ``"zfs list 'a b'"``: one line a POSIX shell splits back into argv."""
    return shlex.join(check_argv(argv))


def with_env(argv: Sequence[str], env: Mapping[str, str] | None) -> list[str]:
    """Prefix ``argv`` with ``env NAME=VALUE ...`` (sshd drops most client-sent variables).

    Values end up on the command line and in logs: never pass secrets this way.
    Raises InputError for a variable name a shell would not accept.
    """
    args = check_argv(argv)
    if not env:
        return args
    for name in env:
        if not _ENV_NAME.fullmatch(name):
            raise InputError(f"environment variable name {name!r} is not valid")
    return ["env", *(f"{name}={value}" for name, value in env.items()), *args]
