"""PBS API routes (/api2/json) and the lab-only transfer endpoints used by the PVE simulator.

Real PBS receives backups over its HTTP/2 backup protocol (chunks, fixed/dynamic indexes);
the lab instead takes whole files: PUT /api2/json/lab/upload (body = file bytes), POST
/api2/json/lab/finish (writes the manifest), GET /api2/json/lab/download. See README.md.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from . import pbs_prune, pbsstore, pbstasks
from .httpd import ApiError, Request, Router
from .schema import BOOL, INT, Param, check

GROUP = {"backup-type": Param(enum=pbsstore.TYPES, optional=False), "backup-id": Param(optional=False),
         "ns": Param()}
SNAP = {**GROUP, "backup-time": Param("integer", optional=False, minimum=0)}
KEEP = {k: Param("integer", minimum=1) for k, _ in pbs_prune.RULES}


def register(router: Router) -> dict:
    """Add the PBS routes; returns the raw (streaming) routes for the server."""
    ds = "/admin/datastore/{store}"
    router.add("GET", "/admin/datastore", _list_stores)
    router.add("GET", ds + "/snapshots", _snapshots)
    router.add("DELETE", ds + "/snapshots", _delete_snapshot)
    router.add("GET", ds + "/groups", _groups)
    router.add("GET", ds + "/status", lambda r: pbsstore.usage(r.match["store"]))
    router.add("GET", ds + "/protected", _get_protected)
    router.add("PUT", ds + "/protected", _put_protected)
    router.add("POST", ds + "/prune", _prune)
    router.add("POST", ds + "/verify", _verify)
    router.add("GET", "/nodes/{node}/tasks", lambda r: pbstasks.list_tasks())
    router.add("GET", "/nodes/{node}/tasks/{upid}/status", lambda r: pbstasks.status(r.match["upid"]))
    router.add("GET", "/nodes/{node}/tasks/{upid}/log", _task_log)
    router.add("POST", "/lab/finish", _finish)
    return {"PUT /lab/upload": _upload, "GET /lab/download": _download}


def _list_stores(req: Request) -> list[dict]:
    return [{"store": name, "comment": ""} for name in sorted(pbsstore.datastores())]


def _snapshots(req: Request) -> list[dict]:
    p = check({"backup-type": Param(enum=pbsstore.TYPES), "backup-id": Param(), "ns": Param()}, req.params)
    return [pbsstore.snapshot_info(t, b, e, d)
            for t, b, e, d in pbsstore.iter_snapshots(req.match["store"], p.get("backup-type"), p.get("backup-id"))]


def _groups(req: Request) -> list[dict]:
    groups: dict[tuple[str, str], dict] = {}
    for t, b, e, d in pbsstore.iter_snapshots(req.match["store"]):
        g = groups.setdefault((t, b), {"backup-type": t, "backup-id": b, "backup-count": 0, "last-backup": 0,
                                       "owner": pbsstore.read_manifest(d).get("owner", "root@pam")})
        g["backup-count"] += 1
        if e >= g["last-backup"]:
            g["last-backup"] = e
            g["files"] = [f["filename"] for f in pbsstore.snapshot_info(t, b, e, d)["files"]]
    return list(groups.values())


def _delete_snapshot(req: Request) -> None:
    p = check(SNAP, req.params)
    pbsstore.remove_snapshot(req.match["store"], p["backup-type"], p["backup-id"], p["backup-time"])
    return None


def _snap_dir(req: Request, extra: dict | None = None) -> tuple[dict, Path]:
    p = check({**SNAP, **(extra or {})}, req.params)
    d = pbsstore.snap_dir(req.match["store"], p["backup-type"], p["backup-id"], p["backup-time"])
    if not (d / pbsstore.MANIFEST).exists():
        raise ApiError(400, f"backup dir '{p['backup-type']}/{p['backup-id']}/{d.name}' does not exist")
    return p, d


def _get_protected(req: Request) -> bool:
    return (_snap_dir(req)[1] / ".protected").exists()


def _put_protected(req: Request) -> None:
    p, d = _snap_dir(req, {"protected": Param("boolean", optional=False)})
    if p["protected"]:
        (d / ".protected").touch()
    else:
        (d / ".protected").unlink(missing_ok=True)
    return None


def _prune(req: Request) -> list[dict]:
    p = check({**GROUP, **KEEP, "dry-run": BOOL, "max-depth": INT}, req.params)
    store = req.match["store"]
    snaps = {e: d for _, _, e, d in pbsstore.iter_snapshots(store, p["backup-type"], p["backup-id"])}
    protected = {e for e, d in snaps.items() if (d / ".protected").exists()}
    marks = pbs_prune.select(list(snaps), protected, {k: v for k, v in p.items() if k.startswith("keep-")})
    out = []
    for epoch, keep in marks.items():
        out.append({"backup-type": p["backup-type"], "backup-id": p["backup-id"], "backup-time": epoch,
                    "keep": keep, "protected": epoch in protected})
        if not keep and not p.get("dry-run"):
            pbsstore.remove_snapshot(store, p["backup-type"], p["backup-id"], epoch)
    return out


def _verify(req: Request) -> str:
    p = check({"backup-type": Param(enum=pbsstore.TYPES), "backup-id": Param(), "backup-time": INT, "ns": Param(),
               "ignore-verified": BOOL, "outdated-after": INT, "max-depth": INT}, req.params)
    store = req.match["store"]
    pbsstore.store_path(store)
    return pbstasks.spawn("verify", store, req.user, lambda log: _verify_body(log, store, p))


def _verify_body(log, store: str, p: dict) -> None:
    """Check every file's sha256 against the manifest; record verify_state; fail on a mismatch."""
    failed = []
    log(f"verify datastore {store}")
    for t, b, e, d in pbsstore.iter_snapshots(store, p.get("backup-type"), p.get("backup-id")):
        if p.get("backup-time") is not None and e != p["backup-time"]:
            continue
        name = f"{t}/{b}/{d.name}"
        log(f"verify {store}:{name}")
        man = pbsstore.read_manifest(d)
        ok = True
        for f in man["files"]:
            fp = d / f["filename"]
            if not fp.exists() or pbsstore.sha256_file(fp) != f["csum"]:
                log(f"  check {f['filename']} failed: checksum mismatch")
                ok = False
            else:
                log(f"  check {f['filename']}")
        man.setdefault("unprotected", {})["verify_state"] = {"state": "ok" if ok else "failed",
                                                             "upid": log.upid}
        pbsstore.write_manifest(d, man)
        if not ok:
            failed.append(name)
    if failed:
        log("Failed to verify the following snapshots/groups:")
        for name in failed:
            log(f"\t{name}")
        raise RuntimeError("verification failed - please check the log for details")


