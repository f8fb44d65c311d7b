"""Cluster and node routes: /nodes, /nodes/{node}/status, /cluster/status, /cluster/resources,
/nodes/{node}/network. Other cluster members are reported online (the lab starts them all)."""

from __future__ import annotations

import os
import time

from . import guests, paths, storage
from .httpd import ApiError, Request, Router
from .schema import Param, check

MEM_TOTAL = 16 * 1024**3


def members() -> dict[str, str]:
    """{node: address} of this node's cluster (only itself when standalone)."""
    cfg = paths.node_config()
    return dict(cfg.get("cluster_nodes") or {cfg["node"]: cfg.get("address", "127.0.0.1")})


def require_node(node: str) -> str:
    """The node name if it is a cluster member; PVE's error otherwise."""
    if node not in members():
        raise ApiError(500, f"hostname lookup '{node}' failed - failed to get address info for: {node}: "
                            "Name or service not known")
    return node


def register(router: Router) -> None:
    """Add the routes."""
    router.add("GET", "/nodes", _nodes)
    router.add("GET", "/nodes/{node}", lambda r: [{"name": n} for n in (
        "qemu", "lxc", "storage", "tasks", "network", "status", "vzdump", "version")])
    router.add("GET", "/nodes/{node}/status", _node_status)
    router.add("GET", "/nodes/{node}/version", lambda r: __import__(
        "dapx.lab.pvesim.pveapi", fromlist=["PVE_VERSION"]).PVE_VERSION)
    router.add("GET", "/nodes/{node}/network", _network)
    router.add("GET", "/nodes/{node}/capabilities/qemu/cpu", _cpu_models)
    router.add("GET", "/cluster/status", _cluster_status)
    router.add("GET", "/cluster/resources", _resources)


def _nodes(req: Request) -> list[dict]:
    local = paths.node_name()
    out = []
    for name in sorted(members()):
        entry = {"node": name, "status": "online", "type": "node", "id": f"node/{name}", "level": "",
                 "maxcpu": os.cpu_count() or 1, "maxmem": MEM_TOTAL, "mem": MEM_TOTAL // 8, "cpu": 0.01,
                 "uptime": _uptime(), "disk": 0, "maxdisk": 0, "ssl_fingerprint": _fingerprint()}
        if name != local:
            entry.pop("ssl_fingerprint")
        out.append(entry)
    return out


def _uptime() -> int:
    try:
        return int(float(open("/proc/uptime").read().split()[0]))
    except OSError:
        return 0


def _fingerprint() -> str:
    import hashlib
    import ssl
    try:
        pem = open(paths.node_config()["tls_cert"]).read()
        der = ssl.PEM_cert_to_DER_cert(pem)
    except (OSError, KeyError, ValueError):
        return ""
    h = hashlib.sha256(der).hexdigest().upper()
    return ":".join(h[i:i + 2] for i in range(0, len(h), 2))


