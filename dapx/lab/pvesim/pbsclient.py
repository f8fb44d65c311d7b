"""The PVE side's client for the PBS simulator: listing, status, delete, upload and download.

Connects to the pbs storage's server on 8007 over TLS, pinning the storage's 'fingerprint'
(sha256 of the certificate, as PVE does for PBS storages) instead of trusting a CA. The token
comes from storage.cfg 'username' plus /etc/pve/priv/storage/<id>.pw, else node.json's pbs.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import ssl
import urllib.parse
from typing import Any, BinaryIO

from . import paths, pbsstore
from .storage import Storage, StorageError


def _credentials(st: Storage) -> tuple[str, str]:
    node = paths.node_config().get("pbs") or {}
    pw = paths.pve_dir() / "priv" / "storage" / f"{st.sid}.pw"
    user = st.opts.get("username") or node.get("token_id", "root@pam")
    if "!" not in user:
        user = node.get("token_id", user)
    secret = pw.read_text().strip() if pw.exists() else node.get("token_secret", "")
    return user, secret


def _fingerprint(st: Storage) -> str:
    fp = st.opts.get("fingerprint") or (paths.node_config().get("pbs") or {}).get("fingerprint", "")
    return fp.replace(":", "").lower()


def connect(st: Storage, timeout: float = 30) -> http.client.HTTPSConnection:
    """An HTTPS connection to the storage's PBS, its certificate checked against the fingerprint."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # trust comes from the pinned fingerprint checked below
    port = int(st.opts.get("port", 8007))
    conn = http.client.HTTPSConnection(st.opts["server"], port, timeout=timeout, context=ctx)
    conn.connect()
    der = conn.sock.getpeercert(binary_form=True) or b""
    if hashlib.sha256(der).hexdigest() != _fingerprint(st):
        conn.close()
        raise StorageError(f"PBS storage '{st.sid}': certificate fingerprint mismatch")
    return conn


def call(st: Storage, method: str, path: str, params: dict[str, Any] | None = None,
         body: BinaryIO | None = None, length: int = 0) -> Any:
    """One API call; returns 'data' or raises StorageError with PBS's status line."""
    user, secret = _credentials(st)
    conn = connect(st)
    try:
        query = urllib.parse.urlencode(params or {})
        headers = {"Authorization": f"PBSAPIToken={user}:{secret}"}
        if body is not None:
            headers["Content-Length"] = str(length)
        conn.request(method, f"/api2/json{path}?{query}", body=body, headers=headers)
        resp = conn.getresponse()
        raw = resp.read()
        if resp.status != 200:
            raise StorageError(f"PBS error {resp.status}: {resp.reason}")
        return json.loads(raw or b"{}").get("data")
    finally:
        conn.close()


def _store(st: Storage) -> str:
    return st.opts.get("datastore", "store1")


def list_backups(st: Storage) -> list[dict]:
    """Backups on the PBS storage as PVE's content listing shows them (volid pbs:backup/vm/100/<time>)."""
    out = []
    for s in call(st, "GET", f"/admin/datastore/{_store(st)}/snapshots") or []:
        if s["backup-type"] not in ("vm", "ct"):
            continue
        when = pbsstore.time_dir(s["backup-time"])
        item = {"volid": f"{st.sid}:backup/{s['backup-type']}/{s['backup-id']}/{when}", "content": "backup",
                "format": f"pbs-{s['backup-type']}", "size": s["size"], "ctime": s["backup-time"],
                "subtype": "qemu" if s["backup-type"] == "vm" else "lxc", "protected": int(s.get("protected", 0))}
        if s["backup-id"].isdigit():
            item["vmid"] = int(s["backup-id"])
        if s.get("comment"):
            item["notes"] = s["comment"]
        if s.get("verification"):
            item["verification"] = s["verification"]
        out.append(item)
    return out


def datastore_status(st: Storage) -> dict:
    """total/used/avail of the datastore."""
    return call(st, "GET", f"/admin/datastore/{_store(st)}/status")


def parse_backup_volname(volname: str) -> tuple[str, str, int]:
    """'backup/vm/100/2026-11-26T02:00:00Z' -> ('vm', '100', epoch)."""
    parts = volname.split("/")
    if len(parts) != 4 or parts[0] != "backup":
        raise StorageError(f"unable to parse PBS volume name '{volname}'")
    return parts[1], parts[2], pbsstore.parse_time(parts[3])


def delete_backup(st: Storage, volname: str) -> None:
    """Forget one backup snapshot."""
    btype, bid, epoch = parse_backup_volname(volname)
    call(st, "DELETE", f"/admin/datastore/{_store(st)}/snapshots",
         {"backup-type": btype, "backup-id": bid, "backup-time": epoch})


def upload(st: Storage, btype: str, bid: str, epoch: int, filename: str, fh: BinaryIO, length: int) -> None:
    """Send one archive file (lab-only transfer endpoint)."""
    call(st, "PUT", "/lab/upload", {"store": _store(st), "backup-type": btype, "backup-id": bid,
                                    "backup-time": epoch, "filename": filename}, body=fh, length=length)


def finish(st: Storage, btype: str, bid: str, epoch: int, notes: str = "") -> dict:
    """Publish the uploaded snapshot (manifest with sizes and sha256)."""
    return call(st, "POST", "/lab/finish", {"store": _store(st), "backup-type": btype, "backup-id": bid,
                                            "backup-time": epoch, "notes": notes})


def files(st: Storage, btype: str, bid: str, epoch: int) -> list[dict]:
    """The file list of one snapshot."""
    snaps = call(st, "GET", f"/admin/datastore/{_store(st)}/snapshots", {"backup-type": btype, "backup-id": bid})
    for s in snaps or []:
        if s["backup-time"] == epoch:
            return s["files"]
    raise StorageError(f"backup '{btype}/{bid}/{pbsstore.time_dir(epoch)}' not found")


def download(st: Storage, btype: str, bid: str, epoch: int, filename: str, out: BinaryIO) -> int:
    """Stream one archive file into out; returns bytes written."""
    user, secret = _credentials(st)
    conn = connect(st, timeout=600)
    try:
        query = urllib.parse.urlencode({"store": _store(st), "backup-type": btype, "backup-id": bid,
                                        "backup-time": epoch, "filename": filename})
        conn.request("GET", f"/api2/json/lab/download?{query}",
                     headers={"Authorization": f"PBSAPIToken={user}:{secret}"})
        resp = conn.getresponse()
        if resp.status != 200:
            raise StorageError(f"PBS error {resp.status}: {resp.reason}")
        n = 0
        for chunk in iter(lambda: resp.read(1 << 20), b""):
            out.write(chunk)
            n += len(chunk)
        return n
    finally:
        conn.close()
