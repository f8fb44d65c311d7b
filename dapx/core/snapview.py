"""Every snapshot of every guest of a node, from ONE command's output (S3).

``LISTING_SCRIPT`` is a constant shell script run once per node: every dataset's snapshots
(``zfs get -d 1``, a few processes at once), two ``btrfs subvolume list`` per BTRFS mount (identities, then creation times), the
node's ``storage.cfg`` and every guest config (``grep -r -H``), separated by marker lines.
``parse_listing`` turns that output into a ``NodeListing``; ``guest_disks`` maps a guest's
disks to datasets or subvolumes; ``classify`` names a snapshot's group. Pure: no I/O.

Groups: ``proxmox`` (a ``[section]`` of the guest's config names it), ``sanoid``
(``autosnap_*``), ``syncoid`` (``syncoid_*``), ``replication`` (``dapx_*``, ours), ``other``.
"""

from __future__ import annotations

import re
import uuid as uuidlib
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Literal

from dapx.core.btrfs_argv import BtrfsSubvolume, parse_subvolume_list
from dapx.core.guestconfig import GuestConfig, list_disks, parse_guest_config
from dapx.core.snapnames import SNAPSHOT_PREFIX
from dapx.core.snapshots import Snapshot
from dapx.core.storagecfg import parse_storage_cfg
from dapx.core.volumes import btrfs_subvolume, zfs_dataset
from dapx.errors import InputError

Group = Literal["proxmox", "sanoid", "syncoid", "replication", "other"]
GROUPS: tuple[Group, ...] = ("proxmox", "sanoid", "syncoid", "replication", "other")
SNAP_PROPS = ("guid", "createtxg", "creation", "used", "referenced")
MARK = "@@dapx-section"

LIST_WORKERS = 4
"""``zfs get`` processes listing at once: ZFS answers one snapshot per round trip (zfs-fuse:
~0.45 ms each), so a few in parallel list a node of 4000 snapshots in ~60 % of the time."""

# Values arrive only as arguments ($1: the props, $2: workers); every section starts with a
# marker line. The datasets are listed first (cheap: no snapshots), then split round-robin
# over $2 ``zfs get -d 1`` (each dataset's own snapshots, once), each into its own file so
# their output never interleaves mid-line.
LISTING_SCRIPT = r'''props=$1 workers=$2
tmp=$(mktemp -d /tmp/dapx-list.XXXXXX) || exit 70
trap 'rm -rf "$tmp"' EXIT
for pool in $(zpool list -H -o name 2>/dev/null); do
  zfs list -H -o name -t filesystem,volume -r "$pool"
done > "$tmp/datasets"
echo "@@dapx-section zfs"
if [ -s "$tmp/datasets" ]; then
  split -n "r/$workers" "$tmp/datasets" "$tmp/part."
  for part in "$tmp"/part.*; do
    xargs -r zfs get -H -p -d 1 -o name,property,value "$props" < "$part" > "$part.out" &
  done
  wait
  cat "$tmp"/part.*.out
fi
for mount in $(findmnt -t btrfs -n -r -o TARGET 2>/dev/null); do
  echo "@@dapx-section btrfs $mount"
  btrfs subvolume list -u -q -R -c "$mount"
  echo "@@dapx-section btrfs-otime $mount"
  btrfs subvolume list -s "$mount"
done
echo "@@dapx-section storage"
cat /etc/pve/storage.cfg 2>/dev/null
echo "@@dapx-section configs"
grep -r -H "" /etc/pve/qemu-server/ /etc/pve/lxc/ 2>/dev/null
exit 0'''

_CONFIG_LINE = re.compile(r"/etc/pve/(qemu-server|lxc)/([0-9]+)\.conf:(.*)")
_OTIME_LINE = re.compile(r"ID (\d+) gen \d+ cgen \d+ top level \d+ otime (\S+ \S+) path .*")


def listing_argv() -> list[str]:
    """The one command that lists everything ``parse_listing`` reads."""
    return ["sh", "-c", LISTING_SCRIPT, "sh", ",".join(SNAP_PROPS), str(LIST_WORKERS)]


@dataclass
class ZfsSnap:
    """One ZFS snapshot as ``zfs get`` showed it."""

    name: str
    guid: int = 0
    createtxg: int = 0
    creation: int = 0
    used: int | None = None
    referenced: int | None = None

    def snapshot(self) -> Snapshot:
        return Snapshot(name=self.name, guid=self.guid, createtxg=self.createtxg,
                        creation=self.creation)


@dataclass
class BtrfsMount:
    """One BTRFS filesystem: its subvolumes and the creation time (Unix s) of snapshots."""

    mount: str
    subvolumes: list[BtrfsSubvolume] = field(default_factory=list)
    otimes: dict[int, int] = field(default_factory=dict)


@dataclass
class NodeListing:
    """Everything one node holds that the view needs."""

    datasets: set[str] = field(default_factory=set)
    zfs: dict[str, list[ZfsSnap]] = field(default_factory=dict)
    btrfs: list[BtrfsMount] = field(default_factory=list)
    storage_text: str = ""
    configs: dict[int, tuple[str, str]] = field(default_factory=dict)
    """vmid -> (kind qemu|lxc, config text)"""

    @property
    def storages(self) -> dict[str, dict[str, str]]:
        return parse_storage_cfg(self.storage_text)

    def snapshot_count(self) -> int:
        return sum(len(v) for v in self.zfs.values()) + sum(
            1 for m in self.btrfs for s in m.subvolumes if "@" in s.path.rsplit("/", 1)[-1])


