"""Node flows: ``node-check`` (N2), ``node-inventory`` (N3), ``install-sanoid`` (N4).

Each flow takes the node block's NAME and loads the block. SSH commands are argv lists sent
over one connection per node (several channels at once, never one round trip per guest). The
readable results are pydantic models whose ``str()`` is a short report; each flow also leaves
a table artifact in the Prefect UI.

node-check pins on first success: the SSH host key and the TLS fingerprint the node presents
are saved into the block only when every check passed, so a failed test writes nothing. The
API's certificate is pinned only when it is the one the node itself holds: its fingerprint is
read from the node's certificate file over the (pinned) SSH session and must equal what the
API presents. Keys checked out of band can be pinned beforehand (``dapx node add --host-key
--tls-fingerprint``); a pinned value is enforced, never replaced.
"""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any, Literal

from prefect import flow
from prefect.artifacts import acreate_table_artifact
from pydantic import BaseModel, Field

from dapx.flows import KEPT_RESULTS
from dapx.blocks.manage import aload_nodes
from dapx.blocks.node import ProxmoxNode, host_key_fingerprint
from dapx.core.certs import cert_files, pem_leaf_fingerprint
from dapx.core.guestconfig import list_disks, parse_guest_config
from dapx.core.storagecfg import parse_storage_cfg
from dapx.core.types import NodeName
from dapx.errors import CommandError, TLSFingerprintError
from dapx.tasks.base import dapx_task
from dapx.transports.pve import fetch_tls_fingerprint
from dapx.tasks.ssh import get_session, node_sessions
from dapx.transports.ssh import NodeSession, Result

NOT_INSTALLED = 127  # the shell's exit status for "command not found"

# -----------------------------------------------------------------------------------------------
# Commands (argv) and their pure parsers

FACT_COMMANDS: dict[str, list[str]] = {
    "hostname": ["hostname"],
    "kernel": ["uname", "-r"],
    "zpools": ["zpool", "list", "-H", "-o", "name,size,health"],
    "btrfs": ["findmnt", "-t", "btrfs", "-n", "-r", "-o", "TARGET,SOURCE"],
    "bridges": ["ip", "-j", "link", "show", "type", "bridge"],
}
INVENTORY_COMMANDS: dict[str, list[str]] = {
    "hostname": ["hostname"],
    "datasets": ["zfs", "list", "-H", "-o", "name,used,avail,refer,mountpoint"],
    "btrfs": FACT_COMMANDS["btrfs"],
    "bridges": FACT_COMMANDS["bridges"],
    "storage_cfg": ["cat", "/etc/pve/storage.cfg"],
    # Every guest config of this node in one command: "path:line" per line (grep -r follows
    # the qemu-server/lxc symlinks given on the command line).
    "guest_configs": ["grep", "-r", "-H", "", "/etc/pve/qemu-server/", "/etc/pve/lxc/"],
}
_CONFIG_LINE = re.compile(r"/etc/pve/(qemu-server|lxc)/(\d+)\.conf:(.*)")


def parse_zpools(text: str) -> list[dict[str, str]]:
    """``zpool list -H -o name,size,health`` -> ``[{"name", "size", "health"}]``."""
    rows = [line.split("\t") for line in text.splitlines() if "\t" in line]
    return [{"name": r[0], "size": r[1], "health": r[2]} for r in rows if len(r) >= 3]


def _unescape_findmnt(value: str) -> str:
    """findmnt -r writes spaces and odd characters as ``\\x20``."""
    return re.sub(r"\\x([0-9a-fA-F]{2})", lambda m: chr(int(m[1], 16)), value)


def parse_btrfs_mounts(text: str) -> list[dict[str, str]]:
    """``findmnt -r -o TARGET,SOURCE`` -> ``[{"mount", "source"}]``."""
    rows = [line.split(" ") for line in text.splitlines() if line.strip()]
    return [{"mount": _unescape_findmnt(r[0]), "source": _unescape_findmnt(r[1]) if len(r) > 1 else ""}
            for r in rows]


def parse_bridges(text: str) -> list[str]:
    """``ip -j link show type bridge`` -> bridge names."""
    return sorted(link["ifname"] for link in json.loads(text or "[]") if "ifname" in link)


