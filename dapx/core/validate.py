"""Validators for every user-supplied name that can reach a command line or a config file.

Each validator takes the raw value, returns it (normalised where said) and raises
``InputError`` with a one-line message that names the value and says what to fix. They run
before anything touches a node, so nothing unchecked reaches an argv (zrepl ``snapname.New``).

Naming decisions (stricter than the tools where the tools' leniency is a hazard):
- ZFS components use ZFS's own characters ``[A-Za-z0-9_.:-]`` but never spaces (ZFS allows
  them; syncoid builds shell strings and PVE storage paths are not tested with them), never a
  leading ``-`` (would read as an option), never ``.``/``..``, never ``%`` (ZFS-internal).
- Pool names also follow ZFS: start with a letter, no reserved vdev words, no ``c<digit>``
  start, and no ``:`` (syncoid would mistake ``pool:x`` for ``host:dataset``).
- Whole dataset and snapshot names stay under ZFS's 256-byte limit (255 characters).
"""

from __future__ import annotations

import ipaddress
import re
from typing import Literal, get_args

from dapx.errors import InputError

ZFS_MAX_NAME = 255  # MAXNAMELEN is 256 including the terminating NUL
VMID_MIN, VMID_MAX = 100, 999_999_999  # PVE's pve-vmid range
IFNAMSIZ_MAX = 15  # Linux interface names: IFNAMSIZ 16 including the NUL

Compression = Literal["lz4", "zstd", "gzip", "none"]
COMPRESSIONS: tuple[str, ...] = get_args(Compression)

_ZFS_COMPONENT = re.compile(r"[A-Za-z0-9_.:-]+")
# zpool(8): "mirror", "raidz", "draid", "spare" and "log" are reserved, as are names starting
# with the first four.
_POOL_RESERVED_PREFIXES = ("mirror", "raidz", "draid", "spare")
_DNS_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
NODE_NAME_PATTERN = r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$"
"""A node name, the same rule everywhere (blocks, jobs, flow parameters): a lower-case DNS
label, as Prefect names block documents and as PVE shows node names. Anchored for the JSON
schema (which searches); Python code uses ``fullmatch`` (``$`` also matches before a final
newline)."""
_NODE_NAME = re.compile(NODE_NAME_PATTERN.removeprefix("^").removesuffix("$"))
# A last label that is all digits or hex ("1", "0x7f") makes resolvers read the name as an
# IPv4 address in a legacy form (inet_aton: 127.1, 0177.0.0.1, 0x7f.1): not a host name.
_NUMERIC_LABEL = re.compile(r"[0-9]+|0[xX][0-9A-Fa-f]*")
_BRIDGE = re.compile(r"[A-Za-z0-9_.-]{1,15}")
_STORAGE_ID = re.compile(r"[A-Za-z][A-Za-z0-9_.-]*[A-Za-z0-9]")
_BANDWIDTH = re.compile(r"([1-9][0-9]{0,8})([kKmMgG])")
_SAFE_PATH = re.compile(r"(/[A-Za-z0-9_.@:+-]+)+/?")
_UNITS = {"k": 1024, "m": 1024**2, "g": 1024**3}
BANDWIDTH_MIN = 128 * 1024  # below syncoid's 128k mbuffer block size, mbuffer stalls


