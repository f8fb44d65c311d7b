"""A small HTTPS JSON API server shaped like Proxmox's: /api2/json paths, {"data": ...} answers.

Errors follow PVE::APIServer::Formatter::Standard: the body is {"data": null} plus "errors"
(per-parameter messages) for a 400, and the message goes into the HTTP status line.
The same Router is called in-process by `pvesh`, so the CLI and the API share every handler.
"""

from __future__ import annotations

import json
import re
import ssl
import sys
import threading
import urllib.parse
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable

API_PREFIX = "/api2/json"


class ApiError(Exception):
    """An API answer other than 200: status code, message (status line) and optional per-field errors."""

    def __init__(self, status: int, message: str, errors: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.errors = errors


def param_error(**errors: str) -> ApiError:
    """PVE's 400 for parameters that fail the schema."""
    return ApiError(400, "Parameter verification failed.", errors)


@dataclass
class Request:
    """One API call: method, path below /api2/json, merged parameters, path variables, caller."""

    method: str
    path: str
    params: dict[str, Any]
    match: dict[str, str] = field(default_factory=dict)
    user: str = "root@pam"
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)


Handler = Callable[[Request], Any]


class Router:
    """Maps (method, path template) to handlers. Templates use {name} for one path segment."""

    def __init__(self) -> None:
        self.routes: list[tuple[str, re.Pattern[str], Handler]] = []

    def add(self, method: str, template: str, handler: Handler) -> None:
        """Register handler for METHOD template ('{upid}' matches one segment, '{tail*}' the rest)."""
        pattern = re.sub(r"\{(\w+)\*\}", r"(?P<\1>.+)", template)
        pattern = re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", pattern)
        self.routes.append((method, re.compile("^" + pattern + "/?$"), handler))

    def dispatch(self, req: Request) -> Any:
        """Run the handler for req; raises ApiError (501 when no route, as PVE says)."""
        path_known = False
        for method, rx, handler in self.routes:
            m = rx.match(req.path)
            if not m:
                continue
            path_known = True
            if method == req.method:
                req.match = {k: urllib.parse.unquote(v) for k, v in m.groupdict().items()}
                return handler(req)
        if path_known:
            raise ApiError(501, f"Method '{req.method} {API_PREFIX}{req.path}' not implemented")
        raise ApiError(501, f"Method '{req.method} {API_PREFIX}{req.path}' not implemented")


def parse_params(query: str, body: bytes, content_type: str) -> dict[str, Any]:
    """Query string plus form or JSON body, merged (PVE accepts both encodings)."""
    params: dict[str, Any] = dict(urllib.parse.parse_qsl(query, keep_blank_values=True))
    if not body:
        return params
    if content_type.startswith("application/json"):
        data = json.loads(body.decode("utf-8"))
        if isinstance(data, dict):
            params.update({k: v for k, v in data.items()})
    elif content_type.startswith("application/x-www-form-urlencoded") or not content_type:
        params.update(urllib.parse.parse_qsl(body.decode("utf-8"), keep_blank_values=True))
    return params


