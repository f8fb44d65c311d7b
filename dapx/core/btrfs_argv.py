"""``btrfs`` argv builders and parsers for BTRFS replication (btrfs-progs 6.x).

Snapshots sit beside their subvolume as PVE names them: ``<subvol>@<name>``, read-only.
Matching across nodes uses UUIDs the way ZFS uses GUIDs: a snapshot's identity is its
``received_uuid`` when it has one (it was itself received; ``btrfs send`` transmits that),
else its ``uuid``; on the destination the received copy carries the source's identity as
``received_uuid``. A subvolume in the receive directory without a ``received_uuid`` is an
interrupted receive: never a base, to be deleted before the next attempt.
"""

from __future__ import annotations

import re
import uuid as uuidlib

from pydantic import BaseModel, ConfigDict, Field

from dapx.core.snapshots import Snapshot
from dapx.core.validate import validate_abs_path, validate_snapshot_name
from dapx.errors import PermanentError

_LIST_LINE = re.compile(
    r"ID (?P<id>\d+) gen (?P<gen>\d+) cgen (?P<cgen>\d+) top level (?P<top>\d+) "
    r"parent_uuid (?P<parent>\S+)\s+received_uuid (?P<received>\S+)\s+uuid (?P<uuid>\S+) "
    r"path (?P<path>.+)")


class BtrfsSubvolume(BaseModel):
    """One line of ``btrfs subvolume list -u -q -R -c``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: int = Field(description="Subvolume id", examples=[258])
    cgen: int = Field(description="Generation when created; orders snapshots", examples=[7])
    uuid: str = Field(description="Own UUID", examples=["c8c4dd96-3fd5-0d4c-a941-d68cdd314fc6"])
    parent_uuid: str | None = Field(description="UUID of the subvolume it snapshots",
                                    examples=["7a92abaf-93dd-2047-9676-2a7e517fdf10"])
    received_uuid: str | None = Field(description="Identity of the sent snapshot, when "
                                      "received", examples=[None])
    path: str = Field(description="Path relative to the filesystem's top level",
                      examples=["images/100/vm-100-disk-0@dapx_pve3-200_20250101T000000Z"])

    @property
    def identity(self) -> str:
        """What ``btrfs send`` transmits as this snapshot's identity."""
        return self.received_uuid or self.uuid


def snapshot_ro(subvolume: str, name: str) -> list[str]:
    """``btrfs subvolume snapshot -r <subvol> <subvol>@<name>``."""
    source = validate_abs_path(subvolume, "BTRFS subvolume")
    return ["btrfs", "subvolume", "snapshot", "-r", source,
            f"{source}@{validate_snapshot_name(name)}"]


def snapshot_path(subvolume: str, name: str) -> str:
    """``<subvol>@<name>``, validated."""
    return f"{validate_abs_path(subvolume, 'BTRFS subvolume')}@{validate_snapshot_name(name)}"


def delete(path: str) -> list[str]:
    """``btrfs subvolume delete <path>`` (one subvolume, no recursion)."""
    return ["btrfs", "subvolume", "delete", validate_abs_path(path, "BTRFS subvolume")]


def send(snapshot: str, parent: str | None = None) -> list[str]:
    """``btrfs send [-p <parent>] <snapshot>`` to stdout; full when ``parent`` is None."""
    argv = ["btrfs", "send"]
    if parent is not None:
        argv += ["-p", validate_abs_path(parent, "BTRFS parent snapshot")]
    return argv + [validate_abs_path(snapshot, "BTRFS snapshot")]


def receive(directory: str) -> list[str]:
    """``btrfs receive <dir>``: creates ``<dir>/<snapshot basename>`` from stdin."""
    return ["btrfs", "receive", validate_abs_path(directory, "BTRFS receive directory")]


def writable_snapshot(snapshot: str, subvolume: str) -> list[str]:
    """``btrfs subvolume snapshot <snap> <subvol>``: the writable disk PVE uses on the
    destination, made from the newest received snapshot."""
    return ["btrfs", "subvolume", "snapshot", validate_abs_path(snapshot, "BTRFS snapshot"),
            validate_abs_path(subvolume, "BTRFS subvolume")]


def list_subvolumes(mountpoint: str) -> list[str]:
    """``btrfs subvolume list -u -q -R -c <mount>``; parse with ``parse_subvolume_list``."""
    return ["btrfs", "subvolume", "list", "-u", "-q", "-R", "-c",
            validate_abs_path(mountpoint, "BTRFS mount point")]


def _uuid(value: str) -> str | None:
    return None if value == "-" else value


