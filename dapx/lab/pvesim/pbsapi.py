"""The PBS API simulator: `python -m dapx.lab.pvesim.pbsapi [--host H] [--port P]`.

Reads node.json for tokens, TLS cert and the datastore (pbs.datastore, pbs.path); listens on
the node's address, port 8007.
"""

from __future__ import annotations

import argparse
import sys

from . import httpd, paths
from .auth import pbs_auth

PBS_VERSION = {"version": "3.4", "release": "1", "repoid": "2f5f1c0e5b4d3a1b"}


def build_router() -> tuple[httpd.Router, dict]:
    """PBS routes plus the raw (streaming) upload/download routes of the lab-only transfer API."""
    from . import pbs_routes

    router = httpd.Router()
    router.add("GET", "/version", lambda req: dict(PBS_VERSION))
    raw = pbs_routes.register(router)
    return router, raw


def make_server(host: str, port: int) -> httpd.ApiServer:
    """A TLS server for this node's PBS API (not yet serving)."""
    cfg = paths.node_config()
    router, raw = build_router()
    srv = httpd.ApiServer((host, port), router=router, auth=pbs_auth(cfg.get("tokens", {})), raw_routes=raw)
    return httpd.serve(host, port, cfg["tls_cert"], cfg["tls_key"], server=srv)


def main(argv: list[str] | None = None) -> int:
    """Parse options, serve forever."""
    ap = argparse.ArgumentParser(prog="pbsapi", description="PBS API simulator")
    ap.add_argument("--host", help="listen address (default: node.json address)")
    ap.add_argument("--port", type=int, default=8007)
    args = ap.parse_args(argv)
    cfg = paths.node_config()
    srv = make_server(args.host or cfg.get("listen") or cfg["address"], args.port)
    sys.stderr.write(f"pbsapi: node {cfg['node']} listening on {srv.server_address}\n")
    srv.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
