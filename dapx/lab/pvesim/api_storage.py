"""Storage routes: /nodes/{node}/storage, .../{storage}/status, .../{storage}/content (list, alloc)
and .../content/{volume} (get, delete)."""

from __future__ import annotations

from . import storage
from .api_cluster import require_node
from .httpd import ApiError, Request, Router
from .schema import BOOL, Param, check


def register(router: Router) -> None:
    """Add the routes."""
    base = "/nodes/{node}/storage"
    router.add("GET", base, _list)
    router.add("GET", base + "/{storage}", lambda r: [{"subdir": s} for s in ("content", "status")])
    router.add("GET", base + "/{storage}/status", _status)
    router.add("GET", base + "/{storage}/content", _content)
    router.add("POST", base + "/{storage}/content", _alloc)
    router.add("GET", base + "/{storage}/content/{volume*}", _volume_info)
    router.add("DELETE", base + "/{storage}/content/{volume*}", _volume_delete)


def _get(sid: str) -> storage.Storage:
    try:
        return storage.get(sid)
    except storage.StorageError as exc:
        raise ApiError(500, str(exc)) from None


def _entry(st: storage.Storage) -> dict:
    s = storage.status(st)
    return {"storage": st.sid, "type": st.type, "content": st.opts.get("content", ""), "shared": int(st.type == "pbs"),
            "active": s["active"], "enabled": s["enabled"], "total": s["total"], "used": s["used"],
            "avail": s["avail"], "used_fraction": (s["used"] / s["total"]) if s["total"] else 0}


def _list(req: Request) -> list[dict]:
    node = req.match["node"]
    require_node(node)
    p = check({"content": Param(), "storage": Param(format="pve-storage-id"), "enabled": BOOL,
               "format": BOOL, "target": Param()}, req.params)
    out = [_entry(st) for sid, st in sorted(storage.load().items())
           if p.get("storage") in (None, sid) and _on_node(st, node)]
    if p.get("content"):
        out = [e for e in out if set(p["content"].split(",")) & set(e["content"].split(","))]
    return out


def _on_node(st: storage.Storage, node: str) -> bool:
    """PVE lists a storage on a node only when its `nodes` option (if any) names the node."""
    nodes = st.opts.get("nodes")
    return not nodes or node in nodes.split(",")


def _status(req: Request) -> dict:
    require_node(req.match["node"])
    return _entry(_get(req.match["storage"]))


def _content(req: Request) -> list[dict]:
    require_node(req.match["node"])
    p = check({"content": Param(), "vmid": Param("integer", minimum=100, maximum=999999999)}, req.params)
    _get(req.match["storage"])
    return storage.list_volumes(req.match["storage"], p.get("vmid"), p.get("content"))


def _alloc(req: Request) -> str:
    """PVE's alloc: filename vm-<vmid>-disk-N (or .raw), size like '4G' or KiB."""
    require_node(req.match["node"])
    p = check({"filename": Param(optional=False), "size": Param(optional=False),
               "vmid": Param("integer", optional=False, minimum=100, maximum=999999999),
               "format": Param(enum=("raw", "qcow2", "subvol", "vmdk"))}, req.params)
    name = p["filename"].removesuffix(".raw").removesuffix(".subvol")
    vmid, _, subvol = storage.parse_volname(name)
    if vmid != p["vmid"]:
        raise ApiError(500, f"illegal name '{p['filename']}' - should be 'vm-{p['vmid']}-*'")
    size = storage.parse_size(p["size"], "K")
    return storage.alloc(req.match["storage"], vmid, size, subvol=subvol or p.get("format") == "subvol", name=name)


def _volid(req: Request) -> str:
    vol = req.match["volume"]
    return vol if ":" in vol else f"{req.match['storage']}:{vol}"


def _volume_info(req: Request) -> dict:
    volid = _volid(req)
    for item in storage.list_volumes(req.match["storage"]):
        if item["volid"] == volid:
            return {"path": str(storage.path(volid)) if _get(req.match["storage"]).type != "pbs" else volid,
                    "size": item["size"], "used": item.get("used", item["size"]), "format": item["format"]}
    raise ApiError(500, f"volume '{volid}' does not exist")


def _volume_delete(req: Request) -> None:
    check({"delay": Param("integer")}, req.params)
    storage.free(_volid(req))
    return None