def _show(value: object) -> str:
    """A value as it may appear in a one-line message (repr escapes newlines and controls)."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _check_component(name: str, component: str, what: str) -> None:
    """Raise InputError unless ``component`` is one acceptable ZFS name component."""
    if component == "":
        raise InputError(f"{what} {_show(name)} has an empty component; remove the extra '/'")
    if not _ZFS_COMPONENT.fullmatch(component):
        bad = next(c for c in component if not _ZFS_COMPONENT.fullmatch(c))
        raise InputError(f"{what} {_show(name)} contains {_show(bad)}; "
                         "use only letters, digits and _ . : -")
    if component.startswith("-"):
        raise InputError(f"{what} {_show(name)} has a component starting with '-'; rename it")
    if component in (".", ".."):
        raise InputError(f"{what} {_show(name)} has a '{component}' component; use real names")


def _check_str(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise InputError(f"{what} must be text, got {_show(value)}")
    return value


def validate_pool_name(name: str) -> str:
    """A ZFS pool name (``rpool``). In: the name. Out: the same name. Raises InputError."""
    name = _check_str(name, "pool name")
    _check_component(name, name, "pool name")
    if not name[0].isascii() or not name[0].isalpha():
        raise InputError(f"pool name {_show(name)} must start with a letter")
    if ":" in name:
        raise InputError(f"pool name {_show(name)} contains ':'; syncoid would read it as "
                         "host:dataset, rename the pool")
    if name.startswith(_POOL_RESERVED_PREFIXES) or name == "log":
        raise InputError(f"pool name {_show(name)} starts with a reserved vdev word; rename it")
    if re.fullmatch(r"c[0-9].*", name, re.DOTALL):
        raise InputError(f"pool name {_show(name)} looks like a disk name (c0...); rename it")
    if len(name) > ZFS_MAX_NAME:
        raise InputError(f"pool name is {len(name)} characters; ZFS allows {ZFS_MAX_NAME}")
    return name


def validate_dataset_name(name: str) -> str:
    """A whole dataset name ``pool/a/b`` (no ``@snap``, no ``#bookmark``).

    In: the name. Out: the same name. Raises InputError naming the bad part.
    """
    name = _check_str(name, "dataset name")
    if "@" in name or "#" in name:
        raise InputError(f"dataset name {_show(name)} contains '@' or '#'; give the dataset "
                         "only, without a snapshot or bookmark")
    if name.startswith("/") or name.endswith("/"):
        raise InputError(f"dataset name {_show(name)} must not start or end with '/'")
    pool, *rest = name.split("/")
    validate_pool_name(pool)
    for component in rest:
        _check_component(name, component, "dataset name")
    if len(name) > ZFS_MAX_NAME:
        raise InputError(f"dataset name is {len(name)} characters; ZFS allows {ZFS_MAX_NAME}")
    return name


def validate_subfolder(name: str) -> str:
    """A relative dataset path under the destination pool (``replica/site-b``), or ``""``.

    In: the sub-folder. Out: it without surrounding slashes. Raises InputError.
    """
    name = _check_str(name, "sub-folder")
    if name == "":
        return ""
    stripped = name.strip("/")
    if stripped == "" or "@" in name or "#" in name:
        raise InputError(f"sub-folder {_show(name)} is not a dataset path; use e.g. 'replica'")
    for component in stripped.split("/"):
        _check_component(name, component, "sub-folder")
    if len(stripped) > ZFS_MAX_NAME:
        raise InputError(f"sub-folder is {len(stripped)} characters; ZFS allows {ZFS_MAX_NAME}")
    return stripped


def validate_snapshot_name(name: str) -> str:
    """The part after ``@`` of a snapshot (``dapx_job_20250101T000000Z``).

    In: the short name. Out: the same name. Raises InputError.
    """
    name = _check_str(name, "snapshot name")
    if "@" in name or "/" in name or "#" in name:
        raise InputError(f"snapshot name {_show(name)} must be the part after '@' only")
    _check_component(name, name, "snapshot name")
    if len(name) > ZFS_MAX_NAME:
        raise InputError(f"snapshot name is {len(name)} characters; ZFS allows {ZFS_MAX_NAME}")
    return name


def snapshot_path(dataset: str, snapshot: str) -> str:
    """``dataset@snapshot`` from two validated parts; raises InputError when too long."""
    full = f"{validate_dataset_name(dataset)}@{validate_snapshot_name(snapshot)}"
    if len(full) > ZFS_MAX_NAME:
        raise InputError(f"snapshot {_show(full)} is longer than {ZFS_MAX_NAME} characters; "
                         "use a shorter dataset or job name")
    return full


def validate_vmid(vmid: int | str) -> int:
    """A PVE guest id. In: int or decimal text. Out: int in 100..999999999. Raises InputError."""
    if isinstance(vmid, bool):
        raise InputError(f"VMID must be a number, got {_show(vmid)}")
    if isinstance(vmid, str):
        if not re.fullmatch(r"[0-9]{1,10}", vmid):
            raise InputError(f"VMID {_show(vmid)} is not a number; use 100..999999999")
        vmid = int(vmid)
    if not isinstance(vmid, int):
        raise InputError(f"VMID must be a number, got {_show(vmid)}")
    if not VMID_MIN <= vmid <= VMID_MAX:
        raise InputError(f"VMID {vmid} is out of range; PVE uses {VMID_MIN}..{VMID_MAX}")
    return vmid


def validate_node_name(name: str) -> str:
    """A node name: one lower-case DNS label (letters, digits, inner '-'), at most 63
    characters (``NODE_NAME_PATTERN``). In: the name. Out: the same name. Raises InputError."""
    name = _check_str(name, "node name")
    if not _NODE_NAME.fullmatch(name):
        raise InputError(f"node name {_show(name)} is not a node name; use lower-case letters, "
                         "digits and '-' (not first or last), at most 63 characters")
    return name


def validate_host(host: str) -> str:
    """An SSH target host: a canonical dotted-quad IPv4 address or a DNS host name.

    Refused: IPv4 in any other form (``127.1``, ``0177.0.0.1``, ``0x7f.1``, ``999.1.1.1``:
    resolvers read some of them as other addresses), and IPv6 literals, because syncoid
    splits ``user@host:dataset`` at the first ``:`` (a name that resolves to an IPv6
    address works). In: the host. Out: the same host. Raises InputError.
    """
    host = _check_str(host, "host")
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return _host_name(host)
    if address.version != 4:
        raise InputError(f"host {_show(host)} is an IPv6 address; syncoid cannot reach an "
                         "IPv6 literal (it splits user@host:dataset at ':'): use a host name "
                         "that resolves to it")
    return host


def _host_name(host: str) -> str:
    """``host`` when it is a DNS host name (and not an IPv4 address in disguise)."""
    labels = host.split(".")
    if ":" in host or "%" in host:
        raise InputError(f"host {_show(host)} is not a valid IPv6 address or host name; "
                         "IPv6 literals cannot be used, use a host name")
    if len(host) > 253 or not all(_DNS_LABEL.fullmatch(label) for label in labels):
        raise InputError(f"host {_show(host)} is neither an IPv4 address nor a host name")
    if _NUMERIC_LABEL.fullmatch(labels[-1]):
        raise InputError(f"host {_show(host)} is not a canonical IPv4 address (four decimal "
                         "numbers 0-255 without leading zeros, e.g. 192.0.2.10) nor a host name")
    return host


def validate_bridge_name(name: str) -> str:
    """A Linux bridge / interface name (``vmbr0``): 1..15 of ``[A-Za-z0-9_.-]``.

    In: the name. Out: the same name. Raises InputError.
    """
    name = _check_str(name, "bridge name")
    if not _BRIDGE.fullmatch(name) or name.startswith("-") or name in (".", ".."):
        raise InputError(f"bridge name {_show(name)} is invalid; use up to {IFNAMSIZ_MAX} "
                         "letters, digits, _ . - (e.g. vmbr1)")
    return name


def parse_bridge_map(text: str) -> dict[str, str]:
    """``"vmbr0=vmbr1,vmbr2=vmbr3"`` -> ``{"vmbr0": "vmbr1", "vmbr2": "vmbr3"}``; ``""`` -> ``{}``.

    Raises InputError for a malformed pair, a bad bridge name or a source mapped twice.
    """
    text = _check_str(text, "bridge map")
    mapping: dict[str, str] = {}
    for pair in (p.strip() for p in text.split(",")) if text.strip() else ():
        source, sep, target = pair.partition("=")
        if not sep:
            raise InputError(f"bridge map entry {_show(pair)} needs the form old=new "
                             "(e.g. vmbr0=vmbr1)")
        source, target = validate_bridge_name(source.strip()), validate_bridge_name(target.strip())
        if source in mapping:
            raise InputError(f"bridge map names {source} twice; keep one entry for it")
        mapping[source] = target
    return mapping


def validate_storage_id(name: str) -> str:
    """A PVE storage id (``local-zfs``), PVE's pve-storage-id format.

    In: the id. Out: the same id. Raises InputError.
    """
    name = _check_str(name, "storage id")
    if not _STORAGE_ID.fullmatch(name):
        raise InputError(f"storage id {_show(name)} is invalid; start with a letter, then "
                         "letters, digits, _ . - (e.g. local-zfs)")
    return name


def validate_compression(value: str) -> Compression:
    """One of ``lz4``, ``zstd``, ``gzip``, ``none`` (case-insensitive). Raises InputError."""
    value = _check_str(value, "compression")
    if value.lower() not in COMPRESSIONS:
        raise InputError(f"compression {_show(value)} is unknown; use one of "
                         f"{', '.join(COMPRESSIONS)}")
    return value.lower()  # type: ignore[return-value]  # checked just above


def parse_bandwidth(text: str) -> str:
    """A bandwidth limit as syncoid/mbuffer take it: ``500k``, ``10M``, ``1G`` (bytes/s).

    In: the text (unit required, k/M/G any case). Out: normalised ``<n>k|<n>M|<n>G``.
    Raises InputError for other forms or a limit under 128k (mbuffer stalls below its block).
    """
    text = _check_str(text, "bandwidth limit")
    match = _BANDWIDTH.fullmatch(text.strip())
    if not match:
        raise InputError(f"bandwidth limit {_show(text)} is invalid; use a whole number and a "
                         "unit k, M or G, e.g. 500k or 10M")
    number, unit = match.groups()
    if int(number) * _UNITS[unit.lower()] < BANDWIDTH_MIN:
        raise InputError(f"bandwidth limit {text.strip()} is below 128k; use 128k or more")
    return number + ("k" if unit.lower() == "k" else unit.upper())


def bandwidth_bytes(text: str) -> int:
    """Bytes per second of a bandwidth limit (see ``parse_bandwidth``). Raises InputError."""
    normal = parse_bandwidth(text)
    return int(normal[:-1]) * _UNITS[normal[-1].lower()]


def validate_abs_path(path: str, what: str = "path") -> str:
    """An absolute path of plain characters (``[A-Za-z0-9_.@:+-]`` between slashes).

    Used for paths syncoid puts into a shell string unquoted (ssh key, known_hosts) and for
    BTRFS subvolume paths. In: the path. Out: the same path. Raises InputError.
    """
    path = _check_str(path, what)
    if not _SAFE_PATH.fullmatch(path) or any(p in (".", "..") for p in path.split("/")):
        raise InputError(f"{what} {_show(path)} must be an absolute path of letters, digits "
                         "and _ . @ : + - only, without '..'")
    return path


_CONFIG_KEY = re.compile(r"[a-z][a-z_]*[0-9]*|lxc\.[a-z0-9_.-]+")


def validate_config_key(key: str) -> str:
    """A guest config key name as PVE spells it (``hostpci0``, ``lxc.mount.entry``).

    In: the name. Out: the same name. Raises InputError."""
    key = _check_str(key, "config key")
    if not _CONFIG_KEY.fullmatch(key):
        raise InputError(f"config key {_show(key)} is not a guest config key name; name it as "
                         "the config spells it, e.g. hostpci0 or lxc.mount.entry")
    return key


def validate_keep(keep: int) -> int:
    """Versions to keep: an int 1..10000. Raises InputError."""
    if isinstance(keep, bool) or not isinstance(keep, int) or not 1 <= keep <= 10_000:
        raise InputError(f"versions to keep {_show(keep)} must be a whole number 1..10000")
    return keep