def parse_datasets(text: str) -> list[dict[str, str]]:
    """``zfs list -H -o name,used,avail,refer,mountpoint`` -> list of dicts."""
    keys = ("name", "used", "avail", "refer", "mountpoint")
    return [dict(zip(keys, line.split("\t"))) for line in text.splitlines() if "\t" in line]


def parse_subvolumes(text: str) -> list[str]:
    """``btrfs subvolume list MOUNT`` -> subvolume paths (relative to the filesystem top)."""
    return [line.split(" path ", 1)[1] for line in text.splitlines() if " path " in line]


def parse_guest_configs(text: str) -> list["Guest"]:
    """``grep -r -H "" qemu-server/ lxc/`` output -> guests with their disks, sorted by VMID."""
    files: dict[tuple[str, int], list[str]] = {}
    for line in text.split("\n"):  # as PVE: "\n" only, never \v, \x85, \u2028...
        match = _CONFIG_LINE.fullmatch(line)
        if match:
            files.setdefault((match[1], int(match[2])), []).append(match[3])
    guests = []
    for (directory, vmid), lines in sorted(files.items(), key=lambda item: item[0][1]):
        kind: Literal["qemu", "lxc"] = "qemu" if directory == "qemu-server" else "lxc"
        config = parse_guest_config("\n".join(lines) + "\n", kind)
        disks = [GuestDisk(key=d.key, volid=d.volid, size=d.options.get("size", ""))
                 for d in list_disks(config)]
        guests.append(Guest(vmid=vmid, kind=kind, disks=disks,
                            name=config.get("name") or config.get("hostname") or ""))
    return guests


# -----------------------------------------------------------------------------------------------
# Results


class NodeCheckResult(BaseModel):
    """What node-check found; ``str()`` is the report ``dapx node test`` prints."""

    node: str = Field(description="Node block name.", examples=["pve1"])
    kind: str = Field(description="pve or pbs.", examples=["pve"])
    ssh_host_key: str = Field(description="SHA256 fingerprint of the node's SSH host key.")
    ssh_host_key_recorded: bool = Field(description="True when this run pinned the host key.")
    tls_fingerprint: str = Field(description="SHA-256 fingerprint of the API certificate.")
    tls_fingerprint_recorded: bool = Field(description="True when this run pinned the fingerprint.")
    api_version: str = Field(description="Version the API reports.", examples=["9.0.10"])
    hostname: str = Field(default="", description="The node's host name.")
    kernel: str = Field(default="", description="Running kernel.")
    zfs_pools: list[dict[str, str]] = Field(default_factory=list, description="ZFS pools.")
    btrfs_mounts: list[dict[str, str]] = Field(default_factory=list, description="BTRFS mounts.")
    bridges: list[str] = Field(default_factory=list, description="Linux bridges.")
    storages: list[str] = Field(default_factory=list, description="Storage ids (PVE) or datastores (PBS).")
    notes: list[str] = Field(default_factory=list, description="Facts that could not be read.")

    def rows(self) -> list[dict[str, str]]:
        """Check/result rows for the table artifact."""
        pinned = lambda recorded: " (recorded now)" if recorded else " (pinned)"  # noqa: E731
        return [
            {"check": "SSH", "result": f"ok, host key {self.ssh_host_key}{pinned(self.ssh_host_key_recorded)}"},
            {"check": "API", "result": f"ok, version {self.api_version}, TLS {self.tls_fingerprint}"
                                       f"{pinned(self.tls_fingerprint_recorded)}"},
            {"check": "host", "result": f"{self.hostname} (kernel {self.kernel})"},
            {"check": "ZFS pools", "result": ", ".join(f"{p['name']} {p['size']} {p['health']}"
                                                       for p in self.zfs_pools) or "none"},
            {"check": "BTRFS", "result": ", ".join(m["mount"] for m in self.btrfs_mounts) or "none"},
            {"check": "bridges", "result": ", ".join(self.bridges) or "none"},
            {"check": "storages", "result": ", ".join(self.storages) or "none"},
        ] + [{"check": "note", "result": note} for note in self.notes]

    def __str__(self) -> str:
        return f"node {self.node} ({self.kind}): OK\n" + "\n".join(
            f"  {row['check']:<10} {row['result']}" for row in self.rows())


