"""Guest routes for /nodes/{node}/qemu and /nodes/{node}/lxc: list, create/restore, destroy,
config (GET with digest, PUT, POST), status, snapshots, migrate, remote_migrate; and vzdump."""

from __future__ import annotations

import re
from typing import Any

from . import guestconf, guests, storage, tasks
from .api_cluster import require_node
from .guestkeys import CONFIG_KEYS
from .httpd import ApiError, Request, Router
from .schema import BOOL, INT, STR, VMID, Param, check

TYPE = {"qemu": "qm", "lxc": "vz"}
SNAPNAME = Param(optional=False, format="pve-configid", max_length=40)


def register(router: Router) -> None:
    """Add the routes for both guest kinds."""
    for kind in ("qemu", "lxc"):
        base = "/nodes/{node}/" + kind
        g = base + "/{vmid}"
        router.add("GET", base, lambda r, k=kind: _list(r, k))
        router.add("POST", base, lambda r, k=kind: _create(r, k))
        router.add("GET", g, lambda r, k=kind: _dir(r, k))
        router.add("DELETE", g, lambda r, k=kind: _destroy(r, k))
        router.add("GET", g + "/config", lambda r, k=kind: _config_get(r, k))
        router.add("PUT", g + "/config", lambda r, k=kind: _config_set(r, k, False))
        if kind == "qemu":
            router.add("POST", g + "/config", lambda r, k=kind: _config_set(r, k, True))
        router.add("GET", g + "/status", lambda r: [{"subdir": s} for s in ("current", "start", "stop", "shutdown")])
        router.add("GET", g + "/status/current", lambda r, k=kind: _status(r, k))
        for action in ("start", "stop", "shutdown"):
            router.add("POST", g + "/status/" + action, lambda r, k=kind, a=action: _action(r, k, a))
        router.add("GET", g + "/snapshot", lambda r, k=kind: _snap_list(r, k))
        router.add("POST", g + "/snapshot", lambda r, k=kind: _snap_create(r, k))
        router.add("GET", g + "/snapshot/{snapname}", lambda r: [{"rel": "config"}, {"rel": "rollback"}])
        router.add("DELETE", g + "/snapshot/{snapname}", lambda r, k=kind: _snap_delete(r, k))
        router.add("GET", g + "/snapshot/{snapname}/config", lambda r, k=kind: _snap_config(r, k))
        router.add("POST", g + "/snapshot/{snapname}/rollback", lambda r, k=kind: _snap_rollback(r, k))
        router.add("POST", g + "/migrate", lambda r, k=kind: _migrate(r, k))
        router.add("POST", g + "/remote_migrate", lambda r, k=kind: _remote_migrate(r, k))
    router.add("POST", "/nodes/{node}/vzdump", _vzdump)
    router.add("GET", "/nodes/{node}/vzdump/extractconfig", _extractconfig)


def _vmid(req: Request) -> int:
    return check({"vmid": VMID}, {"vmid": req.match["vmid"]})["vmid"]


def _guest(req: Request, kind: str) -> tuple[str, int, guestconf.GuestConf]:
    node = require_node(req.match["node"])
    vmid = _vmid(req)
    return node, vmid, guests.require(node, kind, vmid)


def _spawn(req: Request, kind: str, what: str, op: str, wid: str, /, **args: Any) -> str:
    return tasks.spawn(req.match["node"], TYPE[kind] + what, wid, req.user, op, args)


def _list(req: Request, kind: str) -> list[dict]:
    node = require_node(req.match["node"])
    check({"full": BOOL}, req.params)
    from .api_cluster import _vm_resource
    out = []
    for n, k, vmid in guests.all_guests():
        if n == node and k == kind:
            r = _vm_resource(n, k, vmid)
            out.append({key: r[key] for key in ("vmid", "name", "status", "maxmem", "mem", "cpu", "maxdisk", "disk",
                                                "uptime", "netin", "netout", "diskread", "diskwrite") if key in r}
                       | ({"lock": r["lock"]} if "lock" in r else {}) | {"cpus": r["maxcpu"]}
                       | ({"type": "lxc"} if kind == "lxc" else {}) | ({"tags": r["tags"]} if "tags" in r else {}))
    return out