def parse_subvolume_list(output: str) -> list[BtrfsSubvolume]:
    """``list_subvolumes`` output -> subvolumes. Raises PermanentError on a strange line."""
    subvolumes = []
    for line in output.splitlines():
        if not line.strip():
            continue
        match = _LIST_LINE.fullmatch(line.rstrip())
        if not match:
            raise PermanentError(f"unexpected 'btrfs subvolume list' line: {line[:120]!r}")
        subvolumes.append(BtrfsSubvolume(
            id=int(match["id"]), cgen=int(match["cgen"]), uuid=match["uuid"],
            parent_uuid=_uuid(match["parent"]), received_uuid=_uuid(match["received"]),
            path=match["path"]))
    return subvolumes


def snapshots_of(subvolumes: list[BtrfsSubvolume], relpath: str, *,
                 received: bool = False) -> list[Snapshot]:
    """Snapshots named ``<relpath>@<name>`` as planner Snapshots, oldest first.

    In: the parsed list; ``relpath`` the subvolume path relative to the top level (on the
    destination: the receive directory plus the source subvolume's basename); ``received``
    True on the destination, where subvolumes without a received_uuid (interrupted
    receives) are left out. Out: Snapshot(guid=identity as int, createtxg=cgen).
    """
    prefix = relpath.strip("/") + "@"
    snaps = [Snapshot(name=s.path[len(prefix):], guid=uuidlib.UUID(s.identity).int,
                      createtxg=s.cgen)
             for s in subvolumes if s.path.startswith(prefix) and "/" not in s.path[len(prefix):]
             and (s.received_uuid or not received)]
    return sorted(snaps, key=lambda s: s.createtxg)


def interrupted_receives(subvolumes: list[BtrfsSubvolume], relpath: str) -> list[str]:
    """Paths (relative) of ``<relpath>@*`` subvolumes without a received_uuid: the leftovers
    of a cut-off ``btrfs receive`` on the destination, to delete before retrying."""
    prefix = relpath.strip("/") + "@"
    return [s.path for s in subvolumes if s.path.startswith(prefix) and not s.received_uuid]


_SHOW_FIELDS = {"UUID": "uuid", "Parent UUID": "parent_uuid", "Received UUID": "received_uuid",
                "Gen at creation": "cgen", "Subvolume ID": "id", "Flags": "flags"}


def parse_subvolume_show(output: str) -> dict[str, str | None]:
    """``btrfs subvolume show <path>`` -> {uuid, parent_uuid, received_uuid, cgen, id,
    flags} ('-' becomes None). Raises PermanentError when the UUID line is missing."""
    found: dict[str, str | None] = {}
    for line in output.splitlines():
        label, sep, value = line.strip().partition(":")
        if sep and label in _SHOW_FIELDS:
            found[_SHOW_FIELDS[label]] = _uuid(value.strip())
    if "uuid" not in found:
        raise PermanentError("'btrfs subvolume show' output has no UUID line")
    return found


def filesystem_sync(path: str) -> list[str]:
    """``btrfs filesystem sync <path>``: commit, so writes after it carry a newer generation."""
    return ["btrfs", "filesystem", "sync", validate_abs_path(path, "BTRFS path")]


def find_new(subvolume: str, generation: int) -> list[str]:
    """``btrfs subvolume find-new <subvol> <gen>``: the file extents written in generation
    ``gen`` or later."""
    return ["btrfs", "subvolume", "find-new", validate_abs_path(subvolume, "BTRFS subvolume"),
            str(int(generation))]


def parse_find_new(output: str) -> int:
    """Bytes of data in the extents ``find_new`` lists (``inode N file offset O len L ...``).

    Only data counts: reading a file (atime) lists nothing. Raises PermanentError on a line
    that is neither an extent nor the closing ``transid marker``.
    """
    total = 0
    for line in output.splitlines():
        fields = line.split()
        if not fields or line.startswith("transid marker"):
            continue
        if fields[0] != "inode" or len(fields) < 7 or fields[5] != "len" or not fields[6].isdigit():
            raise PermanentError(f"unexpected 'btrfs subvolume find-new' line: {line[:120]!r}")
        total += int(fields[6])
    return total


def rename(source: str, target: str) -> list[str]:
    """``mv -T -- <source> <target>`` (a subvolume is renamed like a directory; ``-T`` never
    moves it INTO an existing directory)."""
    return ["mv", "-T", "--", validate_abs_path(source, "BTRFS subvolume"),
            validate_abs_path(target, "BTRFS subvolume")]
