"""Node-to-node SSH trust, as pure text edits and readings (used by ``dapx.flows.trust``).

- ``authorized_line``: the one ``authorized_keys`` line that lets a source's replication key
  in: ``restrict,from="<source address>" ssh-ed25519 AAAA... dapx-replication@pve1``
  (no forwarding, no pty, no ``~/.ssh/rc``; only from the source's address).
- ``replace_key_lines`` / ``replace_host_lines``: a file's text with every line of one key
  (authorized_keys) or one host (known_hosts) replaced by a single new line, or removed; other
  lines keep their bytes and order. Replacing, never appending, is what makes a retired key
  stop being trusted.
- ``classify_ssh_failure``: what ssh's stderr says went wrong (node unreachable, key
  refused, host key changed or unknown), so the error can say what to do.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import re
from typing import Literal

from dapx.errors import InputError

REPLICATION_KEY_TYPE = "ssh-ed25519"
"""The replication key is made by ``ssh-keygen -t ed25519``: only that type is authorised."""

_ED25519_BLOB = 4 + 11 + 4 + 32  # string "ssh-ed25519", string of the 32-byte key
_COMMENT = re.compile(r"[A-Za-z0-9_.@:+-]{1,100}")

SshFailure = Literal["unreachable", "refused", "host_key_changed", "host_key_unknown", "other"]

# OpenSSH's own wording (ssh.c, sshconnect.c, sshconnect2.c), lower case.
_UNREACHABLE = ("connection refused", "connection timed out", "operation timed out",
                "no route to host", "network is unreachable", "host is unreachable",
                "could not resolve hostname", "name or service not known",
                "temporary failure in name resolution", "connection reset by peer",
                "connection closed by remote host", "kex_exchange_identification")
_CHANGED = ("remote host identification has changed", "has changed and you have requested")
_UNKNOWN = ("host key is known for", "no matching host key", "host key verification failed")
_REFUSED = ("permission denied", "too many authentication failures",
            "identity file", "no more authentication methods")


def parse_public_key(text: str, expected_type: str = REPLICATION_KEY_TYPE) -> tuple[str, str, str]:
    """(type, base64 blob, comment) of exactly one OpenSSH public key line of
    ``expected_type``. Raises InputError for anything else: several lines, options in front,
    another type, a blob that is not that type's key."""
    lines = [line for line in text.split("\n") if line.strip()]
    if len(lines) != 1:
        raise InputError(f"the replication public key must be exactly one line, got {len(lines)}")
    fields = lines[0].strip().split()
    if len(fields) not in (2, 3) or fields[0] != expected_type:
        raise InputError(f"the replication public key must be one '{expected_type} <key> "
                         "[comment]' line")
    try:
        blob = base64.b64decode(fields[1], validate=True)
    except binascii.Error:
        raise InputError("the replication public key is not valid base64") from None
    prefix = len(expected_type).to_bytes(4, "big") + expected_type.encode()
    if not blob.startswith(prefix) or (expected_type == "ssh-ed25519" and len(blob) != _ED25519_BLOB):
        raise InputError(f"the replication public key's data is not an {expected_type} key")
    comment = fields[2] if len(fields) == 3 and _COMMENT.fullmatch(fields[2]) else ""
    return fields[0], fields[1], comment


def authorized_line(public_key: str, source_address: str) -> str:
    """The ``authorized_keys`` line for a replication key, usable only from
    ``source_address`` (an IP address) and with ``restrict``. Raises InputError."""
    key_type, blob, comment = parse_public_key(public_key)
    try:
        address = str(ipaddress.ip_address(source_address))
    except ValueError:
        raise InputError(f"source address {source_address!r} is not an IP address") from None
    return " ".join(p for p in (f'restrict,from="{address}"', key_type, blob, comment) if p)


def _replace(text: str, matches, new_line: str | None) -> str:  # noqa: ANN001
    """``text`` with the lines ``matches(line)`` selects replaced by ``new_line`` (at the
    first one's place, else appended), or removed when ``new_line`` is None."""
    lines = [line for line in text.split("\n")]
    if lines and lines[-1] == "":
        lines.pop()
    kept: list[str] = []
    placed = new_line is None
    for line in lines:
        if matches(line):
            if not placed:
                kept.append(new_line)  # type: ignore[arg-type]
                placed = True
            continue
        kept.append(line)
    if not placed:
        kept.append(new_line)  # type: ignore[arg-type]
    return "".join(line + "\n" for line in kept)


def replace_key_lines(text: str, blob: str, new_line: str | None) -> str:
    """authorized_keys ``text`` with every line holding key ``blob`` (with or without options,
    any comment) replaced by ``new_line``, or removed when it is None."""
    return _replace(text, lambda line: blob in line.split(), new_line)


def _host_patterns(line: str) -> list[str]:
    fields = line.split()
    if not fields or line.lstrip().startswith("#"):
        return []
    first = fields[1] if fields[0].startswith("@") and len(fields) > 1 else fields[0]
    return first.split(",")


def replace_host_lines(text: str, host_pattern: str, new_line: str | None) -> str:
    """known_hosts ``text`` with every line naming ``host_pattern`` (``host`` or
    ``[host]:port``) replaced by ``new_line``, or removed when it is None."""
    return _replace(text, lambda line: host_pattern in _host_patterns(line), new_line)


def classify_ssh_failure(stderr: str) -> SshFailure:
    """What an ``ssh`` login that failed says about why, from its stderr."""
    text = stderr.lower()
    if any(words in text for words in _CHANGED):
        return "host_key_changed"
    if any(words in text for words in _UNKNOWN):
        return "host_key_unknown"
    if any(words in text for words in _UNREACHABLE):
        return "unreachable"
    if any(words in text for words in _REFUSED):
        return "refused"
    return "other"


def route_source(output: str) -> str | None:
    """The ``src`` address of ``ip -o route get ADDRESS`` output, or None."""
    match = re.search(r"\bsrc\s+(\S+)", output)
    if not match:
        return None
    try:
        return str(ipaddress.ip_address(match[1]))
    except ValueError:
        return None