def _dir(req: Request, kind: str) -> list[dict]:
    _guest(req, kind)
    return [{"subdir": s} for s in ("config", "status", "snapshot", "migrate", "remote_migrate")]


def _config_get(req: Request, kind: str) -> dict:
    node, vmid, _ = _guest(req, kind)
    p = check({"current": BOOL, "snapshot": Param(format="pve-configid")}, req.params)
    text = guests.read_text(node, kind, vmid)
    conf = guestconf.parse(text)
    values = dict(conf.current)
    if p.get("snapshot"):
        if p["snapshot"] not in conf.snapshots:
            raise ApiError(500, f"snapshot '{p['snapshot']}' does not exist")
        values = dict(conf.snapshots[p["snapshot"]])
    elif not p.get("current"):
        values.update(conf.pending)
    out = guests.typed(values)
    out["digest"] = guestconf.digest(text)
    return out


_SET_EXTRA = {"delete": STR, "digest": Param(max_length=64), "revert": STR, "force": BOOL, "skiplock": BOOL,
              "background_delay": Param("integer", minimum=1, maximum=30)}


def _config_set(req: Request, kind: str, asynchronous: bool) -> Any:
    p = check(_SET_EXTRA, req.params, extra_pattern=CONFIG_KEYS[kind])  # PVE checks parameters first
    node, vmid, conf = _guest(req, kind)
    text = guests.read_text(node, kind, vmid)
    if p.get("digest") and p["digest"] != guestconf.digest(text):
        raise ApiError(500, "detected modified configuration - file changed by other user? Try again.")
    if conf.current.get("lock") and not p.get("skiplock"):
        raise ApiError(500, f"VM is locked ({conf.current['lock']})")
    values = {k: str(v) for k, v in p.items() if k not in _SET_EXTRA}
    deletes = [d for d in re.split(r"[,;\s]+", p.get("delete", "")) if d]
    bad = {d: "property is not defined in schema" for d in deletes if not CONFIG_KEYS[kind].fullmatch(d)}
    if bad:
        raise ApiError(400, "Parameter verification failed.", bad)
    for key in set(deletes) & set(values):
        raise ApiError(400, "Parameter verification failed.", {key: "conflict with delete"} | {"delete": f"conflict with {key}"})
    guests.alloc_new_disks(kind, vmid, values)
    for key in deletes:
        old = conf.current.pop(key, None)
        if old and guestconf.disk_volumes({key: old}) and not key.startswith("unused"):
            n = next(i for i in range(256) if f"unused{i}" not in conf.current)
            conf.current[f"unused{n}"] = guestconf.disk_volumes({key: old})[key]
    conf.current.update(values)
    for key in values:
        if key.startswith("net"):
            conf.current[key] = guests._with_mac(kind, conf.current[key])
    guests.write(node, kind, vmid, conf)
    if asynchronous:
        upid = tasks.make_upid(node, "qmconfig", str(vmid), req.user)
        tasks.run_body(upid, lambda log: None)
        return upid
    return None


def _status(req: Request, kind: str) -> dict:
    node, vmid, conf = _guest(req, kind)
    from .api_cluster import _vm_resource
    r = _vm_resource(node, kind, vmid)
    out = {k: r[k] for k in ("vmid", "name", "status", "maxmem", "mem", "cpu", "maxdisk", "disk", "uptime",
                             "netin", "netout", "diskread", "diskwrite")}
    ha = guests.ha_state(kind, vmid)
    out |= {"cpus": r["maxcpu"], "ha": {"managed": 1, "state": ha} if ha else {"managed": 0}}
    if kind == "qemu":
        out["qmpstatus"] = out["status"]
        if conf.current.get("agent"):
            out["agent"] = 1
    if "lock" in r:
        out["lock"] = r["lock"]
    if out["status"] == "running":
        out["pid"] = tasks.os.getpid()
    return out


