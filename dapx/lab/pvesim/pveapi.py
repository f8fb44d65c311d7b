"""The PVE API simulator: `python -m dapx.lab.pvesim.pveapi [--host H] [--port P]`.

Reads node.json (paths.node_config_path) for the node name, tokens and TLS cert; listens on
the node's address, port 8006, unless told otherwise.
"""

from __future__ import annotations

import argparse
import sys

from . import httpd, paths
from .auth import pve_auth

PVE_VERSION = {"version": "9.0.3", "release": "9.0", "repoid": "025864202ebb6109"}


def build_router() -> httpd.Router:
    """Every PVE route the simulator serves (handlers live in the api_* modules)."""
    from . import api_cluster, api_guests, api_storage, api_storage_config, api_tasks

    router = httpd.Router()
    router.add("GET", "/version", lambda req: dict(PVE_VERSION))
    for module in (api_cluster, api_tasks, api_storage, api_storage_config, api_guests):
        module.register(router)
    return router


def _upload_volume(handler, req: httpd.Request) -> None:
    """Lab-only: PUT /api2/json/lab/volume?volid=V with the raw bytes (remote_migrate's data path)."""

    from . import storage
    volid = req.params.get("volid", "")
    try:
        target = storage.path(volid)
    except storage.StorageError as exc:
        raise httpd.ApiError(400, str(exc)) from None
    remaining = int(req.headers.get("content-length") or 0)
    with open(target, "r+b") as fh:
        while remaining:
            chunk = handler.rfile.read(min(remaining, 1 << 20))
            if not chunk:
                raise httpd.ApiError(400, "upload cut short")
            fh.write(chunk)
            remaining -= len(chunk)
    handler._answer(200, "OK", {"data": None})


def member_forwarder(cfg: dict):  # noqa: ANN201 - returns the ApiServer.forward callable
    """Where requests for /nodes/<member>/... go: another cluster member whose certificate
    fingerprint node.json lists (``cluster_fingerprints``); None answers them here."""
    import re

    local, members = cfg["node"], cfg.get("cluster_nodes") or {}
    pins = cfg.get("cluster_fingerprints") or {}

    def forward(path: str) -> tuple[str, int, str] | None:
        m = re.match(r"/nodes/([^/]+)(?:/|$)", path)
        if not m or m[1] == local or m[1] not in members or m[1] not in pins:
            return None
        return members[m[1]], 8006, pins[m[1]]

    return forward


def make_server(host: str, port: int) -> httpd.ApiServer:
    """A TLS server for this node's PVE API (not yet serving)."""
    cfg = paths.node_config()
    srv = httpd.ApiServer((host, port), router=build_router(), auth=pve_auth(cfg.get("tokens", {})),
                          raw_routes={"PUT /lab/volume": _upload_volume}, forward=member_forwarder(cfg))
    return httpd.serve(host, port, cfg["tls_cert"], cfg["tls_key"], server=srv)


def main(argv: list[str] | None = None) -> int:
    """Parse options, serve forever."""
    ap = argparse.ArgumentParser(prog="pveapi", description="PVE API simulator")
    ap.add_argument("--host", help="listen address (default: node.json address)")
    ap.add_argument("--port", type=int, default=8006)
    args = ap.parse_args(argv)
    cfg = paths.node_config()
    srv = make_server(args.host or cfg.get("listen") or cfg["address"], args.port)
    sys.stderr.write(f"pveapi: node {cfg['node']} listening on {srv.server_address}\n")
    srv.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
