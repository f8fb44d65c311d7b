"""Guest configs and storage.cfg on PVE nodes, read and written over SSH.

Reading takes one round trip: ``grep -H "" FILE...`` prints every line of several files
prefixed with its path (a missing file only makes grep exit 2), so the guest config (qemu or
lxc) and ``storage.cfg`` arrive together. Writes replace a file atomically (temporary file in
the same directory, then rename), the way PVE's own ``file_set_contents`` does on pmxcfs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from dapx.core.guestconfig import GuestConfig, GuestKind, parse_guest_config
from dapx.core.registration import REPLICA_MARK
from dapx.core.storagecfg import parse_storage_cfg
from dapx.core.validate import validate_node_name, validate_vmid
from dapx.errors import CommandError, InputError
from dapx.tasks.base import dapx_task

if TYPE_CHECKING:
    from dapx.blocks.node import ProxmoxNode

STORAGE_CFG = "/etc/pve/storage.cfg"
CONFIG_DIRS: dict[str, str] = {"qemu": "qemu-server", "lxc": "lxc"}

# Constant scripts; values only ever arrive as positional arguments ("$1"), never inside them.
_REPLACE_FILE = 'tmp="$1.tmp.$$"; cat > "$tmp" && mv -f "$tmp" "$1"'
_APPEND_FILE = 'cat >> "$1"'
_MARKED_FIRST_LINES = ('for f in /etc/pve/nodes/"$1"/qemu-server/*.conf '
                       '/etc/pve/nodes/"$1"/lxc/*.conf; do [ -f "$f" ] || continue; IFS= read -r line < "$f" || true; '
                       'case $line in "#dapx-"*) printf "%s\\t%s\\n" "$f" "$line";; esac; '
                       'done; exit 0')
"""Prints ``<path>\t<first line>`` for every guest config of node ``$1`` whose first line is
one of dapx's marks."""


@dataclass
class NodeFiles:
    """Files read from one node: path -> text (missing files are absent)."""

    files: dict[str, str] = field(default_factory=dict)

    def storages(self) -> dict[str, dict[str, str]]:
        """``storage.cfg`` sections: id -> {"type": ..., option: value}."""
        return parse_storage_cfg(self.files.get(STORAGE_CFG, ""))


@dataclass
class SourceGuest:
    """A guest's config as found on its node, and that node's storages."""

    node: str
    vmid: int
    kind: GuestKind
    text: str
    storages: dict[str, dict[str, str]]

    @property
    def config(self) -> GuestConfig:
        return parse_guest_config(self.text, self.kind)


def config_path(kind: str, vmid: int, node: str | None = None) -> str:
    """``/etc/pve/qemu-server/100.conf`` (this node) or ``/etc/pve/nodes/<node>/...``."""
    base = f"/etc/pve/nodes/{validate_node_name(node)}" if node else "/etc/pve"
    return f"{base}/{CONFIG_DIRS[kind]}/{validate_vmid(vmid)}.conf"


def parse_grep_files(output: str, paths: list[str]) -> dict[str, str]:
    """``grep -H "" PATH...`` output -> {path: text}; a path is matched as ``<path>:``."""
    found: dict[str, list[str]] = {}
    for line in output.split("\n"):  # "\n" only: configs may hold \v, \x85, \u2028...
        for path in paths:
            if line.startswith(path + ":"):
                found.setdefault(path, []).append(line[len(path) + 1:])
                break
    return {p: "\n".join(lines) + "\n" for p, lines in found.items()}


async def read_files(node: "ProxmoxNode", paths: list[str], *, timeout: float = 60.0) -> NodeFiles:
    """Read several text files in one round trip; missing files are left out.

    Raises CommandError when grep fails for another reason than a missing file.
    """
    from dapx.tasks.ssh import run

    result = await run(node, ["grep", "-H", "", "--", *paths], check=False, timeout=timeout)
    if result.exit_status not in (0, 1, 2) or (result.exit_status == 2 and any(
            "No such file" not in ln for ln in result.stderr.strip().splitlines())):
        raise CommandError(f"cannot read {', '.join(paths)} on node {node.name}: "
                           f"{result.stderr.strip()[-300:]}", exit_status=result.exit_status)
    return NodeFiles(parse_grep_files(result.stdout, paths))


async def read_source_guest(node: "ProxmoxNode", vmid: int) -> SourceGuest:
    """The config of guest ``vmid`` on ``node`` (qemu or lxc) and the node's storage.cfg.

    Raises InputError when the guest is not on that node.
    """
    paths = {kind: config_path(kind, vmid) for kind in CONFIG_DIRS}
    files = await read_files(node, [*paths.values(), STORAGE_CFG])
    kinds = [k for k, p in paths.items() if p in files.files]
    if not kinds:
        raise InputError(f"guest {vmid} is not on node {node.name} (no {paths['qemu']} or "
                         f"{paths['lxc']}); check the VMID and the source node")
    kind = kinds[0]
    return SourceGuest(node.name, vmid, kind, files.files[paths[kind]],  # type: ignore[arg-type]
                       files.storages())


