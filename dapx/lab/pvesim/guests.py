"""Guests (VMs and containers) as files under /etc/pve/nodes/<node>/{qemu-server,lxc}/<vmid>.conf.

Running state is simulated by a marker file per node (/run/dapx-sim/<vmid>.running under the
root prefix): the lab has no QEMU, so 'running' only means start was called.
"""

from __future__ import annotations

import os
import random
import time
import uuid
from pathlib import Path

from . import guestconf, paths, storage
from .httpd import ApiError
from .guestconf import GuestConf

KINDS = ("qemu", "lxc")
_INT_KEYS = {"cores", "sockets", "onboot", "vmid", "template", "balloon", "cpulimit", "cpuunits",
             "swap", "tty", "protection", "acpi", "kvm", "numa", "tablet", "vcpus", "reboot", "agent_"}


def conf_path(node: str, kind: str, vmid: int) -> Path:
    """/etc/pve/nodes/<node>/<qemu-server|lxc>/<vmid>.conf"""
    return paths.guest_dir(node, kind) / f"{vmid}.conf"


def all_guests() -> list[tuple[str, str, int]]:
    """(node, kind, vmid) of every guest this node's /etc/pve knows (the whole cluster)."""
    out = []
    nodes = paths.pve_dir() / "nodes"
    if not nodes.is_dir():
        return out
    for ndir in sorted(nodes.iterdir()):
        for kind in KINDS:
            for f in sorted(paths.guest_dir(ndir.name, kind).glob("*.conf")):
                if f.stem.isdigit():
                    out.append((ndir.name, kind, int(f.stem)))
    return out


def locate(vmid: int) -> tuple[str, str] | None:
    """(node, kind) holding vmid, or None."""
    for node, kind, v in all_guests():
        if v == vmid:
            return node, kind
    return None


def require(node: str, kind: str, vmid: int) -> GuestConf:
    """The config of vmid on node; PVE's 500 "Configuration file ... does not exist" otherwise."""
    p = conf_path(node, kind, vmid)
    if not p.exists():
        sub = "qemu-server" if kind == "qemu" else "lxc"
        raise ApiError(500, f"Configuration file 'nodes/{node}/{sub}/{vmid}.conf' does not exist")
    return guestconf.parse(p.read_text(encoding="utf-8"))


def read_text(node: str, kind: str, vmid: int) -> str:
    """The raw config text (for the digest)."""
    require(node, kind, vmid)
    return conf_path(node, kind, vmid).read_text(encoding="utf-8")


def write(node: str, kind: str, vmid: int, conf: GuestConf) -> None:
    """Write conf atomically (tmp file + rename, as pmxcfs shows whole files)."""
    p = conf_path(node, kind, vmid)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_suffix(".tmp")
    tmp.write_text(guestconf.format_conf(conf), encoding="utf-8")
    os.replace(tmp, p)


def typed(values: dict[str, str]) -> dict[str, object]:
    """Config values as the API returns them: integers for integer options."""
    out: dict[str, object] = {}
    for k, v in values.items():
        out[k] = int(v) if k in _INT_KEYS and v.lstrip("-").isdigit() else v
    return out


# ------------------------------------------------------------------ HA

def ha_state(kind: str, vmid: int) -> str | None:
    """The HA state of a guest from /etc/pve/ha/resources.cfg (``vm: 100`` / ``ct: 101``
    sections, ``state`` default started), or None when HA does not manage it."""
    cfg = paths.pve_dir() / "ha" / "resources.cfg"
    if not cfg.exists():
        return None
    want, state, inside = f"{'vm' if kind == 'qemu' else 'ct'}: {vmid}", None, False
    for line in cfg.read_text(encoding="utf-8").splitlines():
        if line and not line[0].isspace():
            inside = line.strip() == want
            state = "started" if inside else state
        elif inside and line.split()[:1] == ["state"]:
            state = line.split()[1]
    return state


# ------------------------------------------------------------------ running state

def _run_marker(vmid: int) -> Path:
    return paths.sim_path("/run/dapx-sim") / f"{vmid}.running"


def is_running(vmid: int) -> bool:
    """Whether start was called on this node and no stop since."""
    return _run_marker(vmid).exists()


def set_running(vmid: int, running: bool) -> None:
    """Mark vmid running or stopped on this node."""
    m = _run_marker(vmid)
    if running:
        m.parent.mkdir(parents=True, exist_ok=True)
        m.write_text(str(int(time.time())))
    elif m.exists():
        m.unlink()


def uptime(vmid: int) -> int:
    """Seconds since start, 0 when stopped."""
    m = _run_marker(vmid)
    return max(0, int(time.time()) - int(m.read_text() or 0)) if m.exists() else 0


# ------------------------------------------------------------------ helpers for create

def new_mac() -> str:
    """A MAC in Proxmox's BC:24:11 prefix, as PVE generates them."""
    return "BC:24:11:" + ":".join(f"{random.randint(0, 255):02X}" for _ in range(3))


def fill_defaults(kind: str, values: dict[str, str]) -> None:
    """Add what PVE adds on create: smbios1 uuid, vmgenid, MACs for net devices without one."""
    if kind == "qemu":
        values.setdefault("smbios1", f"uuid={uuid.uuid4()}")
        values.setdefault("vmgenid", str(uuid.uuid4()))
    for key, value in list(values.items()):
        if key.startswith("net") and key[3:].isdigit():
            values[key] = _with_mac(kind, value)


def _with_mac(kind: str, value: str) -> str:
    first, props = guestconf.split_prop(value)
    if kind == "qemu":
        if first is None:
            model = next((m for m in ("virtio", "e1000", "rtl8139", "vmxnet3", "e1000e") if m in props), None)
            if model and not props[model]:
                props[model] = new_mac()
            if model:
                return guestconf.join_prop(None, props)
        elif "=" not in first:
            return guestconf.join_prop(None, {first: new_mac(), **props})
        return value
    props.setdefault("hwaddr", new_mac())
    return guestconf.join_prop(first, props)


def alloc_new_disks(kind: str, vmid: int, values: dict[str, str]) -> list[str]:
    """Turn 'STORAGE:SIZE_GiB' disk specs into allocated volumes; returns the new volids."""
    created = []
    for key, value in list(values.items()):
        if not guestconf.DISK_KEY.match(key) or key.startswith("unused"):
            continue
        first, props = guestconf.split_prop(value)
        if first is None or ":" not in first:
            continue
        sid, _, spec = first.partition(":")
        if not spec.replace(".", "", 1).isdigit():
            continue
        size = int(float(spec) * 1024**3)
        subvol = kind == "lxc"
        volid = storage.alloc(sid, vmid, size, subvol=subvol)
        created.append(volid)
        props.pop("format", None)
        props["size"] = storage.format_size(size)
        values[key] = guestconf.join_prop(volid, props)
    return created