class GuestDisk(BaseModel):
    key: str = Field(description="Config key.", examples=["scsi0"])
    volid: str = Field(description="storage:volume.", examples=["local-zfs:vm-100-disk-0"])
    size: str = Field(default="", description="Size as the config states it.", examples=["32G"])


class Guest(BaseModel):
    vmid: int = Field(description="Guest id.", examples=[100])
    kind: Literal["qemu", "lxc"] = Field(description="qemu (VM) or lxc (container).")
    name: str = Field(default="", description="Guest name or container hostname.")
    disks: list[GuestDisk] = Field(default_factory=list, description="Data volumes.")


class NodeInventory(BaseModel):
    """What node-inventory found on one node."""

    node: str = Field(description="Node block name.")
    hostname: str = Field(default="", description="The node's host name.")
    datasets: list[dict[str, str]] = Field(default_factory=list, description="ZFS datasets.")
    btrfs: list[dict[str, Any]] = Field(default_factory=list,
                                        description="BTRFS mounts with their subvolumes.")
    bridges: list[str] = Field(default_factory=list, description="Linux bridges.")
    storages: list[dict[str, str]] = Field(default_factory=list, description="storage.cfg entries.")
    guests: list[Guest] = Field(default_factory=list, description="VMs and containers with disks.")
    notes: list[str] = Field(default_factory=list, description="Facts that could not be read.")

    def __str__(self) -> str:
        lines = [f"node {self.node} ({self.hostname}): {len(self.guests)} guests, "
                 f"{len(self.datasets)} datasets, {sum(len(b['subvolumes']) for b in self.btrfs)} "
                 f"subvolumes, bridges {', '.join(self.bridges) or 'none'}, storages "
                 f"{', '.join(s['id'] for s in self.storages) or 'none'}"]
        lines += [f"  {g.vmid} {g.kind} {g.name}: {', '.join(d.volid for d in g.disks) or 'no disks'}"
                  for g in self.guests]
        return "\n".join(lines + [f"  note: {n}" for n in self.notes])


class SanoidInstall(BaseModel):
    """What install-sanoid did and verified."""

    node: str = Field(description="Node block name.")
    installed_now: bool = Field(description="True when this run installed the package.")
    version: str = Field(description="sanoid --version output.")
    timer: str = Field(description="systemctl is-enabled sanoid.timer.", examples=["enabled"])

    def __str__(self) -> str:
        how = "installed now" if self.installed_now else "already installed"
        return f"node {self.node}: sanoid {self.version} ({how}), sanoid.timer {self.timer}"


# -----------------------------------------------------------------------------------------------
# Helpers


async def run_many(session: NodeSession, commands: dict[str, list[str]],
                   timeout: float = 60.0) -> dict[str, Result]:
    """Run several argv commands at once over one connection (one channel each, unchecked)."""
    names = list(commands)
    results = await asyncio.gather(*(session.run(commands[n], check=False, timeout=timeout) for n in names))
    return dict(zip(names, results))


def _fact(results: dict[str, Result], name: str, notes: list[str], ok: tuple[int, ...] = (0,)) -> str:
    """stdout of one fact command, or "" with a note saying why it is missing."""
    result = results[name]
    if result.exit_status in ok:
        return result.stdout
    argv0 = (FACT_COMMANDS.get(name) or INVENTORY_COMMANDS.get(name) or [name])[0]
    if result.exit_status == NOT_INSTALLED:
        notes.append(f"{name}: {argv0} is not installed")
    else:
        last = (result.stderr.strip().splitlines() or ["no error output"])[-1]
        notes.append(f"{name}: {argv0} failed (exit status {result.exit_status}): {last}")
    return ""


# -----------------------------------------------------------------------------------------------
# node-check (N2)


def cert_commands(kind: str) -> dict[str, list[str]]:
    """``cat`` of each certificate file the node's API may serve (see ``core.certs``)."""
    return {path: ["cat", "--", path] for path in cert_files(kind)}