def _action(req: Request, kind: str, action: str) -> str:
    node, vmid, _ = _guest(req, kind)
    check({"skiplock": BOOL, "timeout": Param("integer", minimum=0), "forceStop": BOOL, "keepActive": BOOL,
           "migratedfrom": Param(format="pve-node"), "stateuri": STR, "machine": STR, "targetstorage": STR,
           "overrule-shutdown": BOOL, "debug": BOOL, "force-cpu": STR, "migration_type": STR,
           "migration_network": STR, "nets-host-mtu": STR, "with-conntrack-state": BOOL}, req.params)
    return _spawn(req, kind, action, action, str(vmid), node=node, kind=kind, vmid=vmid)


def _snap_list(req: Request, kind: str) -> list[dict]:
    node, vmid, conf = _guest(req, kind)
    out = []
    for name, snap in conf.snapshots.items():
        e: dict[str, Any] = {"name": name, "snaptime": int(snap.get("snaptime", 0)),
                             "description": snap.get("description", "")}
        if snap.get("parent"):
            e["parent"] = snap["parent"]
        if kind == "qemu":
            e["vmstate"] = int("vmstate" in snap)
        out.append(e)
    cur: dict[str, Any] = {"name": "current", "description": "You are here!",
                           "running": int(guests.is_running(vmid))}
    if conf.current.get("parent"):
        cur["parent"] = conf.current["parent"]
    out.append(cur)
    return out


def _snap_create(req: Request, kind: str) -> str:
    p = check({"snapname": SNAPNAME, "description": STR, "vmstate": BOOL}, req.params)
    node, vmid, conf = _guest(req, kind)
    if p["snapname"] == "current":
        raise ApiError(500, "unable to use snapshot name 'current' (reserved name)")
    if p["snapname"] in conf.snapshots:
        raise ApiError(500, f"snapshot name '{p['snapname']}' already used")
    return _spawn(req, kind, "snapshot", "snapshot", str(vmid), node=node, kind=kind, vmid=vmid,
                  snapname=p["snapname"], description=p.get("description", ""), vmstate=p.get("vmstate", 0))


def _snap_name(req: Request, conf: guestconf.GuestConf) -> str:
    name = check({"snapname": SNAPNAME}, {"snapname": req.match["snapname"]})["snapname"]
    if name not in conf.snapshots:
        raise ApiError(500, f"snapshot '{name}' does not exist")
    return name


def _snap_delete(req: Request, kind: str) -> str:
    node, vmid, conf = _guest(req, kind)
    p = check({"force": BOOL}, req.params)
    name = _snap_name(req, conf)
    return _spawn(req, kind, "delsnapshot", "delsnapshot", str(vmid), node=node, kind=kind, vmid=vmid,
                  snapname=name, force=p.get("force", 0))


def _snap_config(req: Request, kind: str) -> dict:
    _, _, conf = _guest(req, kind)
    return guests.typed(conf.snapshots[_snap_name(req, conf)])


def _snap_rollback(req: Request, kind: str) -> str:
    node, vmid, conf = _guest(req, kind)
    p = check({"start": BOOL}, req.params)
    name = _snap_name(req, conf)
    return _spawn(req, kind, "rollback", "rollback", str(vmid), node=node, kind=kind, vmid=vmid,
                  snapname=name, start=p.get("start", 0))


def _destroy(req: Request, kind: str) -> str:
    node, vmid, conf = _guest(req, kind)
    p = check({"purge": BOOL, "skiplock": BOOL, "destroy-unreferenced-disks": BOOL, "force": BOOL},
              req.params)
    if conf.current.get("lock") and not p.get("skiplock"):  # PVE checks the lock first
        raise ApiError(500, f"{'VM' if kind == 'qemu' else 'CT'} {vmid} is locked ({conf.current['lock']})")
    if guests.is_running(vmid):
        raise ApiError(500, f"VM {vmid} is running - destroy failed")
    return _spawn(req, kind, "destroy", "destroy", str(vmid), node=node, kind=kind, vmid=vmid,
                  unreferenced=p.get("destroy-unreferenced-disks", 0))