def _sections(output: str) -> list[tuple[str, list[str]]]:
    found: list[tuple[str, list[str]]] = []
    for line in output.splitlines():
        if line.startswith(MARK + " "):
            found.append((line[len(MARK) + 1:], []))
        elif found:
            found[-1][1].append(line)
    return found


def parse_listing(output: str) -> NodeListing:
    """``listing_argv`` output -> NodeListing. Lines that fit no format are skipped."""
    listing = NodeListing()
    mounts: dict[str, BtrfsMount] = {}
    for head, lines in _sections(output):
        kind, _, mount = head.partition(" ")
        if kind == "zfs":
            _parse_zfs(lines, listing)
        elif kind == "btrfs":
            mounts[mount] = BtrfsMount(mount, parse_subvolume_list(
                "\n".join(ln for ln in lines if ln.startswith("ID "))))
            listing.btrfs.append(mounts[mount])
        elif kind == "btrfs-otime" and mount in mounts:
            mounts[mount].otimes = _parse_otimes(lines)
        elif kind == "storage":
            listing.storage_text = "\n".join(lines) + "\n"
        elif kind == "configs":
            listing.configs = _parse_configs(lines)
    return listing


def _parse_zfs(lines: list[str], listing: NodeListing) -> None:
    snaps: dict[str, dict[str, ZfsSnap]] = {}
    for line in lines:
        parts = line.split("\t")
        if len(parts) != 3:
            continue
        name, prop, value = parts
        base, at, short = name.partition("@")
        if not at:
            listing.datasets.add(base)
            continue
        snap = snaps.setdefault(base, {}).setdefault(short, ZfsSnap(short))
        if prop in SNAP_PROPS and value.isdigit():
            setattr(snap, prop, int(value))
    for base, found in snaps.items():
        listing.zfs[base] = sorted(found.values(), key=lambda s: (s.createtxg, s.name))


def _parse_otimes(lines: list[str]) -> dict[int, int]:
    otimes = {}
    for line in lines:
        match = _OTIME_LINE.fullmatch(line.strip())
        if match:
            try:
                when = datetime.strptime(match[2], "%Y-%m-%d %H:%M:%S")
            except ValueError:
                continue
            # btrfs-progs prints local time; nodes run in UTC on PVE installs we target,
            # and an hour's skew only moves the shown time, never a decision.
            otimes[int(match[1])] = int(when.replace(tzinfo=timezone.utc).timestamp())
    return otimes


def _parse_configs(lines: list[str]) -> dict[int, tuple[str, str]]:
    files: dict[int, tuple[str, list[str]]] = {}
    for line in lines:
        match = _CONFIG_LINE.fullmatch(line)
        if match:
            kind = "qemu" if match[1] == "qemu-server" else "lxc"
            files.setdefault(int(match[2]), (kind, []))[1].append(match[3])
    return {vmid: (kind, "\n".join(body) + "\n") for vmid, (kind, body) in files.items()}


# -----------------------------------------------------------------------------------------------
# Guests and their disks


@dataclass(frozen=True)
class GuestDiskPlace:
    """Where one guest disk lives: a ZFS dataset, or a BTRFS subvolume (mount + relative)."""

    key: str
    volid: str
    kind: Literal["zfs", "btrfs", "other"]
    location: str
    """dataset name (zfs), subvolume path relative to its mount (btrfs), volid (other)"""
    mount: str = ""


def guest_config(listing: NodeListing, vmid: int) -> GuestConfig:
    """The parsed config of ``vmid``; InputError when the node has no such guest."""
    if vmid not in listing.configs:
        raise InputError(f"guest {vmid} is not on this node")
    kind, text = listing.configs[vmid]
    return parse_guest_config(text, kind)  # type: ignore[arg-type]


def guest_disks(listing: NodeListing, vmid: int) -> list[GuestDiskPlace]:
    """Every data disk of ``vmid`` with where it lives (host paths and unknown storages are
    ``other``)."""
    storages = listing.storages
    places = []
    for disk in list_disks(guest_config(listing, vmid)):
        opts = storages.get(disk.storage or "", {})
        try:
            if opts.get("type") == "zfspool" and "pool" in opts:
                places.append(GuestDiskPlace(disk.key, disk.volid, "zfs",
                                             zfs_dataset(opts["pool"], disk.volname)))
                continue
            if opts.get("type") == "btrfs" and "path" in opts:
                path = btrfs_subvolume(opts["path"], disk.volname)
                mount = _mount_of(listing, path)
                if mount:
                    places.append(GuestDiskPlace(disk.key, disk.volid, "btrfs",
                                                 path[len(mount):].strip("/"), mount))
                    continue
        except InputError:
            pass
        places.append(GuestDiskPlace(disk.key, disk.volid, "other", disk.volid))
    return places


def _mount_of(listing: NodeListing, path: str) -> str:
    found = [m.mount for m in listing.btrfs
             if path == m.mount or path.startswith(m.mount.rstrip("/") + "/")]
    return max(found, key=len) if found else ""


def btrfs_identity(subvolume: BtrfsSubvolume) -> int:
    """The GUID-like identity of a BTRFS snapshot (``received_uuid`` else ``uuid``) as int."""
    return uuidlib.UUID(subvolume.identity).int


# -----------------------------------------------------------------------------------------------
# Groups


def classify(name: str, proxmox_names: set[str] | frozenset[str] = frozenset()) -> Group:
    """The group of a snapshot name; ``proxmox_names`` are the guest config's sections."""
    if name in proxmox_names:
        return "proxmox"
    if name.startswith("autosnap_"):
        return "sanoid"
    if name.startswith("syncoid_"):
        return "syncoid"
    if name.startswith(SNAPSHOT_PREFIX):
        return "replication"
    return "other"