def node_cert_fingerprint(kind: str, results: dict[str, Result]) -> tuple[str | None, str]:
    """(fingerprint of the certificate the node's proxy serves, the file it came from) from
    the ``cert_commands`` results; (None, why) when no file could be read."""
    for path in cert_files(kind):
        result = results[path]
        fingerprint = pem_leaf_fingerprint(result.stdout) if result.exit_status == 0 else None
        if fingerprint:
            return fingerprint, path
    return None, f"none of {', '.join(cert_files(kind))} holds a certificate"


@dapx_task(name="check-ssh", retries=1)
async def check_ssh(block: ProxmoxNode) -> tuple[str, dict[str, Any], list[str], dict[str, str]]:
    """Log in (recording the host key if none is pinned), read the node's facts and the
    fingerprint of its API certificate file.

    Out: (host key line, facts, notes, {"fingerprint", "file"} of the certificate or
    {"error"}). Raises HostKeyError, AuthError, ConnectionLost.
    """
    async with block.ssh(record=True) as session:
        results = await run_many(session, FACT_COMMANDS | cert_commands(block.kind))
        host_key = session.host_key or ""
    notes: list[str] = []
    facts = {
        "hostname": _fact(results, "hostname", notes).strip(),
        "kernel": _fact(results, "kernel", notes).strip(),
        "zfs_pools": parse_zpools(_fact(results, "zpools", notes)),
        "btrfs_mounts": parse_btrfs_mounts(_fact(results, "btrfs", notes, ok=(0, 1))),
        "bridges": parse_bridges(_fact(results, "bridges", notes)),
    }
    fingerprint, file = node_cert_fingerprint(block.kind, results)
    cert = {"fingerprint": fingerprint, "file": file} if fingerprint else {"error": file}
    return host_key, facts, notes, cert


def fingerprint_to_pin(block: ProxmoxNode, node_cert: dict[str, str]) -> str:
    """The fingerprint to use for the API: the pinned one, else the one the API presents when
    it equals the node's own certificate file read over SSH (``node_cert`` from check_ssh).

    Raises TLSFingerprintError when they differ or the file could not be read: the answer
    may come from something else than the node; pin out of band then.
    """
    if block.tls_fingerprint:
        return block.tls_fingerprint
    where = f"{block.host}:{block.api_port}"
    presented = fetch_tls_fingerprint(block.host, int(block.api_port or 0))
    if "fingerprint" not in node_cert:
        raise TLSFingerprintError(
            f"node {block.name}: cannot read its API certificate over SSH "
            f"({node_cert.get('error', 'unknown reason')}), so the certificate {where} presents "
            f"({presented}) cannot be checked; pin it out of band: dapx node add {block.name} "
            f"--overwrite ... --tls-fingerprint <SHA-256>")
    if node_cert["fingerprint"] != presented:
        raise TLSFingerprintError(
            f"node {block.name}: the API at {where} presents certificate {presented}, but the "
            f"node's own {node_cert['file']} (read over SSH) is {node_cert['fingerprint']}: "
            f"something else answers for the node's API; nothing was pinned. If a proxy "
            f"serves the API on purpose, pin its fingerprint with --tls-fingerprint")
    return presented


@dapx_task(name="check-api", retries=1)
def check_api(block: ProxmoxNode, hostname: str,
              node_cert: dict[str, str] | None = None) -> tuple[str, str, list[str]]:
    """Reach the API with the token over the pinned certificate, or, when none is pinned yet,
    over the one the API presents if it is the node's own (``fingerprint_to_pin``).

    Out: (fingerprint, version, storage ids or datastores). Raises TLSFingerprintError,
    AuthError, ApiError, ConnectionLost, InputError (no token configured).
    """
    fingerprint = fingerprint_to_pin(block, node_cert or {})
    client = block.model_copy(update={"tls_fingerprint": fingerprint}).api()
    version = str(client.version().get("version", "unknown"))
    if block.kind == "pbs":
        storages = [d.get("store", "") for d in client.datastores()]
    else:
        names = {n.get("node") for n in client.nodes()}
        rows = client.storages(node=hostname) if hostname in names else client.storages()
        storages = sorted(str(s.get("storage", "")) for s in rows)
    return fingerprint, version, storages


