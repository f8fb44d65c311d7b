"""Task routes: GET /nodes/{node}/tasks, /tasks/{upid}/status, /tasks/{upid}/log."""

from __future__ import annotations

from . import tasks
from .api_cluster import require_node
from .httpd import ApiError, Request, Router
from .schema import BOOL, INT, Param, check


def register(router: Router) -> None:
    """Add the routes."""
    router.add("GET", "/nodes/{node}/tasks", _list)
    router.add("GET", "/nodes/{node}/tasks/{upid}", lambda r: [{"name": "log"}, {"name": "status"}])
    router.add("GET", "/nodes/{node}/tasks/{upid}/status", _status)
    router.add("GET", "/nodes/{node}/tasks/{upid}/log", _log)


def _upid(req: Request) -> str:
    upid = req.match["upid"]
    try:
        info = tasks.decode_upid(upid)
    except ValueError:
        raise ApiError(400, "Parameter verification failed.", {"upid": f"unable to parse worker upid '{upid}'"}) from None
    if info["node"] != req.match["node"] or not tasks.log_path(upid).exists():
        raise ApiError(500, "no such task")
    return upid


def _status(req: Request) -> dict:
    return tasks.status(_upid(req))


def _log(req: Request) -> list[dict]:
    p = check({"start": INT, "limit": INT, "download": BOOL}, req.params)
    lines, _ = tasks.read_log(_upid(req), p.get("start", 0), p.get("limit", 50))
    return lines


def _list(req: Request) -> list[dict]:
    node = require_node(req.match["node"])
    p = check({"vmid": Param("integer", minimum=100, maximum=999999999), "typefilter": Param(),
               "userfilter": Param(), "start": INT, "limit": INT, "errors": BOOL,
               "source": Param(enum=("archive", "active", "all")), "since": INT, "until": INT,
               "statusfilter": Param()}, req.params)
    out = tasks.list_tasks(node)
    if "vmid" in p:
        out = [t for t in out if t["id"] == str(p["vmid"])]
    if p.get("typefilter"):
        out = [t for t in out if t["type"] == p["typefilter"]]
    if p.get("errors"):
        out = [t for t in out if t.get("status") not in (None, "OK")]
    if p.get("source") == "active":
        out = [t for t in out if "status" not in t]
    start = p.get("start", 0)
    return out[start:start + p.get("limit", 50)]