def _task_log(req: Request) -> list[dict]:
    p = check({"start": INT, "limit": INT, "download": BOOL, "test-status": BOOL}, req.params)
    return pbstasks.read_log(req.match["upid"], p.get("start", 0), p.get("limit", 50))


# ------------------------------------------------------------------ lab-only transfer

def _upload(handler, req: Request) -> None:
    """PUT /lab/upload?backup-type&backup-id&backup-time&filename: body = the file's bytes."""
    p = check({**SNAP, "store": Param(optional=False), "filename": Param(optional=False)}, req.params)
    name = p["filename"]
    if "/" in name or name.startswith(".") or name == pbsstore.MANIFEST:
        raise ApiError(400, "Parameter verification failed.", {"filename": "invalid file name"})
    d = pbsstore.snap_dir(p["store"], p["backup-type"], p["backup-id"], p["backup-time"])
    tmp = d.with_name(d.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    remaining = int(req.headers.get("content-length") or 0)
    with open(tmp / name, "wb") as fh:
        while remaining:
            chunk = handler.rfile.read(min(remaining, 1 << 20))
            if not chunk:
                raise ApiError(400, "upload cut short")
            fh.write(chunk)
            remaining -= len(chunk)
    handler._answer(200, "OK", {"data": {"filename": name, "size": (tmp / name).stat().st_size}})


def _finish(req: Request) -> dict:
    """POST /lab/finish?store&backup-type&backup-id&backup-time[&notes]: manifest, then publish."""
    p = check({**SNAP, "store": Param(optional=False), "notes": Param()}, req.params)
    d = pbsstore.snap_dir(p["store"], p["backup-type"], p["backup-id"], p["backup-time"])
    tmp = d.with_name(d.name + ".tmp")
    if not tmp.is_dir():
        raise ApiError(400, "nothing uploaded")
    files = [{"filename": f.name, "size": f.stat().st_size, "csum": pbsstore.sha256_file(f)}
             for f in sorted(tmp.iterdir())]
    man = {"backup-type": p["backup-type"], "backup-id": p["backup-id"], "backup-time": p["backup-time"],
           "files": files, "owner": req.user, "unprotected": {"notes": p.get("notes", "")}}
    pbsstore.write_manifest(tmp, man)
    if d.exists():
        shutil.rmtree(d)
    tmp.rename(d)
    return pbsstore.snapshot_info(p["backup-type"], p["backup-id"], p["backup-time"], d)


def _download(handler, req: Request) -> None:
    """GET /lab/download?store&backup-type&backup-id&backup-time&filename: the file's bytes."""
    p = check({**SNAP, "store": Param(optional=False), "filename": Param(optional=False)}, req.params)
    d = pbsstore.snap_dir(p["store"], p["backup-type"], p["backup-id"], p["backup-time"])
    f = d / p["filename"]
    if "/" in p["filename"] or not f.is_file():
        raise ApiError(400, f"unable to open file '{p['filename']}'")
    handler.send_response(200, "OK")
    handler.send_header("Content-Type", "application/octet-stream")
    handler.send_header("Content-Length", str(f.stat().st_size))
    handler.end_headers()
    with open(f, "rb") as fh:
        shutil.copyfileobj(fh, handler.wfile, 1 << 20)
