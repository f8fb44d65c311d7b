"""``trust-nodes``: let a source node push replicas to a destination node over SSH, or revoke it.

The replication key is made ON the source node (``ssh-keygen``) and never leaves it; only its
public half travels, to the destination's ``authorized_keys``, as exactly one line
``restrict,from="<source address>" ssh-ed25519 ...`` (usable only from the source, without
forwarding or a pty); an older line of the same key (an unrestricted one, another address) is
replaced, never kept beside it. The destination's host key is pinned on the source in a
dapx-owned known_hosts file, taken from the destination's node block (which the node test
pinned, never from ``ssh-keyscan``); the host's earlier lines there are replaced, so a retired
host key stops being trusted. ``revoke=True`` removes both again. Every step is idempotent.

Files are edited by reading them, computing the new text (``dapx.core.sshtrust``) and writing
it back atomically only when it changed and only if nobody changed it meanwhile (a compare
and swap by checksum); a symlinked ``authorized_keys`` (PVE links it into /etc/pve/priv) is
followed, not replaced.

``check_trust`` is the replication flows' first step: it logs in the way syncoid will and, on
failure, says whether the destination cannot be reached, refused the key, or presents another
host key than the pinned one.
"""

from __future__ import annotations

import hashlib
import ipaddress
from typing import Optional

from prefect import flow
from pydantic import BaseModel, Field

from dapx.flows import KEPT_RESULTS
from dapx.blocks.manage import aload_nodes
from dapx.blocks.node import ProxmoxNode
from dapx.core.sshtrust import (authorized_line, classify_ssh_failure, parse_public_key,
                                replace_host_lines, replace_key_lines, route_source)
from dapx.core.syncoid_argv import master_argv, ssh_options
from dapx.core.types import NodeName
from dapx.errors import (AuthError, CommandError, ConnectionLost, HostKeyError, InputError,
                         PermanentError)
from dapx.tasks.base import dapx_task
from dapx.tasks.ssh import get_session, node_sessions

REPLICATION_KEY = "/root/.ssh/dapx_replication"
KNOWN_HOSTS = "/root/.ssh/dapx_known_hosts"
AUTHORIZED_KEYS = "/root/.ssh/authorized_keys"

# Replace "$1" (through symlinks) with stdin, atomically, only when its sha256 is still "$2".
# Constant script; values only ever arrive as positional arguments.
_SWAP_FILE = r'''set -eu
f=$(readlink -f -- "$1")
have=$({ cat -- "$f" 2>/dev/null || true; } | sha256sum | cut -d" " -f1)
if [ "$have" != "$2" ]; then
  echo "temporary failure: $1 changed while dapx was editing it" >&2; exit 75
fi
umask 077
tmp="$f.dapx-new.$$"
cat > "$tmp"
mv -f -- "$tmp" "$f"'''


class TrustResult(BaseModel):
    """What trust-nodes did; each flag is False when that part was already as asked."""

    source: str = Field(description="Source node.", examples=["pve1"])
    destination: str = Field(description="Destination node.", examples=["pve3"])
    revoked: bool = Field(default=False, description="This run revoked the trust.")
    key_created: bool = Field(default=False, description="A replication key was generated now.")
    key_authorised: bool = Field(default=False,
                                 description="The destination's authorized_keys changed now.")
    host_key_pinned: bool = Field(default=False,
                                  description="The source's pin of the destination changed now.")
    source_address: str = Field(default="", description="Address the key is restricted to.",
                                examples=["198.18.213.11"])
    public_key: str = Field(default="", description="The replication public key (safe to show).")

    def __str__(self) -> str:
        if self.revoked:
            return (f"{self.destination} no longer trusts {self.source}'s replication key "
                    f"(key removed now: {self.key_authorised}, host pin removed now: "
                    f"{self.host_key_pinned})")
        return (f"{self.source} may push replicas to {self.destination} from "
                f"{self.source_address} (key created now: {self.key_created}, authorised now: "
                f"{self.key_authorised}, host key pinned now: {self.host_key_pinned})")


def host_pattern(node: ProxmoxNode) -> str:
    """How known_hosts names the node: ``host``, or ``[host]:port`` off port 22."""
    return node.host if node.ssh_port == 22 else f"[{node.host}]:{node.ssh_port}"


def known_hosts_line(node: ProxmoxNode) -> str:
    """``host key`` or ``[host]:port key`` for the destination, from its pinned block key."""
    if not node.ssh_host_key:
        raise HostKeyError(f"node {node.name} has no pinned SSH host key: test it first "
                           f"(dapx node test {node.name})")
    return f"{host_pattern(node)} {node.ssh_host_key}"


# -----------------------------------------------------------------------------------------------
# Remote files