@dapx_task(name="pin-node-keys")
async def pin_keys(block: ProxmoxNode, name: str, host_key: str, fingerprint: str) -> None:
    """Save the recorded host key and fingerprint into the node block."""
    updated = block.model_copy(update={"ssh_host_key": host_key, "tls_fingerprint": fingerprint})
    await updated.asave(name, overwrite=True)


@flow(name="node-check", log_prints=False, **KEPT_RESULTS)
async def node_check(node: NodeName) -> NodeCheckResult:
    """N2: test node ``node`` (block name): SSH login with the pinned host key, the API with its
    token and pinned certificate, versions, ZFS pools, BTRFS, bridges, storages.

    On first success the host key and TLS fingerprint are pinned into the block. Raises a
    DapxError (HostKeyError, AuthError, TLSFingerprintError, ConnectionLost, ...) when a check fails.
    """
    (block,) = await aload_nodes(node)
    host_key, facts, notes, node_cert = await check_ssh(block)
    fingerprint, version, storages = check_api(block, facts["hostname"], node_cert)
    key_recorded = block.ssh_host_key is None
    tls_recorded = block.tls_fingerprint is None
    if key_recorded or tls_recorded:
        await pin_keys(block, node, host_key, fingerprint)
    result = NodeCheckResult(
        node=node, kind=block.kind, ssh_host_key=host_key_fingerprint(host_key),
        ssh_host_key_recorded=key_recorded, tls_fingerprint=fingerprint,
        tls_fingerprint_recorded=tls_recorded, api_version=version, storages=storages,
        notes=notes, **facts)
    await acreate_table_artifact(result.rows(), key=f"node-check-{node}",
                                 description=f"node-check of {node}: SSH, API, storage and network")
    return result


# -----------------------------------------------------------------------------------------------
# node-inventory (N3)


@dapx_task(name="read-inventory")
async def read_inventory(block: ProxmoxNode, name: str) -> NodeInventory:
    """Read datasets, BTRFS subvolumes, bridges, storages and every guest's disks.

    One connection; the commands run at once on it, plus one ``btrfs subvolume list`` per
    BTRFS mount. Raises ConnectionLost/HostKeyError/AuthError.
    """
    session = await get_session(block)
    results = await run_many(session, INVENTORY_COMMANDS)
    notes: list[str] = []
    mounts = parse_btrfs_mounts(_fact(results, "btrfs", notes, ok=(0, 1)))
    listed = await run_many(session, {m["mount"]: ["btrfs", "subvolume", "list", m["mount"]] for m in mounts})
    btrfs = [{**m, "subvolumes": parse_subvolumes(listed[m["mount"]].stdout)} for m in mounts]
    return NodeInventory(
        node=name, hostname=_fact(results, "hostname", notes).strip(),
        datasets=parse_datasets(_fact(results, "datasets", notes)), btrfs=btrfs,
        bridges=parse_bridges(_fact(results, "bridges", notes)),
        storages=[{"id": sid, **opts} for sid, opts in parse_storage_cfg(
            _fact(results, "storage_cfg", notes)).items()] if block.kind == "pve" else [],
        guests=parse_guest_configs(_fact(results, "guest_configs", notes, ok=(0, 1)))
        if block.kind == "pve" else [],
        notes=notes)


@flow(name="node-inventory", log_prints=False, **KEPT_RESULTS)
async def node_inventory(node: NodeName) -> NodeInventory:
    """N3: inventory of node ``node`` (block name): ZFS datasets, BTRFS subvolumes, bridges,
    storages, VMs and containers with their disks. Leaves a table artifact of the guests."""
    (block,) = await aload_nodes(node)
    async with node_sessions():
        inventory = await read_inventory(block, node)
    rows = [{"vmid": str(g.vmid), "kind": g.kind, "name": g.name,
             "disks": ", ".join(f"{d.key}={d.volid}" for d in g.disks)} for g in inventory.guests]
    await acreate_table_artifact(rows or [{"vmid": "", "kind": "", "name": "no guests", "disks": ""}],
                                 key=f"node-inventory-{node}", description=str(inventory).splitlines()[0])
    return inventory


