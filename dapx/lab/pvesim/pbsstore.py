"""The PBS simulator's datastore on disk, in PBS's directory layout (simplified, see README.md).

<datastore>/<type>/<id>/<RFC3339 time>/ holds the archive files with PBS's names
(drive-scsi0.img.fidx, qemu-server.conf.blob, root.pxar.didx) but as plain bytes (raw disk
image, config text, tar), and index.json.blob: a JSON manifest {backup-type, backup-id,
backup-time, files: [{filename, size, csum (sha256)}], unprotected: {notes, verify_state}}.
A '.protected' file marks a protected snapshot, as on PBS.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import re
import shutil
from pathlib import Path

from . import paths
from .httpd import ApiError

TYPES = ("vm", "ct", "host")
MANIFEST = "index.json.blob"


def datastores() -> dict[str, Path]:
    """{name: path} from /etc/proxmox-backup/datastore.cfg, else node.json pbs.datastore."""
    cfg = paths.sim_path("/etc/proxmox-backup/datastore.cfg")
    out: dict[str, Path] = {}
    if cfg.exists():
        name = None
        for line in cfg.read_text().splitlines():
            if line.startswith("datastore:"):
                name = line.split(":", 1)[1].strip()
            elif name and line.strip().startswith("path "):
                out[name] = paths.sim_path(line.strip()[5:].strip())
    if not out:
        node = paths.node_config()
        pbs = node.get("pbs") or {}
        if pbs.get("path"):  # no silent default: a guessed path could land on the host's disk
            out[pbs.get("datastore", "store1")] = paths.sim_path(pbs["path"])
    return out


def store_path(store: str) -> Path:
    """The directory of datastore store; PBS's 404-like error when unknown."""
    p = datastores().get(store)
    if p is None:
        raise ApiError(400, f"datastore '{store}' does not exist")
    p.mkdir(parents=True, exist_ok=True)
    return p


def time_dir(epoch: int) -> str:
    """Epoch -> '2026-11-26T02:00:00Z' (PBS's snapshot directory name)."""
    return dt.datetime.fromtimestamp(int(epoch), dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: str) -> int:
    """'2026-11-26T02:00:00Z' -> epoch."""
    return int(dt.datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.timezone.utc).timestamp())


def check_group(btype: str, bid: str) -> None:
    """Refuse a bad backup type or id (PBS's BACKUP_ID regex) before touching paths."""
    if btype not in TYPES:
        raise ApiError(400, "Parameter verification failed.", {"backup-type": f"value '{btype}' is not defined in the enumeration."})
    if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9._\-]*", bid):
        raise ApiError(400, "Parameter verification failed.", {"backup-id": "value does not match the regex pattern"})


def snap_dir(store: str, btype: str, bid: str, epoch: int) -> Path:
    """Directory of one backup snapshot."""
    check_group(btype, bid)
    return store_path(store) / btype / bid / time_dir(epoch)


def read_manifest(d: Path) -> dict:
    """The manifest of a finished snapshot directory."""
    return json.loads((d / MANIFEST).read_text())


def write_manifest(d: Path, manifest: dict) -> None:
    """Replace the manifest atomically."""
    tmp = d / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=1))
    os.replace(tmp, d / MANIFEST)


def iter_snapshots(store: str, btype: str | None = None, bid: str | None = None):
    """Yield (btype, bid, epoch, dir) of every finished snapshot (one with a manifest)."""
    base = store_path(store)
    for t in TYPES:
        if btype and t != btype or not (base / t).is_dir():
            continue
        for g in sorted((base / t).iterdir()):
            if bid and g.name != bid:
                continue
            for s in sorted(g.iterdir()):
                if (s / MANIFEST).exists():
                    yield t, g.name, parse_time(s.name), s


def snapshot_info(btype: str, bid: str, epoch: int, d: Path) -> dict:
    """One entry of GET /admin/datastore/{store}/snapshots."""
    man = read_manifest(d)
    files = [{"filename": MANIFEST, "size": (d / MANIFEST).stat().st_size, "crypt-mode": "none"}]
    files += [{"filename": f["filename"], "size": f["size"], "crypt-mode": "none"} for f in man["files"]]
    info = {"backup-type": btype, "backup-id": bid, "backup-time": epoch, "files": files,
            "size": sum(f["size"] for f in files), "owner": man.get("owner", "root@pam"),
            "protected": (d / ".protected").exists()}
    notes = man.get("unprotected", {}).get("notes")
    if notes:
        info["comment"] = notes.splitlines()[0]
    verify = man.get("unprotected", {}).get("verify_state")
    if verify:
        info["verification"] = verify
    return info


def sha256_file(p: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(p, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def remove_snapshot(store: str, btype: str, bid: str, epoch: int) -> None:
    """Delete one snapshot; PBS refuses a protected one."""
    d = snap_dir(store, btype, bid, epoch)
    if not (d / MANIFEST).exists():
        raise ApiError(400, f"backup dir '{d.relative_to(store_path(store))}' does not exist")
    if (d / ".protected").exists():
        raise ApiError(400, f"cannot remove protected snapshot \"{store}:{btype}/{bid}/{d.name}\"")
    shutil.rmtree(d)
    if not any(d.parent.iterdir()):
        d.parent.rmdir()


def usage(store: str) -> dict:
    """total/used/avail bytes of the filesystem holding the datastore."""
    vfs = os.statvfs(store_path(store))
    total = vfs.f_blocks * vfs.f_frsize
    avail = vfs.f_bavail * vfs.f_frsize
    return {"total": total, "used": total - vfs.f_bfree * vfs.f_frsize, "avail": avail}