async def read_text(node: ProxmoxNode, path: str) -> str:
    """The text of ``path`` on ``node`` ("" when it does not exist). Raises CommandError."""
    session = await get_session(node)
    result = await session.run(["cat", "--", path], check=False)
    if result.exit_status != 0 and "No such file" not in result.stderr:
        raise CommandError(f"cannot read {path} on node {node.name}: "
                           f"{(result.stderr.strip().splitlines() or ['?'])[-1]}",
                           argv=["cat", "--", path], exit_status=result.exit_status)
    return result.stdout if result.exit_status == 0 else ""


async def edit_file(node: ProxmoxNode, path: str, edit) -> bool:  # noqa: ANN001
    """Apply ``edit(old text) -> new text`` to ``path`` on ``node``; True when it changed.

    The write is atomic and refused when the file changed since it was read (the error says
    "temporary failure", so the task retries and reads again).
    """
    old = await read_text(node, path)
    new = edit(old)
    if new == old:
        return False
    session = await get_session(node)
    await session.run(["install", "-d", "-m", "0700", "/root/.ssh"])
    digest = hashlib.sha256(old.encode()).hexdigest()
    await session.run(["sh", "-c", _SWAP_FILE, "sh", path, digest], input=new)
    return True


# -----------------------------------------------------------------------------------------------
# Tasks


@dapx_task
async def ensure_replication_key(source: ProxmoxNode) -> tuple[str, bool]:
    """The source's replication public key, generating the pair on the node if missing."""
    session = await get_session(source)
    created = False
    if (await session.run(["test", "-s", REPLICATION_KEY], check=False)).exit_status != 0:
        await session.run(["install", "-d", "-m", "0700", "/root/.ssh"])
        await session.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "",
                           "-C", f"dapx-replication@{source.name}", "-f", REPLICATION_KEY])
        created = True
    public = (await session.run(["cat", REPLICATION_KEY + ".pub"])).stdout.strip()
    parse_public_key(public)  # exactly one ed25519 line, or a clear error
    return public, created


@dapx_task
async def read_replication_key(source: ProxmoxNode) -> Optional[str]:
    """The source's replication public key line, or None when it has none."""
    text = (await read_text(source, REPLICATION_KEY + ".pub")).strip()
    return text or None


@dapx_task
async def replication_source_address(source: ProxmoxNode, destination: ProxmoxNode,
                                     given: Optional[str] = None) -> str:
    """The address ``source`` connects to ``destination`` from (``given`` when set): the
    ``src`` of the source's route to the destination's address. Raises PermanentError."""
    if given:
        return str(ipaddress.ip_address(given))
    session = await get_session(source)
    address = destination.host
    try:
        ipaddress.ip_address(address)
    except ValueError:  # a host name: resolve it the way the source will
        found = await session.run(["getent", "ahosts", "--", address], check=False)
        fields = found.stdout.split()
        if found.exit_status != 0 or not fields:
            raise PermanentError(f"node {source.name} cannot resolve {destination.name}'s host "
                                 f"{address}; fix its DNS or give the node an IP address")
        address = fields[0]
    route = await session.run(["ip", "-o", "route", "get", address], check=False)
    found_src = route_source(route.stdout)
    if found_src is None:
        raise PermanentError(f"node {source.name} has no route to {destination.name} "
                             f"({address}); pass source_address to trust-nodes")
    return found_src


@dapx_task
async def authorise_key(destination: ProxmoxNode, public_key: str, source_address: str) -> bool:
    """Make ``public_key`` authorised on the destination by exactly one restricted line
    (replacing older lines of the same key); True when the file changed."""
    line = authorized_line(public_key, source_address)
    _, blob, _ = parse_public_key(public_key)
    return await edit_file(destination, AUTHORIZED_KEYS,
                           lambda text: replace_key_lines(text, blob, line))


@dapx_task
async def unauthorise_key(destination: ProxmoxNode, public_key: str) -> bool:
    """Remove every line of ``public_key`` from the destination's authorized_keys."""
    _, blob, _ = parse_public_key(public_key)
    return await edit_file(destination, AUTHORIZED_KEYS,
                           lambda text: replace_key_lines(text, blob, None))


@dapx_task
async def pin_host_key(source: ProxmoxNode, destination: ProxmoxNode) -> bool:
    """Pin the destination's block host key in the source's dapx known_hosts, replacing the
    host's earlier lines; True when the file changed."""
    line = known_hosts_line(destination)
    return await edit_file(source, KNOWN_HOSTS,
                           lambda text: replace_host_lines(text, host_pattern(destination), line))


@dapx_task
async def unpin_host_key(source: ProxmoxNode, destination: ProxmoxNode) -> bool:
    """Remove the destination's lines from the source's dapx known_hosts."""
    return await edit_file(source, KNOWN_HOSTS,
                           lambda text: replace_host_lines(text, host_pattern(destination), None))