async def write_file(node: "ProxmoxNode", path: str, text: str) -> None:
    """Replace ``path`` on ``node`` with ``text`` atomically. Raises CommandError."""
    from dapx.tasks.ssh import run

    await run(node, ["sh", "-c", _REPLACE_FILE, "sh", path], input=text)


async def append_file(node: "ProxmoxNode", path: str, text: str) -> None:
    """Append ``text`` to ``path`` on ``node``. Raises CommandError."""
    from dapx.tasks.ssh import run

    await run(node, ["sh", "-c", _APPEND_FILE, "sh", path], input=text)


def replica_mark(source: str, vmid: int) -> str:
    """The description line that marks a config as dapx's replica of ``source``/``vmid``."""
    return f"{REPLICA_MARK}{validate_node_name(source)}/{validate_vmid(vmid)}"


def is_replica_of(text: str, source: str, vmid: int) -> bool:
    """True when a config's FIRST line is our mark for this source guest. A mark further
    down (typed into a description, or copied from a source that is itself a replica) does
    not count: the registration strips those and writes its own first."""
    return text.split("\n", 1)[0].rstrip("\r") == replica_mark(source, vmid)


read_guest = dapx_task(read_source_guest, name="read-guest")


@dapx_task(name="marked-configs")
async def marked_configs(node: "ProxmoxNode") -> dict[str, str]:
    """``{config path: its first line}`` for the guests of ``node`` whose config's first line
    is one of dapx's marks (``#dapx-...``): where a replica, a failed-over or failed-back
    guest, or an original set aside lives there, whatever its VMID. One round trip."""
    from dapx.tasks.ssh import run

    result = await run(node, ["sh", "-c", _MARKED_FIRST_LINES, "sh",
                              validate_node_name(node.name)])
    found = {}
    for line in result.stdout.split("\n"):
        path, tab, first = line.partition("\t")
        if tab and path.endswith(".conf"):
            found[path] = first.rstrip("\r")
    return found


async def rewrite_config(node: "ProxmoxNode", path: str, change: Callable[[str], str]) -> bool:
    """Replace the config at ``path`` on ``node`` with ``change(its text)``; False when that
    changes nothing (a repeated step). Raises InputError when the file is gone, and what
    ``change`` raises (ConflictError for another guest's config)."""
    text = (await read_files(node, [path])).files.get(path)
    if text is None:
        raise InputError(f"{path} is gone from {node.name}")
    changed = change(text)
    if changed == text:
        return False
    await write_file(node, path, changed)
    return True


@dapx_task(name="mark-failed-over")
async def mark_failed_over(node: "ProxmoxNode", path: str, source: str, vmid: int,
                           when: str) -> bool:
    """Give the replica config at ``path`` on ``node`` the failed-over mark as its first line
    (``#dapx-failed-over-from: <source>/<vmid> <when>``); False when it has it already (a
    repeated failover). Raises InputError when the file is gone, ConflictError when it is
    another guest's config."""
    from dapx.core.registration import failed_over_text

    replica_mark(source, vmid)  # validates the node name and the VMID
    return await rewrite_config(node, path,
                                lambda text: failed_over_text(text, f"{source}/{vmid}", when))


@dapx_task(name="mark-replica-again")
async def mark_replica_again(node: "ProxmoxNode", path: str, source: str, vmid: int) -> bool:
    """Give the failed-over copy's config at ``path`` our replica mark for ``source``/``vmid``
    back as its first line (the guest failed back); False when it has it already."""
    from dapx.core.registration import replica_again_text

    replica_mark(source, vmid)
    return await rewrite_config(node, path,
                                lambda text: replica_again_text(text, f"{source}/{vmid}"))


@dapx_task(name="mark-failed-back")
async def mark_failed_back(node: "ProxmoxNode", path: str, kind: str, live: str,
                           original: str | None, when: str, restore_cpu: bool) -> bool:
    """Turn the failback's registered copy at ``path`` into the guest at home (see
    ``core.registration.failed_back_text``); False when it was so already."""
    from dapx.core.registration import failed_back_text

    return await rewrite_config(node, path, lambda text: failed_back_text(
        text, original, kind, live, when, restore_cpu))


@dapx_task(name="mark-stale-original")
async def mark_stale_original(node: "ProxmoxNode", path: str, kind: str, guest: str,
                              live: str, when: str) -> bool:
    """Mark the original a failback set aside at ``path`` and take its ``onboot`` away (see
    ``core.registration.stale_original_text``); False when it was so already."""
    from dapx.core.registration import stale_original_text

    return await rewrite_config(node, path, lambda text: stale_original_text(
        text, kind, guest, live, when))