# -----------------------------------------------------------------------------------------------
# install-sanoid (N4)

MIRROR_TROUBLE = ("could not resolve", "temporary failure resolving", "failed to fetch",
                  "unable to fetch some archives", "network is unreachable", "connection timed out",
                  "unable to connect", "unable to locate package", "has no installation candidate")


def _mirror_error(name: str, err: CommandError) -> CommandError:
    """A clear error when apt cannot reach a package mirror, else ``err`` unchanged."""
    if any(text in err.stderr_tail.lower() for text in MIRROR_TROUBLE):
        last = (err.stderr_tail.splitlines() or [""])[-1]
        return CommandError(f"node {name} cannot install sanoid: it cannot reach a Debian package "
                            f"mirror ({last}). Give the node access to a mirror (or a proxy in "
                            f"/etc/apt/apt.conf.d) and run install-sanoid again",
                            argv=err.argv, exit_status=err.exit_status, stderr_tail=err.stderr_tail)
    return err


@dapx_task(name="ensure-sanoid-package", retries=1)
async def ensure_sanoid_package(block: ProxmoxNode, name: str) -> bool:
    """Install the sanoid package unless ``dpkg -s sanoid`` says it is there; True if installed now."""
    session = await get_session(block)
    status = await session.run(["dpkg", "-s", "sanoid"], check=False)
    if status.exit_status == 0 and "install ok installed" in status.stdout:
        return False
    apt_env = {"DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "--no-install-recommends", "sanoid"]
    try:
        await session.run(install, env=apt_env, timeout=900)
    except CommandError as first:
        if "unable to locate package" not in first.stderr_tail.lower():
            raise _mirror_error(name, first) from None
        try:  # stale package lists: refresh once, then retry
            await session.run(["apt-get", "update"], env=apt_env, timeout=600)
            await session.run(install, env=apt_env, timeout=900)
        except CommandError as err:
            raise _mirror_error(name, err) from None
    return True


@dapx_task(name="enable-sanoid-timer")
async def enable_sanoid_timer(block: ProxmoxNode) -> tuple[str, str]:
    """``systemctl enable --now sanoid.timer`` then verify; out: (is-enabled answer, version)."""
    session = await get_session(block)
    await session.run(["systemctl", "enable", "--now", "sanoid.timer"])
    enabled = (await session.run(["systemctl", "is-enabled", "sanoid.timer"])).stdout.strip()
    version = (await session.run(["sanoid", "--version"])).stdout.strip().splitlines()
    return enabled, (version[0] if version else "unknown")


@flow(name="install-sanoid", log_prints=False, **KEPT_RESULTS)
async def install_sanoid(node: NodeName) -> SanoidInstall:
    """N4: install sanoid on node ``node`` (block name), enable ``sanoid.timer``, verify both.

    Raises CommandError with a clear message when the node cannot reach a package mirror.
    """
    (block,) = await aload_nodes(node)
    async with node_sessions():
        installed_now = await ensure_sanoid_package(block, node)
        enabled, version = await enable_sanoid_timer(block)
    if enabled != "enabled":
        raise CommandError(f"sanoid.timer on node {node} is {enabled!r} after enabling it",
                           argv=["systemctl", "is-enabled", "sanoid.timer"])
    result = SanoidInstall(node=node, installed_now=installed_now, version=version, timer=enabled)
    await acreate_table_artifact([{"node": node, "sanoid": version, "timer": enabled,
                                   "installed now": str(installed_now)}],
                                 key=f"install-sanoid-{node}", description=str(result))
    return result



# -----------------------------------------------------------------------------------------------
# Sync entry points for the CLI (the flows are async: from sync code they must be run on a loop)


def run_node_check(node: str) -> NodeCheckResult:
    """Run the node-check flow to completion from sync code (``dapx node test``)."""
    return asyncio.run(node_check(node))


def run_node_inventory(node: str) -> NodeInventory:
    """Run the node-inventory flow to completion from sync code."""
    return asyncio.run(node_inventory(node))


def run_install_sanoid(node: str) -> SanoidInstall:
    """Run the install-sanoid flow to completion from sync code."""
    return asyncio.run(install_sanoid(node))
