"""remote_migrate to another site: copy a guest through the target's PVE API.

Real PVE tunnels disks over a websocket (mtunnel); the lab allocates each disk with the
target's storage content API, streams the bytes to the lab-only PUT /api2/json/lab/volume
endpoint, then creates the guest with POST /nodes/{node}/qemu. The target's certificate is
checked against the endpoint's fingerprint.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import ssl
import urllib.parse
from typing import Any, BinaryIO

from . import guestconf, guests, storage
from .httpd import ApiError
from .ops import Log


def parse_endpoint(text: str) -> dict[str, str]:
    """'host=H,apitoken=PVEAPIToken=u@r!t=s,fingerprint=FP[,port=P]' -> dict; 400 when incomplete."""
    out: dict[str, str] = {}
    for part in text.split(","):
        key, _, value = part.partition("=")
        out[key.strip()] = value.strip()
    missing = [k for k in ("host", "apitoken") if not out.get(k)]
    if missing or not out["apitoken"].startswith("PVEAPIToken="):
        raise ApiError(400, "Parameter verification failed.",
                       {"target-endpoint": "invalid format - missing or invalid 'host'/'apitoken'"})
    return out


class Target:
    """A pinned HTTPS client for the target site's API."""

    def __init__(self, endpoint: dict[str, str]):
        self.ep = endpoint

    def _conn(self) -> http.client.HTTPSConnection:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE  # trust comes from the fingerprint check below
        conn = http.client.HTTPSConnection(self.ep["host"], int(self.ep.get("port", 8006)), timeout=600, context=ctx)
        conn.connect()
        want = self.ep.get("fingerprint", "").replace(":", "").lower()
        got = hashlib.sha256(conn.sock.getpeercert(binary_form=True) or b"").hexdigest()
        if want != got:
            conn.close()
            raise RuntimeError("remote migration: target certificate fingerprint mismatch")
        return conn

    def call(self, method: str, path: str, params: dict[str, Any] | None = None,
             body: BinaryIO | None = None, length: int = 0) -> Any:
        """One API call; 'data' or RuntimeError with the target's status line."""
        conn = self._conn()
        try:
            headers = {"Authorization": self.ep["apitoken"]}
            data: Any = body
            if body is None and params and method != "GET":
                data = urllib.parse.urlencode(params)
                headers["Content-Type"] = "application/x-www-form-urlencoded"
                q = ""
            else:
                q = "?" + urllib.parse.urlencode(params or {})
            if body is not None:
                headers["Content-Length"] = str(length)
            conn.request(method, f"/api2/json{path}{q}", body=data, headers=headers)
            resp = conn.getresponse()
            raw = resp.read()
            if resp.status != 200:
                raise RuntimeError(f"target API {method} {path}: {resp.status} {resp.reason}")
            return json.loads(raw or b"{}").get("data")
        finally:
            conn.close()


def copy_guest(log: Log, node: str, kind: str, vmid: int, endpoint: dict[str, str], target_vmid: int,
               storage_map: dict[str, str], bridge_map: dict[str, str], start: bool = False) -> None:
    """Create target_vmid on the target site with this guest's config and disk bytes; maps are
    {source: target} ('*': everything), as migrate.pairs reads PVE's pair lists. ``start``:
    start it there (an online or restart-mode move of a running guest)."""
    from .migrate import mapped
    t = Target(endpoint)
    tnode = t.call("GET", "/nodes")[0]["node"]
    log(f"remote: target node '{tnode}'")
    values = dict(guests.require(node, kind, vmid).current)
    for key in ("lock", "parent", "digest"):
        values.pop(key, None)
    for key, volid in guestconf.disk_volumes(values).items():
        if key.startswith("unused"):
            values.pop(key)
            continue
        if storage.path(volid).is_dir():
            raise RuntimeError("lab: remote migration of container volumes is not simulated")
        size = storage.size_of(volid)
        _, props = guestconf.split_prop(values[key])
        name = f"vm-{target_vmid}-disk-{key[-1] if key[-1].isdigit() else 0}"
        sid = mapped(storage_map, storage.split_volid(volid)[0])
        new = t.call("POST", f"/nodes/{tnode}/storage/{sid}/content",
                     {"filename": name, "size": f"{max(size // 1024, 1)}K", "vmid": target_vmid})
        log(f"remote: copying '{volid}' to '{new}'")
        with open(storage.path(volid), "rb") as fh:
            t.call("PUT", "/lab/volume", {"volid": new}, body=fh, length=size)
        values[key] = guestconf.join_prop(new, props)
    for key in [k for k in values if k.startswith("net")]:
        first, props = guestconf.split_prop(values[key])
        if "bridge" in props:
            props["bridge"] = mapped(bridge_map, props["bridge"])
        values[key] = guestconf.join_prop(first, props)
    upid = t.call("POST", f"/nodes/{tnode}/{kind}", {"vmid": target_vmid, **values})
    _wait(t, tnode, upid)
    log(f"remote: guest {target_vmid} created on '{tnode}'")
    if start:
        _wait(t, tnode, t.call("POST", f"/nodes/{tnode}/{kind}/{target_vmid}/status/start", {}))
        log(f"remote: guest {target_vmid} started on '{tnode}'")


def _wait(t: Target, tnode: str, upid: str) -> None:
    import time
    while True:
        st = t.call("GET", f"/nodes/{tnode}/tasks/{urllib.parse.quote(upid)}/status")
        if st["status"] == "stopped":
            if st["exitstatus"] != "OK":
                raise RuntimeError(f"target task failed: {st['exitstatus']}")
            return
        time.sleep(0.2)