def trust_probe_argv(destination: ProxmoxNode, master: bool = False) -> list[str]:
    """``ssh`` from the source to the destination with the replication key, running ``true``;
    with ``master``, its connection stays as the shared master syncoid's transfer takes up."""
    options = [arg for opt in ssh_options(KNOWN_HOSTS) for arg in ("-o", opt)]
    argv = ["ssh", "-i", REPLICATION_KEY, *options, "-o", "ConnectTimeout=10",
            "-p", str(destination.ssh_port), f"root@{destination.host}", "true"]
    return master_argv(argv) if master else argv


def trust_failure(source: ProxmoxNode, destination: ProxmoxNode, stderr: str) -> Exception:
    """The one-line error for a failed replication login, by what ssh said (``stderr``)."""
    lines = [ln.strip() for ln in stderr.strip().split("\n") if ln.strip() and "@@@" not in ln]
    last = lines[-1] if lines else "no error output"
    where = f"{destination.name} ({destination.host}:{destination.ssh_port})"
    kind = classify_ssh_failure(stderr)
    if kind == "unreachable":
        return ConnectionLost(f"node {source.name} cannot reach {where} over SSH ({last}): "
                              f"check that {destination.name} is up, its SSH server runs and "
                              f"the network between the two nodes lets port "
                              f"{destination.ssh_port} through")
    if kind == "host_key_changed":
        return HostKeyError(
            f"{where} presents another SSH host key to {source.name} than the one pinned for "
            f"it ({last}). If {destination.name} was reinstalled on purpose, clear its "
            f"pinned host key, run `dapx node test {destination.name}`, then the trust-nodes "
            f"flow again; otherwise something may be intercepting the connection")
    run_trust = (f"run the trust-nodes flow (source={source.name}, destination="
                 f"{destination.name}), e.g. `prefect deployment run trust-nodes/default -p "
                 f"source={source.name} -p destination={destination.name}`")
    if kind == "host_key_unknown":
        return HostKeyError(f"node {source.name} has no pinned host key for {where} ({last}); "
                            f"{run_trust}")
    if kind == "refused":
        return AuthError(f"{where} refused {source.name}'s replication key ({last}); "
                         f"{run_trust}")
    return PermanentError(f"node {source.name} cannot log in to {where} with its replication "
                          f"key ({last}); {run_trust}")


@dapx_task
async def check_trust(source: ProxmoxNode, destination: ProxmoxNode,
                      master: bool = False) -> None:
    """Log in from source to destination the way syncoid will, always afresh; ``master``
    (a syncoid transfer follows): leave the connection for it. On failure raises
    ConnectionLost (cannot reach the destination: retried), HostKeyError (another host key
    than the pinned one, or none pinned), AuthError (key refused: run trust-nodes) or
    PermanentError."""
    session = await get_session(source)
    result = await session.run(trust_probe_argv(destination, master), check=False, timeout=60)
    if result.exit_status != 0:
        raise trust_failure(source, destination, result.stderr)


# -----------------------------------------------------------------------------------------------
# The flow


async def grant(src: ProxmoxNode, dst: ProxmoxNode, source_address: Optional[str]) -> TrustResult:
    public, created = await ensure_replication_key(src)
    address = await replication_source_address(src, dst, source_address)
    authorised = await authorise_key(dst, public, address)
    pinned = await pin_host_key(src, dst)
    await check_trust(src, dst)
    return TrustResult(source=src.name, destination=dst.name, key_created=created,
                       key_authorised=authorised, host_key_pinned=pinned,
                       source_address=address, public_key=public)


async def revoke_trust(src: ProxmoxNode, dst: ProxmoxNode) -> TrustResult:
    public = await read_replication_key(src)
    removed = await unauthorise_key(dst, public) if public else False
    unpinned = await unpin_host_key(src, dst)
    return TrustResult(source=src.name, destination=dst.name, revoked=True,
                       key_authorised=removed, host_key_pinned=unpinned, public_key=public or "")


@flow(name="trust-nodes", log_prints=False, **KEPT_RESULTS)
async def trust_nodes(source: NodeName, destination: NodeName, revoke: bool = False,
                      source_address: Optional[str] = None) -> TrustResult:
    """Let ``source`` push replicas to ``destination`` (both node block names), or with
    ``revoke`` take that away: the key leaves the destination's authorized_keys and the
    destination's host key leaves the source's known_hosts (the key pair stays on the source
    for its other destinations).

    ``source_address``: the address the destination sees the source connect from, when it is
    not the source's route to it (NAT); the key is usable only from there. Raises InputError,
    HostKeyError (destination not tested yet), and what ``check_trust`` raises.
    """
    if source == destination:
        raise InputError(f"source and destination are both {source!r}; name two nodes")
    if source_address is not None:
        try:
            ipaddress.ip_address(source_address)
        except ValueError:
            raise InputError(f"source_address {source_address!r} is not an IP address") from None
    src, dst = await aload_nodes(source, destination)
    async with node_sessions():
        if revoke:
            return await revoke_trust(src, dst)
        return await grant(src, dst, source_address)
