"""Cluster storage configuration: /storage (list, create) and /storage/{storage} (get, delete),
written to /etc/pve/storage.cfg as PVE does (`pvesm add` and the API write the same file)."""

from __future__ import annotations

from . import storage
from .httpd import ApiError, Request, Router
from .schema import BOOL, Param, check

# The types and options the lab's storages use; PVE has more of both.
_TYPES = ("btrfs", "dir", "pbs", "zfspool")
_CREATE = {
    "storage": Param(optional=False, format="pve-storage-id"),
    "type": Param(optional=False, enum=_TYPES),
    "content": Param(), "nodes": Param(), "disable": BOOL, "shared": BOOL,
    "pool": Param(), "sparse": BOOL, "blocksize": Param(), "path": Param(),
    "server": Param(), "datastore": Param(), "username": Param(), "fingerprint": Param(),
    "password": Param(), "port": Param("integer", minimum=1, maximum=65535),
}
_REQUIRED = {"zfspool": ("pool",), "dir": ("path",), "btrfs": ("path",),
             "pbs": ("server", "datastore", "username")}


def register(router: Router) -> None:
    """Add the routes."""
    router.add("GET", "/storage", _list)
    router.add("POST", "/storage", _create)
    router.add("GET", "/storage/{storage}", _get)
    router.add("DELETE", "/storage/{storage}", _delete)


def _entry(st: storage.Storage) -> dict:
    return {"storage": st.sid, "type": st.type, **st.opts, "digest": storage.config_digest()}


def _list(req: Request) -> list[dict]:
    p = check({"type": Param(enum=_TYPES)}, req.params)
    return [_entry(st) for sid, st in sorted(storage.load().items())
            if p.get("type") in (None, st.type)]


def _get(req: Request) -> dict:
    st = storage.load().get(req.match["storage"])
    if st is None:
        raise ApiError(500, f"storage '{req.match['storage']}' does not exist")
    return _entry(st)


def _create(req: Request) -> dict:
    p = check(_CREATE, req.params)
    missing = [k for k in _REQUIRED[p["type"]] if k not in p]
    if missing:
        raise ApiError(400, "Parameter verification failed.",
                       {k: "property is missing and it is not optional" for k in missing})
    sid, stype = p.pop("storage"), p.pop("type")
    p.pop("password", None)  # PVE keeps it in /etc/pve/priv/storage/<id>.pw, never in the file
    try:
        storage.add(sid, stype, {k: str(v) for k, v in p.items()})
    except storage.StorageError as exc:
        raise ApiError(500, f"create storage failed: {exc}") from None
    return {"storage": sid, "type": stype}


def _delete(req: Request) -> None:
    try:
        storage.remove(req.match["storage"])
    except storage.StorageError as exc:
        raise ApiError(500, f"delete storage failed: {exc}") from None