_CREATE = {"vmid": VMID, "archive": STR, "storage": Param(format="pve-storage-id"), "force": BOOL, "unique": BOOL,
           "start": BOOL, "pool": STR, "bwlimit": INT, "live-restore": BOOL, "ostemplate": STR, "password": STR,
           "ssh-public-keys": STR, "restore": BOOL, "ignore-unpack-errors": BOOL}


def _create(req: Request, kind: str) -> str:
    node = require_node(req.match["node"])
    p = check(_CREATE, req.params, extra_pattern=CONFIG_KEYS[kind])
    vmid = p["vmid"]
    archive = p.get("archive") or (p.get("ostemplate") if kind == "lxc" and p.get("restore") else None)
    where = guests.locate(vmid)
    if where and not (archive and p.get("force")):
        noun = "VM" if kind == "qemu" else "CT"
        raise ApiError(500, f"unable to create {noun} {vmid} - {noun} {vmid} already exists on node '{where[0]}'")
    if archive:
        return _spawn(req, kind, "restore", "restore", str(vmid), node=node, kind=kind, vmid=vmid, archive=archive,
                      storage_id=p.get("storage"), force=p.get("force", 0), unique=p.get("unique", 0))
    values = {k: str(v) for k, v in p.items() if k not in _CREATE}
    return _spawn(req, kind, "create", "create", str(vmid), node=node, kind=kind, vmid=vmid, values=values)


_MIGRATE = {
    "qemu": {"target": Param(optional=False, format="pve-node"), "online": BOOL, "with-local-disks": BOOL,
             "targetstorage": STR, "force": BOOL, "bwlimit": Param("integer", minimum=0),
             "migration_type": Param(enum=("secure", "insecure")), "migration_network": STR,
             "with-conntrack-state": BOOL},
    "lxc": {"target": Param(optional=False, format="pve-node"), "online": BOOL, "restart": BOOL,
            "target-storage": STR, "bwlimit": INT, "timeout": INT},
}


def _migrate(req: Request, kind: str) -> str:
    node, vmid, conf = _guest(req, kind)
    p = check(_MIGRATE[kind], req.params)
    require_node(p["target"])
    if conf.current.get("lock"):
        raise ApiError(500, f"{'VM' if kind == 'qemu' else 'CT'} {vmid} is locked ({conf.current['lock']})")
    _check_running(kind, vmid, p)
    return tasks.spawn(node, "qmigrate" if kind == "qemu" else "vzmigrate", str(vmid), req.user, "migrate",
                       {"node": node, "kind": kind, "vmid": vmid, "target": p["target"],
                        "online": p.get("online", 0), "restart": p.get("restart", 0),
                        "storage_map": p.get("targetstorage") or p.get("target-storage") or ""})


def _check_running(kind: str, vmid: int, p: dict) -> None:
    """PVE refuses to move a running guest offline (API error, before any task starts)."""
    if not guests.is_running(vmid):
        return
    if kind == "qemu" and not p.get("online"):
        raise ApiError(500, "can't migrate running VM without --online")
    if kind == "lxc" and not (p.get("online") or p.get("restart")):
        raise ApiError(500, "can't migrate running container without --online or --restart")


_REMOTE = {"target-endpoint": Param(optional=False), "target-storage": Param(optional=False),
           "target-bridge": Param(optional=False), "target-vmid": Param("integer", minimum=100, maximum=999999999),
           "online": BOOL, "delete": BOOL, "bwlimit": Param("integer", minimum=0)}