class ApiServer(ThreadingHTTPServer):
    """ThreadingHTTPServer carrying the router, the auth check and options for raw bodies."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, addr: tuple[str, int], router: Router, auth: Callable[[dict[str, str]], str],
                 raw_body_paths: tuple[str, ...] = (), raw_routes: dict[str, Callable] | None = None,
                 forward: Callable[[str], tuple[str, int, str] | None] | None = None):
        super().__init__(addr, _Handler)
        self.router = router
        self.auth = auth
        self.raw_body_paths = raw_body_paths
        self.raw_routes = raw_routes or {}
        self.forward = forward
        """path -> (host, port, sha256 fingerprint) of the member that must answer it, or None."""


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "pve-api-daemon/3.0"
    sys_version = ""
    server: ApiServer

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        sys.stderr.write("%s %s\n" % (self.address_string(), format % args))

    def do_GET(self) -> None:  # noqa: N802 - stdlib naming
        self._serve("GET")

    def do_POST(self) -> None:  # noqa: N802
        self._serve("POST")

    def do_PUT(self) -> None:  # noqa: N802
        self._serve("PUT")

    def do_DELETE(self) -> None:  # noqa: N802
        self._serve("DELETE")

    def _serve(self, method: str) -> None:
        parsed = urllib.parse.urlsplit(self.path)
        try:
            if not parsed.path.startswith(API_PREFIX + "/") and parsed.path != API_PREFIX:
                raise ApiError(501, "Unsupported format")
            path = parsed.path[len(API_PREFIX):] or "/"
            headers = {k.lower(): v for k, v in self.headers.items()}
            user = self.server.auth(headers)
            target = self.server.forward(path) if self.server.forward else None
            if target is not None:
                self._proxy(method, target, headers)
                return
            raw = self._raw_route(method, path)
            if raw is not None:
                raw(self, Request(method, path, dict(urllib.parse.parse_qsl(parsed.query)), user=user,
                                  headers=headers))
                return
            body = self._read_body()
            try:
                params = parse_params(parsed.query, body, headers.get("content-type", ""))
            except ValueError:
                raise ApiError(400, "Invalid JSON body") from None
            req = Request(method, path, params, user=user, headers=headers)
            self._answer(200, "OK", {"data": self.server.router.dispatch(req)})
        except ApiError as exc:
            self.close_connection = True  # a refused upload may leave its body unread
            body_obj: dict[str, Any] = {"data": None}
            if exc.errors:
                body_obj["errors"] = exc.errors
            self._answer(exc.status, exc.message, body_obj)
        except Exception as exc:  # a bug or a failed command: PVE answers 500 with the message
            self.close_connection = True
            self._answer(500, str(exc) or type(exc).__name__, {"data": None})

    def _proxy(self, method: str, target: tuple[str, int, str], headers: dict[str, str]) -> None:
        """Answer with what another cluster member answers (pveproxy forwards requests for
        /nodes/<other>/... to that node); its certificate is checked by fingerprint."""
        import hashlib
        import http.client

        host, port, fingerprint = target
        body = self._read_body()
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE  # the member's certificate is pinned just below
        conn = http.client.HTTPSConnection(host, port, timeout=600, context=ctx)
        try:
            conn.connect()
            der = conn.sock.getpeercert(binary_form=True) or b""
            if hashlib.sha256(der).hexdigest() != fingerprint.replace(":", "").lower():
                raise ApiError(500, f"proxy to {host}: certificate fingerprint mismatch")
            forwarded = {k: v for k, v in headers.items() if k in ("authorization", "content-type")}
            conn.request(method, self.path, body=body or None, headers=forwarded)
            resp = conn.getresponse()
            data = resp.read()
        except OSError as exc:
            raise ApiError(595, f"no route to host {host}: {exc}") from None
        finally:
            conn.close()
        self.send_response(resp.status, resp.reason)
        self.send_header("Content-Type", resp.getheader("Content-Type") or "application/json;charset=UTF-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _raw_route(self, method: str, path: str) -> Callable | None:
        for key, fn in self.server.raw_routes.items():
            m, _, prefix = key.partition(" ")
            if m == method and re.match("^" + prefix + "$", path):
                return fn
        return None

    def _read_body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _answer(self, status: int, message: str, obj: Any) -> None:
        data = json.dumps(obj).encode("utf-8")
        reason = message.splitlines()[0][:200] if message else ""
        self.send_response(status, reason)
        self.send_header("Content-Type", "application/json;charset=UTF-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def serve(host: str, port: int, certfile: str, keyfile: str, server: ApiServer | None = None,
          **kwargs: Any) -> ApiServer:
    """Create the TLS server listening on host:port (port 0: the system picks). Call serve_forever()."""
    srv = server or ApiServer((host, port), **kwargs)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(certfile, keyfile)
    srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
    return srv


def serve_in_thread(srv: ApiServer) -> threading.Thread:
    """Run srv.serve_forever in a daemon thread (tests); returns the thread."""
    t = threading.Thread(target=srv.serve_forever, name="pvesim-http", daemon=True)
    t.start()
    return t
