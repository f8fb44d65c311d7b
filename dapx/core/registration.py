"""Rewrite a source guest config for registration on the destination (feature R3).

In: the parsed source config, its VMID and ``RegistrationOptions``. Out: a new GuestConfig
whose disks name the replicated volumes (new VMID, destination storage), whose bridges are
mapped, with ``cpu: host`` when asked, without snapshot/PENDING/cloud-init sections and
without ``parent``, ``lock`` and ``onboot`` (a replica must not start by itself; PVE's default
for a missing ``onboot`` is off). Lines not changed keep their exact bytes.

Keys that would run code as root on the destination or hand it host devices it may not have
(``hookscript``, ``args``, ``hostpci*``, ``usb*``, host serial/parallel ports; for
containers every raw ``lxc.*`` key and ``devN``) are dropped unless the job names them in
``carry_keys``; ``dropped_keys`` lists them for the plan and the result. Description lines
carrying a replica mark (``#dapx-replica-of: ...``) are dropped too: only the mark the
product writes on the first line counts (a source that is itself a replica, or a description
someone typed, must not make its copy look like another guest's replica).
"""

from __future__ import annotations

import copy
import re
from collections.abc import Collection

from pydantic import BaseModel, ConfigDict, Field, field_validator

from dapx.core.guestconfig import (ConfigLine, GuestConfig, Section, list_disks,
                                   parse_guest_config, serialise)
from dapx.core.propstring import PropertyString
from dapx.core.types import BridgeName, StorageId, Vmid
from dapx.core.validate import validate_config_key
from dapx.errors import ConflictError, InputError

DROPPED_KEYS = ("parent", "lock", "onboot")
REPLICA_MARK = "#dapx-replica-of: "
"""First line of every config dapx registers: ``#dapx-replica-of: pve1/100``."""
FAILED_OVER_MARK = "#dapx-failed-over-from: "
"""The first line once the failover flow started the replica as the live guest (X5):
``#dapx-failed-over-from: pve1/100 2026-12-03 09:40:12Z``. No replica run writes into it."""
# Keys that run code as root on the destination or pass host hardware through, by guest kind.
FAILED_BACK_MARK = "#dapx-failed-back-from: "
"""The first line of a guest the failback flow put back on its node (X5):
``#dapx-failed-back-from: pve3/9400 2026-12-03 17:40:12Z`` (where it ran while failed over)."""
STALE_MARK = "#dapx-stale-original-of: "
"""The first line of the guest a failback set aside (the original as it was when its node
went down): ``#dapx-stale-original-of: pve1/100 before its failback from pve3/9400 <when>``."""
_HAZARDS = {
    "qemu": re.compile(r"hookscript|args|hostpci[0-9]+|usb[0-9]+|parallel[0-9]+|serial[0-9]+"),
    "lxc": re.compile(r"hookscript|dev[0-9]+|lxc\..*", re.DOTALL),
}
_SAFE_SERIAL = "socket"  # serialN: socket is a virtual port; /dev/ttyS0 is the host's
_VOLNAME = re.compile(r"(?:(?P<dir>[0-9]+)/)?(?P<kind>vm|base|subvol)-(?P<owner>[0-9]+)-"
                      r"(?P<rest>[A-Za-z0-9_.-]+)")
_CLOUDINIT = re.compile(r"vm-[0-9]+-cloudinit(?:\.[a-z0-9]+)?")
_NET_KEY = re.compile(r"net[0-9]+")


