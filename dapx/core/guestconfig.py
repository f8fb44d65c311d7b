"""PVE guest config files (qemu-server ``<vmid>.conf`` and lxc ``<vmid>.conf``).

Format (PVE::QemuServer / PVE::LXC::Config): ``key: value`` lines; ``#`` lines are the
description (at the top of the current section); blank lines; sections ``[snapname]``,
``[PENDING]`` and ``[special:cloudinit]`` each hold their own lines. The parser keeps every
line's raw text (with its line ending), so ``serialise(parse(text)) == text`` byte for byte,
and edits touch only the lines they change.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from dapx.core.propstring import PropertyString

GuestKind = Literal["qemu", "lxc"]

_SECTION = re.compile(r"\[([^\]\s]+)\]\s*")
# PVE's own line regexes: ``key: value`` with key ``[a-z][a-z_]*\d*``; raw LXC keys
# ``lxc.x.y`` may also use ``=``.
_KEY_VALUE = re.compile(r"([a-z][a-z_]*\d*):\s*(.*?)\s*")
_LXC_RAW = re.compile(r"(lxc\.[a-z0-9_\-.]+)(?::|\s*=)\s*(.*?)\s*")

QEMU_DISK_KEYS = (
    [f"ide{i}" for i in range(4)] + [f"sata{i}" for i in range(6)]
    + [f"scsi{i}" for i in range(31)] + [f"virtio{i}" for i in range(16)]
    + ["efidisk0", "tpmstate0"]
)
LXC_DISK_KEYS = ["rootfs"] + [f"mp{i}" for i in range(256)]
UNUSED_KEYS = [f"unused{i}" for i in range(256)]


@dataclass
class ConfigLine:
    """One line: ``key``/``value`` set for ``key: value`` lines, else None (comment, blank)."""

    raw: str
    key: str | None = None
    value: str | None = None

    @property
    def is_comment(self) -> bool:
        return self.raw.lstrip().startswith("#")


@dataclass
class Section:
    """The main config (``name`` None) or one ``[name]`` section with its header line."""

    name: str | None
    header: str = ""
    lines: list[ConfigLine] = field(default_factory=list)

    def get(self, key: str) -> str | None:
        """The value of ``key`` in this section, or None."""
        return next((ln.value for ln in self.lines if ln.key == key), None)

    def items(self) -> list[tuple[str, str]]:
        """``(key, value)`` pairs in file order."""
        return [(ln.key, ln.value) for ln in self.lines if ln.key is not None
                and ln.value is not None]


@dataclass
class GuestConfig:
    """A parsed guest config: ``sections[0]`` is the main config."""

    kind: GuestKind
    sections: list[Section]

    @property
    def main(self) -> Section:
        return self.sections[0]

    @property
    def snapshot_names(self) -> list[str]:
        """Names of the ``[snapshot]`` sections (not PENDING, not special:...)."""
        return [s.name for s in self.sections[1:]
                if s.name and s.name != "PENDING" and not s.name.startswith("special:")]

    def get(self, key: str) -> str | None:
        """A key of the main config, or None."""
        return self.main.get(key)


def _parse_line(raw: str) -> ConfigLine:
    text = raw.rstrip("\r\n")
    if text.strip() == "" or text.lstrip().startswith("#"):
        return ConfigLine(raw)
    match = _KEY_VALUE.fullmatch(text) or _LXC_RAW.fullmatch(text)
    if not match:
        return ConfigLine(raw)  # kept verbatim; PVE would warn about it too
    return ConfigLine(raw, match[1], match[2])


def split_lines(text: str) -> list[str]:
    """``text`` cut after each ``\n`` only, endings kept, as PVE reads a config
    (``split /\n/``): ``str.splitlines`` would also cut at ``\v``, ``\f``, ``\x1c-\x1e``,
    ``\x85``, ``\u2028``/``\u2029`` and so lose what follows them when the config is
    rewritten."""
    parts = text.split("\n")
    return [part + "\n" for part in parts[:-1]] + ([parts[-1]] if parts[-1] else [])


def parse_guest_config(text: str, kind: GuestKind) -> GuestConfig:
    """Parse a guest config. In: the file text and ``kind``. Out: a GuestConfig. Never raises
    on odd lines: they are kept verbatim (key None) so they serialise back unchanged."""
    sections = [Section(None)]
    for raw in split_lines(text):
        header = _SECTION.fullmatch(raw.rstrip("\r\n"))
        if header:
            sections.append(Section(header[1], raw))
        else:
            sections[-1].lines.append(_parse_line(raw))
    return GuestConfig(kind, sections)


def serialise(config: GuestConfig) -> str:
    """The config as file text; byte-identical to the parsed text for untouched lines."""
    return "".join(s.header + "".join(ln.raw for ln in s.lines) for s in config.sections)


class Disk(BaseModel):
    """One guest volume that holds data to replicate."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    key: str = Field(description="Config key", examples=["scsi0"])
    storage: str | None = Field(description="PVE storage id; None for a host path "
                                "(passthrough), which cannot be replicated",
                                examples=["local-zfs"])
    volname: str = Field(description="Volume name on the storage, or the host path",
                         examples=["vm-100-disk-0"])
    options: dict[str, str] = Field(default_factory=dict, description="The other properties",
                                    examples=[{"iothread": "1", "size": "32G"}])

    @property
    def volid(self) -> str:
        """``storage:volname`` (or the bare path)."""
        return f"{self.storage}:{self.volname}" if self.storage else self.volname


def disk_keys(kind: GuestKind) -> list[str]:
    """Every config key that can hold a data volume for ``kind`` (unusedN included)."""
    return (QEMU_DISK_KEYS if kind == "qemu" else LXC_DISK_KEYS) + UNUSED_KEYS


def _disk(key: str, value: str, kind: GuestKind) -> Disk | None:
    """A Disk for one config entry, or None when it holds no data volume."""
    props = PropertyString.parse(value)
    # LXC mount points may spell the volume as ``volume=...``
    volume = (props.get("volume") or props.default) if kind == "lxc" else props.default
    if not volume or volume == "none" or props.get("media") == "cdrom":
        return None
    if volume.startswith("/"):  # passthrough device or bind mount
        return Disk(key=key, storage=None, volname=volume, options=props.options())
    storage, sep, volname = volume.partition(":")
    if not sep or volname.startswith("iso/"):
        return None
    return Disk(key=key, storage=storage, volname=volname, options=props.options())


def list_disks(config: GuestConfig) -> list[Disk]:
    """The main config's data volumes in config-key order (ide, sata, scsi, virtio, efidisk,
    tpmstate, unused for qemu; rootfs, mpN, unused for lxc). Skipped: ``none``, CD-ROMs
    (``media=cdrom``, including cloud-init drives) and ISO volumes. Host paths are returned
    with ``storage`` None so the caller can refuse them by name."""
    values = dict(config.main.items())
    found = (_disk(key, values[key], config.kind) for key in disk_keys(config.kind)
             if key in values)
    return [d for d in found if d is not None]
