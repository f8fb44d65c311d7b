"""``trust-nodes``: let a source node push replicas to a destination node over SSH.

The replication key is made ON the source node (``ssh-keygen``) and never leaves it; only its
public half travels, to the destination's ``authorized_keys``. The destination's host key is
pinned on the source in a dapx-owned known_hosts file, taken from the destination's node
block (which the node test pinned): never from ``ssh-keyscan``. Every step is idempotent.
``check_trust`` is the replication flows' first step.
"""

from __future__ import annotations

from prefect import flow
from pydantic import BaseModel, Field

from dapx.flows import KEPT_RESULTS
from dapx.blocks.manage import aload_nodes
from dapx.blocks.node import ProxmoxNode
from dapx.core.syncoid_argv import ssh_options
from dapx.core.types import NodeName
from dapx.errors import HostKeyError, InputError, PermanentError
from dapx.tasks.base import dapx_task
from dapx.tasks.guests import append_file
from dapx.tasks.ssh import get_session, node_sessions

REPLICATION_KEY = "/root/.ssh/dapx_replication"
KNOWN_HOSTS = "/root/.ssh/dapx_known_hosts"
AUTHORIZED_KEYS = "/root/.ssh/authorized_keys"
# Appends a newline first when the file does not end with one (values only as "$1").
_ENSURE_NEWLINE = '[ ! -s "$1" ] || [ -z "$(tail -c 1 "$1")" ] || echo >> "$1"'


class TrustResult(BaseModel):
    """What trust-nodes did; each flag is False when that part was already in place."""

    source: str = Field(description="Source node.", examples=["pve1"])
    destination: str = Field(description="Destination node.", examples=["pve3"])
    key_created: bool = Field(description="A replication key was generated now.")
    key_authorised: bool = Field(description="The public key was added on the destination now.")
    host_key_pinned: bool = Field(description="The destination's host key was pinned now.")
    public_key: str = Field(description="The replication public key (safe to show).")


def known_hosts_line(node: ProxmoxNode) -> str:
    """``host key`` or ``[host]:port key`` for the destination, from its pinned block key."""
    if not node.ssh_host_key:
        raise HostKeyError(f"node {node.name} has no pinned SSH host key: test it first "
                           f"(dapx node test {node.name})")
    host = node.host if node.ssh_port == 22 else f"[{node.host}]:{node.ssh_port}"
    return f"{host} {node.ssh_host_key}"


async def _has_line(node: ProxmoxNode, path: str, line: str) -> bool:
    session = await get_session(node)
    return (await session.run(["grep", "-qxF", "--", line, path], check=False)).exit_status == 0


async def _add_line(node: ProxmoxNode, path: str, line: str) -> bool:
    """Append ``line`` to ``path`` unless present (0600 file, 0700 dir); True when added."""
    if await _has_line(node, path, line):
        return False
    session = await get_session(node)
    await session.run(["install", "-d", "-m", "0700", "/root/.ssh"])
    await session.run(["sh", "-c", _ENSURE_NEWLINE, "sh", path])
    await append_file(node, path, line + "\n")
    await session.run(["chmod", "0600", path])
    return True


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
    return public, created


@dapx_task
async def authorise_key(destination: ProxmoxNode, public_key: str) -> bool:
    """Add the public key to the destination's authorized_keys (idempotent)."""
    return await _add_line(destination, AUTHORIZED_KEYS, public_key)


@dapx_task
async def pin_host_key(source: ProxmoxNode, destination: ProxmoxNode) -> bool:
    """Pin the destination's block host key in the source's dapx known_hosts (idempotent)."""
    return await _add_line(source, KNOWN_HOSTS, known_hosts_line(destination))


def trust_probe_argv(destination: ProxmoxNode) -> list[str]:
    """``ssh`` from the source to the destination with the replication key, running ``true``."""
    options = [arg for opt in ssh_options(KNOWN_HOSTS) for arg in ("-o", opt)]
    return ["ssh", "-i", REPLICATION_KEY, *options, "-o", "ConnectTimeout=10",
            "-p", str(destination.ssh_port), f"root@{destination.host}", "true"]


@dapx_task
async def check_trust(source: ProxmoxNode, destination: ProxmoxNode) -> None:
    """Log in from source to destination the way syncoid will. Raises PermanentError naming
    the trust-nodes flow when that fails."""
    session = await get_session(source)
    result = await session.run(trust_probe_argv(destination), check=False, timeout=60)
    if result.exit_status != 0:
        last = (result.stderr.strip().splitlines() or ["no error output"])[-1]
        raise PermanentError(
            f"node {source.name} cannot log in to {destination.name} with its replication key "
            f"({last}); run the trust-nodes flow first (source={source.name}, "
            f"destination={destination.name}), e.g. `prefect deployment run "
            f"'trust-nodes/...'` or dapx.flows.trust.trust_nodes('{source.name}', "
            f"'{destination.name}')")


@flow(name="trust-nodes", log_prints=False, **KEPT_RESULTS)
async def trust_nodes(source: NodeName, destination: NodeName) -> TrustResult:
    """Let ``source`` push replicas to ``destination`` (both node block names)."""
    if source == destination:
        raise InputError(f"source and destination are both {source!r}; name two nodes")
    src, dst = await aload_nodes(source, destination)
    async with node_sessions():
        public, created = await ensure_replication_key(src)
        authorised = await authorise_key(dst, public)
        pinned = await pin_host_key(src, dst)
        await check_trust(src, dst)
    return TrustResult(source=source, destination=destination, key_created=created,
                       key_authorised=authorised, host_key_pinned=pinned, public_key=public)