class RegistrationOptions(BaseModel):
    """How the destination copy of a guest differs from the source."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    new_vmid: Vmid = Field(description="VMID of the guest on the destination; disk names "
                           "follow it (vm-100-disk-0 becomes vm-9100-disk-0)", examples=[9100])
    storage_map: dict[StorageId, StorageId] = Field(
        description="Source storage id -> destination storage id, for every storage the "
        "guest's disks use (same storage type on both sides)",
        examples=[{"local-zfs": "local-zfs"}])
    bridge_map: dict[BridgeName, BridgeName] = Field(
        default_factory=dict, description="Source bridge -> destination bridge; bridges not "
        "listed stay as they are", examples=[{"vmbr0": "vmbr1"}])
    cpu_host: bool = Field(default=False, description="Set 'cpu: host' (VMs only; ignored "
                           "for containers)", examples=[True])
    carry_keys: tuple[str, ...] = Field(
        default=(), description="Config keys to carry although they run code as root or pass "
        "host devices through (hookscript, args, hostpciN, usbN, raw lxc.* keys...); by "
        "default those are dropped", examples=[("hostpci0", "lxc.cgroup2.devices.allow")])

    @field_validator("carry_keys")
    @classmethod
    def _check_carry_keys(cls, keys: tuple[str, ...]) -> tuple[str, ...]:
        try:
            return tuple(validate_config_key(k) for k in keys)
        except InputError as exc:
            raise ValueError(str(exc)) from None


def is_hazardous(kind: str, key: str, value: str) -> bool:
    """True when config line ``key: value`` of a ``kind`` guest runs code as root on the
    destination or passes a host device through."""
    if not _HAZARDS[kind].fullmatch(key):
        return False
    return not (key.startswith("serial") and value.strip() == _SAFE_SERIAL)


def is_mark_line(line: ConfigLine) -> bool:
    """True for a description line that reads as a replica mark (any spelling of it)."""
    text = line.raw.strip().lstrip("#").strip().lower()
    return line.is_comment and text.startswith(REPLICA_MARK.strip("# :"))


def failed_over_text(text: str, guest: str, when: str) -> str:
    """A registered replica's config ``text`` (first line: our mark for ``guest``, as
    ``pve1/100``) marked as failed over at ``when``: its first line becomes
    ``#dapx-failed-over-from: pve1/100 <when>``. Text marked so for ``guest`` already comes back
    unchanged (a repeated failover). Raises ConflictError for the config of another guest."""
    first, _, rest = text.partition("\n")
    if (failed_over_from(first) or "").split(" ")[0] == guest:
        return text
    if first.rstrip("\r") != REPLICA_MARK + guest:
        raise ConflictError(f"the config does not start with {REPLICA_MARK + guest!r}: it "
                            f"belongs to another guest, not to the replica of {guest}")
    return f"{FAILED_OVER_MARK}{guest} {when}\n{rest}"


def failed_over_from(text: str) -> str | None:
    """``pve1/100 <when>`` when the config ``text`` is a replica the failover flow started
    (its first line is ``FAILED_OVER_MARK``), else None."""
    first = text.split("\n", 1)[0].rstrip("\r")
    return first[len(FAILED_OVER_MARK):].strip() if first.startswith(FAILED_OVER_MARK) else None


def _is_event_line(line: ConfigLine) -> bool:
    """A failed-over or failed-back mark line (an earlier round's, carried in a description)."""
    return line.raw.lstrip().startswith((FAILED_OVER_MARK.strip(), FAILED_BACK_MARK.strip()))


def failed_back_text(text: str, original: str | None, kind: str, live: str, when: str,
                     restore_cpu: bool = False) -> str:
    """The config of a guest failed back to its node, from ``text``: the config the failback's
    copy registered (first line our replica mark for ``live``, as ``pve3/9400``).

    Its first line becomes ``#dapx-failed-back-from: <live> <when>``; the failed-over mark the
    live copy carried goes; and from ``original`` (the config the guest had on this node, None
    when it is gone) come back the keys a replica's registration leaves out, which belong to
    this node: ``onboot``, the hazardous keys (hookscript, hostpciN, ...), and ``cpu`` when the
    job set ``cpu: host`` (``restore_cpu``). Text failed back from ``live`` already comes back
    unchanged. Raises ConflictError for the config of another guest."""
    first = text.split("\n", 1)[0].rstrip("\r")
    if first.startswith(f"{FAILED_BACK_MARK}{live} "):
        return text
    if first != REPLICA_MARK + live:
        raise ConflictError(f"the config does not start with {REPLICA_MARK + live!r}: it is "
                            f"not the failback's copy of {live}")
    config = parse_guest_config(text, kind)  # type: ignore[arg-type]
    main = config.main
    main.lines = [ln for ln in main.lines[1:] if not _is_event_line(ln)]
    if original is not None:
        old = parse_guest_config(original, kind)  # type: ignore[arg-type]
        for key, value in old.main.items():
            if key == "onboot" or is_hazardous(kind, key, value) or (restore_cpu and key == "cpu"):
                _set_key(main, key, value)
    main.lines.insert(0, ConfigLine(f"{FAILED_BACK_MARK}{live} {when}\n"))
    return serialise(config)


def replica_again_text(text: str, guest: str) -> str:
    """The live copy's config ``text`` once its guest ``guest`` (``pve1/100``) failed back: the
    failed-over first line becomes our replica mark again, so the job writes into it once
    more. Unmarked text comes back unchanged; ConflictError for the config of another guest."""
    first, _, rest = text.partition("\n")
    if first.rstrip("\r") == REPLICA_MARK + guest:
        return text
    if (failed_over_from(first) or "").split(" ")[0] != guest:
        raise ConflictError(f"the config does not start with {FAILED_OVER_MARK + guest!r}: it "
                            f"is not the failed-over copy of {guest}")
    return f"{REPLICA_MARK}{guest}\n{rest}"


def failed_back_from(text: str) -> str | None:
    """``pve3/9400 <when>`` when the config ``text`` is a guest the failback flow put back
    (its first line is ``FAILED_BACK_MARK``), else None."""
    first = text.split("\n", 1)[0].rstrip("\r")
    return first[len(FAILED_BACK_MARK):].strip() if first.startswith(FAILED_BACK_MARK) else None


def stale_original_text(text: str, kind: str, guest: str, live: str, when: str) -> str:
    """The config of the original ``guest`` (``pve1/100``) once a failback set it aside: a
    first line saying so (``#dapx-stale-original-of: pve1/100 before its failback from
    pve3/9400 <when>``) and no ``onboot``, so that it never starts beside the guest that
    replaced it (same MAC addresses, same disks' contents of an older day). Marked text comes
    back unchanged."""
    if text.startswith(STALE_MARK):
        return text
    config = parse_guest_config(text, kind)  # type: ignore[arg-type]
    config.main.lines = [ln for ln in config.main.lines
                         if ln.key != "onboot" and not _is_event_line(ln)]
    config.main.lines.insert(0, ConfigLine(f"{STALE_MARK}{guest} before its failback from "
                                           f"{live} {when}\n"))
    return serialise(config)


def dropped_keys(config: GuestConfig, carry_keys: Collection[str] = ()) -> list[str]:
    """The main config's hazardous keys the registration leaves out (those ``carry_keys``
    does not name), each once, in file order."""
    found: list[str] = []
    for key, value in config.main.items():
        if (is_hazardous(config.kind, key, value) and key not in carry_keys
                and key not in found):
            found.append(key)
    return found


def rename_volume(volname: str, old_vmid: int, new_vmid: int) -> str:
    """A volume name owned by ``old_vmid`` renamed for ``new_vmid``.

    ``vm-100-disk-0`` -> ``vm-9100-disk-0``; ``subvol-101-disk-0`` -> ``subvol-9101-disk-0``;
    ``100/vm-100-disk-0.raw`` -> ``9100/vm-9100-disk-0.raw``. Raises InputError for a linked
    clone (``base-X/vm-Y``), a volume owned by another guest or a name PVE did not make.
    """
    match = _VOLNAME.fullmatch(volname)
    if not match:
        why = "a linked clone" if re.fullmatch(r"base-[0-9]+-[^/]+/.*", volname, re.DOTALL) else \
            "not named by PVE"
        raise InputError(f"volume {volname!r} is {why}; dapx can only replicate volumes named "
                         "vm-<vmid>-..., subvol-<vmid>-... or base-<vmid>-...")
    owner, directory = int(match["owner"]), match["dir"]
    if owner != old_vmid or (directory is not None and int(directory) != old_vmid):
        raise InputError(f"volume {volname!r} belongs to guest {owner}, not {old_vmid}; "
                         "detach it or replicate that guest instead")
    renamed = f"{match['kind']}-{new_vmid}-{match['rest']}"
    return f"{new_vmid}/{renamed}" if directory is not None else renamed


def source_volname(replica_volname: str, source_vmid: int) -> str | None:
    """The source volume name a replica's volume was renamed from: ``vm-9100-disk-1`` ->
    ``vm-100-disk-1`` for guest 100 (whatever VMID the replica carries); None when the name
    is not one PVE makes."""
    match = _VOLNAME.fullmatch(replica_volname)
    if not match or match["dir"] is not None:
        return None
    return f"{match['kind']}-{int(source_vmid)}-{match['rest']}"


def _with_value(line: ConfigLine, value: str) -> ConfigLine:
    """The line with a new value, keeping its key and line ending."""
    ending = line.raw[len(line.raw.rstrip("\r\n")):]
    return ConfigLine(f"{line.key}: {value}{ending}", line.key, value)


def _new_disk_value(key: str, value: str, old_vmid: int, opts: RegistrationOptions) -> str:
    props = PropertyString.parse(value)
    storage, _, volname = (props.get("volume") or props.default or "").partition(":")
    if storage not in opts.storage_map:
        raise InputError(f"disk {key} is on storage {storage!r}, which the storage map does "
                         "not name; add it (e.g. local-zfs=local-zfs)")
    volid = f"{opts.storage_map[storage]}:{rename_volume(volname, old_vmid, opts.new_vmid)}"
    props.set("volume" if props.get("volume") else None, volid)
    return str(props)


def _cloudinit_value(value: str, old_vmid: int, opts: RegistrationOptions) -> str | None:
    """A cloud-init drive renamed for the new VMID (PVE recreates it at start), or None."""
    props = PropertyString.parse(value)
    storage, _, volname = (props.default or "").partition(":")
    if props.get("media") != "cdrom" or not _CLOUDINIT.fullmatch(volname):
        return None
    volid = f"{opts.storage_map.get(storage, storage)}:" \
            f"{rename_volume(volname, old_vmid, opts.new_vmid)}"
    props.set(None, volid)
    return str(props)


def _map_bridge(value: str, bridge_map: dict[str, str]) -> str:
    props = PropertyString.parse(value)
    bridge = props.get("bridge")
    if bridge in bridge_map:
        props.set("bridge", bridge_map[bridge])
    return str(props)


def _rewrite_line(line: ConfigLine, kind: str, disks: dict[str, str], old_vmid: int,
                  opts: RegistrationOptions) -> ConfigLine | None:
    """The destination form of one main-config line; None drops it."""
    key, value = line.key, line.value
    if key is None or value is None:
        return None if is_mark_line(line) else line
    if key in DROPPED_KEYS:
        return None
    if is_hazardous(kind, key, value) and key not in opts.carry_keys:
        return None
    if key in disks:
        return _with_value(line, _new_disk_value(key, value, old_vmid, opts))
    if _NET_KEY.fullmatch(key):
        mapped = _map_bridge(value, opts.bridge_map)
        return line if mapped == value else _with_value(line, mapped)
    cloudinit = _cloudinit_value(value, old_vmid, opts)
    return line if cloudinit is None else _with_value(line, cloudinit)


def _set_key(section: Section, key: str, value: str) -> None:
    """Set ``key`` in place, or insert it where PVE's sorted writer would put it."""
    for index, line in enumerate(section.lines):
        if line.key == key:
            section.lines[index] = _with_value(line, value)
            return
    position = next((i for i, ln in enumerate(section.lines) if ln.key and ln.key > key),
                    len(section.lines))
    section.lines.insert(position, ConfigLine(f"{key}: {value}\n", key, value))


def rewrite_for_destination(config: GuestConfig, old_vmid: int,
                            options: RegistrationOptions) -> GuestConfig:
    """The destination config (a new object; ``config`` is not changed), without the
    hazardous keys ``options`` does not carry (``dropped_keys`` names them) and without any
    replica mark from the source.

    Raises InputError for a disk on a storage missing from the storage map, a host-path
    disk, a linked clone or a volume owned by another guest.
    """
    disks = {}
    for disk in list_disks(config):
        if disk.storage is None:
            raise InputError(f"disk {disk.key} is the host path {disk.volname}; it cannot be "
                             "replicated, detach it first")
        disks[disk.key] = disk.volid
    main = Section(None, "", [])
    for line in config.main.lines:
        new = _rewrite_line(copy.copy(line), config.kind, disks, old_vmid, options)
        if new is not None:
            main.lines.append(new)
    while main.lines and main.lines[-1].raw.strip() == "":
        main.lines.pop()  # the blank line that separated the dropped sections
    if main.lines and not main.lines[-1].raw.endswith("\n"):
        last = main.lines[-1]
        main.lines[-1] = ConfigLine(last.raw + "\n", last.key, last.value)
    if options.cpu_host and config.kind == "qemu":
        _set_key(main, "cpu", "host")
    return GuestConfig(config.kind, [main])


def mapped_networks(values: dict[str, str], bridge_map: dict[str, str]) -> dict[str, str]:
    """The ``netN`` entries of a config (key -> value) that ``bridge_map`` changes, with the
    new bridge in place; other entries and the rest of each value stay as they are."""
    changed = {}
    for key, value in values.items():
        if _NET_KEY.fullmatch(key):
            mapped = _map_bridge(str(value), bridge_map)
            if mapped != value:
                changed[key] = mapped
    return changed


def bridges_used(values: dict[str, str]) -> dict[str, str]:
    """``{netN: bridge}`` for every network device of a config that names a bridge."""
    found = {}
    for key, value in values.items():
        if _NET_KEY.fullmatch(key):
            bridge = PropertyString.parse(str(value)).get("bridge")
            if bridge:
                found[key] = bridge
    return found
