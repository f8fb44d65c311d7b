"""PVE guest config files (qemu-server/<vmid>.conf, lxc/<vmid>.conf): parse, write, digest.

Format as PVE writes it (PVE::QemuServer::write_vm_config): description as leading '#' lines,
'key: value' lines sorted by key, then [PENDING], then one [snapname] section per snapshot.
The digest is the SHA-1 of the file's bytes, as PVE's cfs_read_file gives it.
"""

from __future__ import annotations

import hashlib
import re
import urllib.parse
from dataclasses import dataclass, field

_LINE = re.compile(r"^([a-z][a-z_\-]*\d*):\s*(.*?)\s*$")
_SECTION = re.compile(r"^\[([A-Za-z][A-Za-z0-9_\-]*|PENDING|special:cloudinit)\]\s*$")


@dataclass
class GuestConf:
    """A guest config: current values, pending changes, snapshots (name -> values)."""

    current: dict[str, str] = field(default_factory=dict)
    pending: dict[str, str] = field(default_factory=dict)
    snapshots: dict[str, dict[str, str]] = field(default_factory=dict)


def parse(text: str) -> GuestConf:
    """Parse a config file's text; unknown lines are ignored as PVE warns and skips them."""
    conf = GuestConf()
    section = conf.current
    desc: list[str] = []
    for raw in text.split("\n"):  # as PVE: split /\n/, never at \v, \x85, \u2028...
        line = raw.rstrip()
        if not line:
            continue
        sec = _SECTION.match(line)
        if sec:
            name = sec.group(1)
            section = conf.pending if name == "PENDING" else conf.snapshots.setdefault(name, {})
            desc = []
            continue
        if line.startswith("#"):
            desc.append(urllib.parse.unquote(line[1:]))
            section["description"] = "\n".join(desc)
            continue
        m = _LINE.match(line)
        if m:
            section[m.group(1)] = m.group(2)
    return conf


def _section_text(values: dict[str, str]) -> str:
    out = []
    desc = values.get("description")
    if desc:
        out += ["#" + urllib.parse.quote(d, safe=" !\"$&'()*+,-./:;<=>?@[\\]^_`{|}~") for d in desc.split("\n")]
    out += [f"{k}: {values[k]}" for k in sorted(values) if k not in ("description", "digest")]
    return "\n".join(out) + "\n"


def format_conf(conf: GuestConf) -> str:
    """The file text for conf, in PVE's order."""
    text = _section_text(conf.current)
    if conf.pending:
        text += "\n[PENDING]\n" + _section_text(conf.pending)
    for name in sorted(conf.snapshots):
        text += f"\n[{name}]\n" + _section_text(conf.snapshots[name])
    return text


def digest(text: str) -> str:
    """PVE's config digest: sha1 hex of the file content."""
    return hashlib.sha1(text.encode("utf-8")).hexdigest()


def split_prop(value: str) -> tuple[str | None, dict[str, str]]:
    """A property string 'vol,key=v,...' -> (first bare value or None, {key: v})."""
    first: str | None = None
    props: dict[str, str] = {}
    for i, part in enumerate(value.split(",")):
        if "=" in part:
            k, _, v = part.partition("=")
            props[k] = v
        elif i == 0:
            first = part
    return first, props


def join_prop(first: str | None, props: dict[str, str]) -> str:
    """Inverse of split_prop, keeping the key order given."""
    parts = [first] if first else []
    parts += [f"{k}={v}" for k, v in props.items()]
    return ",".join(parts)


DISK_KEY = re.compile(r"^(ide\d+|sata\d+|scsi\d+|virtio\d+|efidisk0|tpmstate0|unused\d+|rootfs|mp\d+)$")


def disk_volumes(values: dict[str, str]) -> dict[str, str]:
    """{config key: volume id} for every disk-like key that names a storage volume (not cdrom/none)."""
    out = {}
    for key, value in values.items():
        if not DISK_KEY.match(key):
            continue
        first, props = split_prop(value)
        vol = first if first is not None else props.get("file") or props.get("volume")
        if not vol or vol == "none" or props.get("media") == "cdrom" or ":" not in vol:
            continue
        if vol.startswith("/"):
            continue
        out[key] = vol
    return out