def _node_status(req: Request) -> dict:
    require_node(req.match["node"])
    load = os.getloadavg()
    vfs = os.statvfs(str(paths.root()))
    return {"uptime": _uptime(), "loadavg": [f"{x:.2f}" for x in load], "cpu": 0.01, "wait": 0,
            "kversion": "Linux 6.8.12-4-pve #1 SMP PREEMPT_DYNAMIC PMX 6.8.12-4", "pveversion": "pve-manager/9.0.3/025864202ebb6109",
            "cpuinfo": {"cpus": os.cpu_count() or 1, "cores": os.cpu_count() or 1, "sockets": 1,
                        "model": "lab vCPU", "mhz": "2000.000", "hvm": "1", "flags": ""},
            "memory": {"total": MEM_TOTAL, "used": MEM_TOTAL // 8, "free": MEM_TOTAL - MEM_TOTAL // 8},
            "swap": {"total": 0, "used": 0, "free": 0},
            "rootfs": {"total": vfs.f_blocks * vfs.f_frsize, "avail": vfs.f_bavail * vfs.f_frsize,
                       "used": (vfs.f_blocks - vfs.f_bfree) * vfs.f_frsize, "free": vfs.f_bfree * vfs.f_frsize},
            "boot-info": {"mode": "efi", "secureboot": 0}, "current-kernel": {"sysname": "Linux",
            "release": "6.8.12-4-pve", "machine": "x86_64", "version": "#1 SMP PREEMPT_DYNAMIC PMX 6.8.12-4"}}


def _network(req: Request) -> list[dict]:
    """Interfaces from /etc/network/interfaces (iface stanzas; bridge_ports, address, gateway)."""
    require_node(req.match["node"])
    p = check({"type": Param(enum=("bridge", "bond", "eth", "alias", "vlan", "OVSBridge", "OVSBond", "OVSPort",
                                   "OVSIntPort", "any_bridge", "any_local_bridge", "include_sdn")),
               "node": Param()}, req.params)
    f = paths.sim_path("/etc/network/interfaces")
    ifaces: list[dict] = []
    if f.exists():
        cur: dict | None = None
        for line in f.read_text().splitlines():
            words = line.split()
            if not words or words[0].startswith("#"):
                continue
            if words[0] == "iface" and len(words) >= 4:
                cur = {"iface": words[1], "method": words[3], "families": [ "inet6" if words[2] == "inet6" else "inet"],
                       "active": 1, "autostart": 1, "priority": len(ifaces) + 1}
                cur["type"] = "bridge" if words[1].startswith("vmbr") else "loopback" if words[1] == "lo" else "eth"
                ifaces.append(cur)
            elif cur is not None and words[0] in ("address", "gateway", "bridge-ports", "bridge_ports", "netmask",
                                                  "bridge-stp", "bridge-fd", "bridge-vlan-aware"):
                key = words[0].replace("_", "-")
                cur[{"address": "cidr" if "/" in words[-1] else "address"}.get(key, key)] = " ".join(words[1:])
                if key == "address" and "/" in words[1]:
                    cur["address"], _, cur["netmask"] = words[1].partition("/")
            elif cur is not None and words[0] == "bridge-ports" or words[0] == "bridge_ports":
                pass
    ifaces = [i for i in ifaces if i["type"] != "loopback"]
    if p.get("type") in ("bridge", "any_bridge", "any_local_bridge"):
        ifaces = [i for i in ifaces if i["type"] == "bridge"]
    elif p.get("type"):
        ifaces = [i for i in ifaces if i["type"] == p["type"]]
    return ifaces


CPU_MODELS = {
    "AuthenticAMD": ("athlon", "phenom", "Opteron_G1", "Opteron_G2", "Opteron_G3", "Opteron_G4",
                     "Opteron_G5", "EPYC", "EPYC-IBPB", "EPYC-Rome", "EPYC-Milan", "EPYC-Genoa"),
    "GenuineIntel": ("486", "pentium", "pentium2", "pentium3", "coreduo", "core2duo", "Conroe",
                     "Penryn", "Nehalem", "Westmere", "SandyBridge", "IvyBridge", "Haswell",
                     "Broadwell", "Skylake-Client", "Skylake-Server", "Cascadelake-Server",
                     "Icelake-Server", "SapphireRapids"),
    "default": ("kvm32", "kvm64", "qemu32", "qemu64", "max", "host", "x86-64-v2", "x86-64-v2-AES",
                "x86-64-v3", "x86-64-v4"),
}
"""A subset of the models PVE 9 lists (qemu-server's CPUConfig), by vendor."""


def _cpu_models(req: Request) -> list[dict]:
    """GET /nodes/{node}/capabilities/qemu/cpu: the built-in models (no custom ones in the lab)."""
    require_node(req.match["node"])
    check({"arch": Param(enum=("x86_64", "aarch64"))}, req.params)
    return [{"name": name, "vendor": vendor, "custom": 0}
            for vendor, models in CPU_MODELS.items() for name in models]


def _cluster_status(req: Request) -> list[dict]:
    cfg = paths.node_config()
    local = cfg["node"]
    mem = members()
    out: list[dict] = []
    if cfg.get("cluster"):
        out.append({"type": "cluster", "id": "cluster", "name": cfg["cluster"], "nodes": len(mem),
                    "quorate": 1, "version": len(mem)})
    for i, (name, addr) in enumerate(sorted(mem.items()), start=1):
        out.append({"type": "node", "id": f"node/{name}", "name": name, "ip": addr, "nodeid": i,
                    "online": 1, "local": int(name == local), "level": ""})
    return out


def _resources(req: Request) -> list[dict]:
    p = check({"type": Param(enum=("vm", "storage", "node", "sdn", "pool"))}, req.params)
    want = p.get("type")
    out: list[dict] = []
    if want in (None, "vm"):
        pools = guest_pools()
        out += [_vm_resource(n, k, v, pools.get(v)) for n, k, v in guests.all_guests()]
    if want in (None, "storage"):
        local = paths.node_name()
        for sid, st in sorted(storage.load().items()):
            s = storage.status(st)
            out.append({"type": "storage", "id": f"storage/{local}/{sid}", "storage": sid, "node": local,
                        "plugintype": st.type, "content": st.opts.get("content", ""), "status": "available"
                        if s["active"] else "unknown", "disk": s["used"], "maxdisk": s["total"],
                        "shared": int(st.type == "pbs")})
    if want in (None, "node"):
        out += [{"type": "node", "id": f"node/{n['node']}", "node": n["node"], "status": "online",
                 "maxcpu": n["maxcpu"], "maxmem": n["maxmem"], "mem": n["mem"], "cpu": n["cpu"],
                 "uptime": n["uptime"], "level": ""} for n in _nodes(req)]
    return out


def guest_pools() -> dict[int, str]:
    """VMID -> the PVE pool it is in, from ``user.cfg`` lines ``pool:<id>:<comment>:<vmids>:``
    (as PVE keeps them; a guest is in one pool at most)."""
    try:
        text = (paths.pve_dir() / "user.cfg").read_text()
    except OSError:
        return {}
    found = {}
    for line in text.splitlines():
        fields = line.split(":")
        if fields[0] == "pool" and len(fields) >= 4:
            for vmid in filter(None, fields[3].split(",")):
                if vmid.strip().isdigit():
                    found[int(vmid)] = fields[1]
    return found


def _vm_resource(node: str, kind: str, vmid: int, pool: str | None = None) -> dict:
    conf = guests.require(node, kind, vmid).current
    running = guests.is_running(vmid) and node == paths.node_name()
    entry = {"type": kind, "id": f"{kind}/{vmid}", "vmid": vmid, "node": node,
             "name": conf.get("name") or conf.get("hostname") or f"{'VM' if kind == 'qemu' else 'CT'} {vmid}",
             "status": "running" if running else "stopped", "template": int(conf.get("template", 0)),
             "maxmem": int(conf.get("memory", 512)) * 1024**2, "mem": 0, "cpu": 0, "maxcpu": int(conf.get("cores", 1)),
             "uptime": guests.uptime(vmid) if running else 0, "disk": 0, "maxdisk": _maxdisk(conf),
             "netin": 0, "netout": 0, "diskread": 0, "diskwrite": 0}
    if conf.get("lock"):
        entry["lock"] = conf["lock"]
    if guests.ha_state(kind, vmid):
        entry["hastate"] = guests.ha_state(kind, vmid)
    if conf.get("tags"):
        entry["tags"] = conf["tags"]
    if pool:
        entry["pool"] = pool
    return entry


def _maxdisk(conf: dict) -> int:
    from .guestconf import split_prop
    for key in ("scsi0", "virtio0", "sata0", "ide0", "rootfs"):
        if key in conf:
            size = split_prop(conf[key])[1].get("size")
            if size:
                try:
                    return storage.parse_size(size)
                except storage.StorageError:
                    return 0
    return 0


def now() -> int:
    """Epoch seconds."""
    return int(time.time())