def _remote_migrate(req: Request, kind: str) -> str:
    node, vmid, conf = _guest(req, kind)
    extra = {"restart": BOOL, "timeout": INT} if kind == "lxc" else {}
    p = check(_REMOTE | extra, req.params)
    from .remote import parse_endpoint
    endpoint = parse_endpoint(p["target-endpoint"])
    if kind == "qemu" and guests.ha_state(kind, vmid):
        raise ApiError(500, "cannot remote-migrate VM that is configured for HA")
    if conf.current.get("lock"):
        raise ApiError(500, f"{'VM' if kind == 'qemu' else 'CT'} {vmid} is locked ({conf.current['lock']})")
    _check_running(kind, vmid, p)
    return tasks.spawn(node, "qmigrate" if kind == "qemu" else "vzmigrate", str(vmid), req.user, "remote_migrate",
                       {"node": node, "kind": kind, "vmid": vmid, "endpoint": endpoint,
                        "target_vmid": p.get("target-vmid", vmid), "target_storage": p["target-storage"],
                        "target_bridge": p["target-bridge"], "delete": p.get("delete", 0),
                        "online": p.get("online", 0), "restart": p.get("restart", 0)})


_VZDUMP = {"vmid": Param(format="pve-vmid-list"), "all": BOOL, "storage": Param(format="pve-storage-id"),
           "mode": Param(enum=("snapshot", "suspend", "stop")), "compress": Param(enum=("0", "1", "gzip", "lzo", "zstd")),
           "notes-template": STR, "remove": BOOL, "prune-backups": STR, "protected": BOOL, "node": STR,
           "mailnotification": Param(enum=("always", "failure")), "mailto": STR, "quiet": BOOL, "bwlimit": INT,
           "exclude": STR, "fleecing": STR, "stdexcludes": BOOL, "notification-mode": STR, "zstd": INT,
           "pbs-change-detection-mode": Param(enum=("legacy", "data", "metadata"))}


_PRUNE_KEYS = ("keep-all", "keep-last", "keep-hourly", "keep-daily", "keep-weekly", "keep-monthly",
               "keep-yearly")


def _check_prune_backups(value: str) -> None:
    """PVE's prune-backups property string: keep-all=1 or keep-<period>=N, nothing else."""
    for part in (p for p in value.split(",") if p):
        key, _, count = part.partition("=")
        if key not in _PRUNE_KEYS or not count.isdigit():
            raise ApiError(400, "Parameter verification failed.",
                           {"prune-backups": f"invalid format - format error\nprune-backups.{key}: "
                                             "property is not defined in schema and the schema does not "
                                             "allow additional properties" if key not in _PRUNE_KEYS else
                                             f"invalid format - format error\nprune-backups.{key}: type check "
                                             f"('integer') failed - got '{count}'"})


def _vzdump(req: Request) -> str:
    node = require_node(req.match["node"])
    p = check(_VZDUMP, req.params)
    _check_prune_backups(p.get("prune-backups", ""))
    vmids = [int(v) for v in re.split(r"[,; ]+", p.get("vmid", "")) if v]
    if p.get("all"):
        vmids = [v for n, _, v in guests.all_guests() if n == node]
    if not vmids:
        raise ApiError(400, "Parameter verification failed.", {"vmid": "property is missing and it is not optional"})
    sid = p.get("storage") or "local"
    try:
        storage.get(sid)
    except storage.StorageError as exc:
        raise ApiError(500, str(exc)) from None
    cmd = "vzdump " + " ".join(map(str, vmids)) + f" --storage {sid} --mode {p.get('mode', 'snapshot')}"
    return tasks.spawn(node, "vzdump", str(vmids[0]) if len(vmids) == 1 else "", req.user, "vzdump",
                       {"node": node, "vmids": vmids, "storage_id": sid, "mode": p.get("mode", "snapshot"),
                        "notes": p.get("notes-template", ""), "cmdline": cmd})


def _extractconfig(req: Request) -> str:
    """The config inside a backup (PVE reads it from the archive; 500 when it cannot)."""
    require_node(req.match["node"])
    p = check({"volume": Param(optional=False)}, req.params)
    from .backup import extract_config
    try:
        return extract_config(p["volume"])
    except storage.StorageError as exc:
        raise ApiError(500, str(exc)) from None
