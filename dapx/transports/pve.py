"""Proxmox VE API client (proxmoxer, https backend): token auth, pinned TLS fingerprint, typed errors.

``ApiClient`` holds what PVE and PBS share: the pinned-certificate HTTPS session, error mapping,
and UPID task following. ``PveClient`` adds one thin method per operation the product needs.

TLS: a node's certificate is usually self-signed, so instead of a CA chain the client checks
the certificate's SHA-256 fingerprint against the one pinned in the node block
(``PinnedCertAdapter``). A mismatch raises ``TLSFingerprintError`` naming both fingerprints.
``fetch_tls_fingerprint`` reads the fingerprint a server presents, for the node test to record.

Errors are classed by status AND by PVE's message (``classify_api_error``): PVE answers many
permanent errors with HTTP 500. 401 -> AuthError; 403 and other 4xx -> ApiError; a missing
guest/storage/file -> NotFoundError; another permanent wording (already exists, invalid...) ->
ApiError; a guest lock -> GuestLocked (transient, names the lock); 595 (node offline) ->
ConnectionLost naming the node; other 5xx -> TransientApiError; connection trouble ->
ConnectionLost; a failed task -> TaskFailed.
"""

from __future__ import annotations

import functools
import hashlib
import re
import socket
import ssl
import time
from typing import Any, Callable, Literal, Optional, Protocol

import requests
import urllib3
from proxmoxer import ProxmoxAPI
from proxmoxer.core import ResourceException
from pydantic import SecretStr
from requests.adapters import HTTPAdapter

from dapx.core.validate import validate_vmid
from dapx.errors import (ApiError, AuthError, ConnectionLost, GuestLocked, InputError,
                         NotFoundError, TaskFailed, TLSFingerprintError, TransientApiError)


DEFAULT_TIMEOUT = 30.0
"""Seconds for one HTTP request (proxmoxer's own default, 5 s, is too short for busy nodes)."""

TASK_LOG_TAIL = 20

GuestKind = Literal["qemu", "lxc"]

_WARNINGS = re.compile(r"WARNINGS: [0-9]+")
_PATH_PART = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:@!=-]*")
_LOCKED = re.compile(r"\b(?:VM|CT) (?:[0-9]+ )?is locked \(([\w-]+)\)")
_NOT_FOUND = re.compile(r"does not exist|\bno such\b|not found|unable to find|"
                        r"doesn't exist|no configuration file", re.IGNORECASE)
_PERMANENT = re.compile(r"already exists|\binvalid\b|\bunknown\b|not allowed|not supported|"
                        r"not available|not running|permission denied|parameter verification",
                        re.IGNORECASE)


def classify_api_error(status: int, text: str) -> tuple[type[ApiError], str]:
    """(error class, lock name or "") for an API answer: by status, then by PVE's wording.

    Pure. 401 -> AuthError; 595 -> ConnectionLost (offline node); a guest lock ->
    GuestLocked; a missing object -> NotFoundError; other permanent wording and 4xx ->
    ApiError; remaining 5xx -> TransientApiError.
    """
    if status == 401:
        return AuthError, ""  # type: ignore[return-value]  # AuthError is not an ApiError
    locked = _LOCKED.search(text)
    if locked:
        return GuestLocked, locked[1]
    if _NOT_FOUND.search(text):
        return NotFoundError, ""
    if status < 500 or _PERMANENT.search(text):
        return ApiError, ""
    if status == 595:
        return ConnectionLost, ""  # type: ignore[return-value]
    return TransientApiError, ""


# ----------------------------------------------------------------------------------------------
# TLS pinning


def format_fingerprint(der: bytes) -> str:
    """SHA-256 of a DER certificate as upper-case colon hex (as ``pvenode cert info`` shows)."""
    digest = hashlib.sha256(der).hexdigest().upper()
    return ":".join(digest[i:i + 2] for i in range(0, len(digest), 2))


def fetch_tls_fingerprint(host: str, port: int, timeout: float = 10.0) -> str:
    """Connect to ``host:port``, read the certificate the server presents, return its fingerprint.

    Trust on first use, for the node test only: nothing is sent over this connection.
    Raises ConnectionLost when the server cannot be reached or speaks no TLS.
    """
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # we only read the certificate, to pin it
    try:
        with socket.create_connection((host, port), timeout=timeout) as raw:
            with context.wrap_socket(raw, server_hostname=host) as tls:
                der = tls.getpeercert(binary_form=True)
    except (OSError, ssl.SSLError) as exc:
        raise ConnectionLost(f"cannot read the TLS certificate of {host}:{port}: {exc}") from None
    if not der:
        raise ConnectionLost(f"{host}:{port} presented no TLS certificate")
    return format_fingerprint(der)


@functools.cache
def _pinned_context() -> ssl.SSLContext:
    """The TLS context of pinned connections: no CA bundle (the pin is the check), so none is
    loaded for each connection (urllib3 loads the system's for a context of its own: ~20 ms
    of CPU each time)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


class PinnedCertAdapter(HTTPAdapter):
    """requests adapter that trusts exactly one certificate, by its SHA-256 fingerprint.

    urllib3 checks ``assert_fingerprint`` right after the handshake, before any byte (and so
    before the API token) is sent. The CA chain is not consulted: the pin replaces it.
    """

    def __init__(self, fingerprint: str) -> None:
        self.fingerprint = fingerprint
        super().__init__()

    def build_connection_pool_key_attributes(self, request, verify, cert=None):  # noqa: ANN001
        host_params, pool_kwargs = super().build_connection_pool_key_attributes(request, False, cert)
        pool_kwargs["assert_fingerprint"] = self.fingerprint.replace(":", "").lower()
        pool_kwargs["ssl_context"] = _pinned_context()
        return host_params, pool_kwargs

    def cert_verify(self, conn, url, verify, cert):  # noqa: ANN001
        # The pin (assert_fingerprint above) is the verification; no CA bundle applies.
        super().cert_verify(conn, url, False, cert)


# ----------------------------------------------------------------------------------------------
# Shared client


def _part(value: object) -> str:
    """A path component: refuses anything that could change the path (``/``, ``..``, spaces)."""
    text = str(value)
    if not _PATH_PART.fullmatch(text) or ".." in text:
        raise InputError(f"{text!r} is not a valid name for an API path")
    return text


class ApiEndpoint(Protocol):
    """What a client needs to know about a node (``dapx.blocks.node.ProxmoxNode`` is one)."""

    name: str
    host: str
    api_port: Optional[int]
    api_token_id: Optional[str]
    api_token_secret: Optional[SecretStr]
    tls_fingerprint: Optional[str]


def check_vmid(vmid: int) -> int:
    """VMIDs are 100..999999999 in PVE; InputError otherwise (``dapx.core.validate``)."""
    return validate_vmid(vmid)


class ApiClient:
    """What the PVE and PBS clients share. Construct with ``from_node(block)``.

    In: host, port, token id ``user@realm!name``, token secret, pinned fingerprint (required:
    the node test records it first), timeout per request. ``name`` is used in messages.
    """

    service = "PVE"

    def __init__(self, *, name: str, host: str, port: int, token_id: str, token_secret: SecretStr,
                 fingerprint: Optional[str], timeout: float = DEFAULT_TIMEOUT) -> None:
        if not fingerprint:
            raise TLSFingerprintError(f"node {name} has no pinned TLS fingerprint: test the node first "
                                      f"(dapx node test {name}) to record it")
        if not token_id or "!" not in token_id or token_secret is None:
            raise InputError(f"node {name} has no API token: set api_token_id (user@realm!name) "
                             f"and api_token_secret")
        self.name, self.host, self.port, self.fingerprint = name, host, port, fingerprint
        user, _, token_name = token_id.partition("!")
        self._api = ProxmoxAPI(host, port=port, user=user, token_name=token_name,
                               token_value=token_secret.get_secret_value(), backend="https",
                               service=self.service, verify_ssl=True, timeout=timeout)
        # proxmoxer builds its own requests.Session; mount the pinning adapter on it.
        self._api._store["session"].mount("https://", PinnedCertAdapter(fingerprint))

    @classmethod
    def from_node(cls, node: ApiEndpoint, *, timeout: float = DEFAULT_TIMEOUT) -> "ApiClient":
        """A client for the node block's API; raises TLSFingerprintError/InputError as ``__init__``."""
        return cls(name=node.name, host=node.host, port=int(node.api_port or 0),
                   token_id=node.api_token_id or "", token_secret=node.api_token_secret,
                   fingerprint=node.tls_fingerprint, timeout=timeout)

    def __repr__(self) -> str:  # never the token secret
        return f"{type(self).__name__}({self.name} at {self.host}:{self.port})"

    # -- raw calls -------------------------------------------------------------------------------

    def get(self, *parts: object, **params: Any) -> Any:
        return self._call("GET", parts, params)

    def post(self, *parts: object, **data: Any) -> Any:
        return self._call("POST", parts, data)

    def put(self, *parts: object, **data: Any) -> Any:
        return self._call("PUT", parts, data)

    def delete(self, *parts: object, **params: Any) -> Any:
        return self._call("DELETE", parts, params)

    def _call(self, method: str, parts: tuple[object, ...], params: dict[str, Any]) -> Any:
        """One API call; ``parts`` are path components (each checked). Raises the mapped errors.

        Every failure of the HTTP stack (requests, urllib3, http.client, proxmoxer) becomes a
        DapxError whose message names the node and the kind of failure only: their own texts
        can quote the request's headers, and so the API token secret. The error is raised
        outside the ``except`` block so it carries no ``__context__`` either.
        """
        path = [_part(p) for p in parts]
        resource = self._api(path)
        try:
            if method in ("GET", "DELETE"):
                return resource._request(method, params=dict(params))
            return resource._request(method, data=dict(params))
        except ResourceException as exc:
            error = self._api_error(method, "/".join(path), exc)
        except Exception as exc:  # noqa: BLE001 - every transport failure, re-worded safely
            error = self._transport_error(method, "/".join(path), exc)
        raise error

    def _transport_error(self, method: str, path: str, exc: Exception) -> Exception:
        """A DapxError for a failure below the API (never quoting ``exc``'s text)."""
        where = f"the API of {self.name} at {self.host}:{self.port}"
        kind = transport_failure(exc)
        if isinstance(exc, requests.exceptions.SSLError):
            if "fingerprint" in repr(exc.args).lower():
                return self._fingerprint_error()
            return ConnectionLost(f"TLS handshake with {where} failed ({kind})")
        if isinstance(exc, (requests.exceptions.ConnectionError, requests.exceptions.Timeout,
                            urllib3.exceptions.TimeoutError, urllib3.exceptions.ProtocolError,
                            ConnectionError, TimeoutError)):
            return ConnectionLost(f"cannot reach {where}: {kind}")
        return ApiError(f"{method} /{path} on {self.name} could not be sent or read ({kind}); "
                        f"check the node's api_token_id and api_token_secret for stray "
                        f"characters, and its host and api_port")

    def _api_error(self, method: str, path: str, exc: ResourceException) -> Exception:
        status = exc.status_code
        text = _error_text(exc)
        cls, lock = classify_api_error(status, text)
        where = f"{method} /{path} on {self.name}"
        if cls is AuthError:
            return AuthError(f"API token refused by {self.name}: check token id/secret ({text})")
        if cls is ConnectionLost:
            return ConnectionLost(f"{where}: the node is offline or unreachable from "
                                  f"{self.name} ({status}: {text})")
        if cls is GuestLocked:
            return GuestLocked(f"{where}: the guest is locked ({lock}) by another operation; "
                               f"wait for it to finish or clear the lock ({text})",
                               status=status, lock=lock)
        if status == 403:
            return ApiError(f"{where}: permission denied: {text}", status=status)
        if cls is NotFoundError:
            return NotFoundError(f"{where}: {text}", status=status)
        if cls is TransientApiError:
            return TransientApiError(f"{where} failed ({status}): {text}", status=status)
        return ApiError(f"{where} refused ({status}): {text}", status=status)

    def _fingerprint_error(self) -> TLSFingerprintError:
        try:
            got = fetch_tls_fingerprint(self.host, self.port)
        except ConnectionLost:
            got = "unknown (cannot read it)"
        return TLSFingerprintError(
            f"TLS certificate of {self.name} ({self.host}:{self.port}) does not match the pinned "
            f"fingerprint: expected {self.fingerprint}, got {got}. If the certificate was renewed on "
            f"purpose, clear the node's tls_fingerprint and test it again")

    # -- common operations -----------------------------------------------------------------------

    def version(self) -> dict[str, Any]:
        """GET /version: ``{"version": "9.0.10", "release": "9.0", ...}``."""
        return self.get("version")

    def task_node(self, upid: str) -> str:
        """The node whose task list holds ``upid`` (PVE: the node named in the UPID)."""
        fields = upid.split(":")
        if len(fields) < 8 or fields[0] != "UPID":
            raise InputError(f"{upid!r} is not a UPID")
        return fields[1]

    def task_status(self, upid: str) -> dict[str, Any]:
        """GET /nodes/{node}/tasks/{upid}/status: ``status`` running|stopped, ``exitstatus``."""
        return self.get("nodes", self.task_node(upid), "tasks", upid, "status")

    def task_log(self, upid: str, tail: int = TASK_LOG_TAIL) -> list[str]:
        """The last ``tail`` lines of a task's log."""
        lines = self.get("nodes", self.task_node(upid), "tasks", upid, "log", start=0, limit=100000)
        return [str(entry.get("t", "")) for entry in (lines or [])][-tail:]

    def wait_task(self, upid: str, *, timeout: float = 3600.0, poll: float = 10.0,
                  on_status: Callable[[dict[str, Any]], None] | None = None,
                  warnings_ok: bool = False) -> dict[str, Any]:
        """Follow task ``upid`` until it stops; return its final status.

        Polls after a pause of 5 % of the time the task has run so far (at least 0.1 s, at
        most ``poll`` s), so a task is seen to end at most about 5 % later than it did: a 4 s
        restore costs 0.2 s more, not a backed-off 10 s poll. Raises TaskFailed with the last
        log lines when ``exitstatus`` is not ``OK`` (nor ``WARNINGS: N`` with ``warnings_ok``:
        PVE ends a task that logged warnings that way, and it succeeded), TransientApiError
        when it outlives ``timeout``.
        """
        started = time.monotonic()
        deadline = started + timeout
        while True:
            status = self.task_status(upid)
            if on_status is not None:
                on_status(status)
            if status.get("status") == "stopped":
                break
            now = time.monotonic()
            if now > deadline:
                raise TransientApiError(f"task {upid} on {self.name} still running after {timeout:g} s")
            time.sleep(min(max(0.05 * (now - started), 0.1), poll))
        exitstatus = str(status.get("exitstatus", ""))
        if exitstatus != "OK" and not (warnings_ok and _WARNINGS.fullmatch(exitstatus)):
            log = self.task_log(upid)
            last = log[-1] if log else exitstatus
            raise TaskFailed(f"task {status.get('type', '')} {status.get('id', '')} on {self.name} "
                             f"failed: {exitstatus or 'no exit status'} ({last})",
                             upid=upid, exitstatus=exitstatus, log_tail=log)
        return status


def transport_failure(exc: BaseException) -> str:
    """``"ConnectionError: NewConnectionError"``: the class names of ``exc`` and of the error
    inside it, without any text (those texts may quote request headers and secrets)."""
    names = [type(exc).__name__]
    inner = exc.args[0] if exc.args and isinstance(exc.args[0], BaseException) else None
    reason = getattr(inner, "reason", None) or inner
    if isinstance(reason, BaseException) and type(reason).__name__ not in names:
        names.append(type(reason).__name__)
    return ": ".join(names)


def _error_text(exc: ResourceException) -> str:
    """PVE's own wording: the HTTP reason (PVE puts its message there) plus per-field errors."""
    text = " ".join(str(exc.content or exc.status_message or "").split())
    errors = exc.errors if isinstance(exc.errors, dict) else None
    if errors and "errors" not in errors:
        text += " (" + "; ".join(f"{k}: {' '.join(str(v).split())}" for k, v in errors.items()) + ")"
    return text


# ----------------------------------------------------------------------------------------------
# PVE


class PveClient(ApiClient):
    """Proxmox VE API: one thin method per operation (paths as in the PVE API viewer)."""

    service = "PVE"

    def nodes(self) -> list[dict[str, Any]]:
        """GET /nodes: ``[{"node": "pve1", "status": "online", ...}]``."""
        return self.get("nodes")

    def guests(self) -> list[dict[str, Any]]:
        """GET /cluster/resources?type=vm: every VM and container with node, vmid, type, status."""
        return self.get("cluster", "resources", type="vm")

    def guest_config(self, node: str, kind: GuestKind, vmid: int) -> dict[str, Any]:
        """GET /nodes/{node}/{qemu|lxc}/{vmid}/config."""
        return self.get("nodes", node, _kind(kind), check_vmid(vmid), "config")

    def set_guest_config(self, node: str, kind: GuestKind, vmid: int, **options: Any) -> Any:
        """PUT /nodes/{node}/{qemu|lxc}/{vmid}/config with the given options."""
        return self.put("nodes", node, _kind(kind), check_vmid(vmid), "config", **options)

    def storages(self, node: Optional[str] = None) -> list[dict[str, Any]]:
        """GET /nodes/{node}/storage (status, space) or /storage (cluster config) without a node."""
        return self.get("nodes", node, "storage") if node else self.get("storage")

    def storage_content(self, node: str, storage: str, content: Optional[str] = None,
                        vmid: Optional[int] = None) -> list[dict[str, Any]]:
        """GET /nodes/{node}/storage/{storage}/content (volid, format, size, vmid, ctime...)."""
        return self.get("nodes", node, "storage", storage, "content", content=content,
                        vmid=check_vmid(vmid) if vmid is not None else None)

    def network(self, node: str, type: Optional[str] = None) -> list[dict[str, Any]]:
        """GET /nodes/{node}/network (bridges with ``type=bridge``)."""
        return self.get("nodes", node, "network", type=type)

    def vzdump(self, node: str, vmid: int, storage: str, *, mode: str = "snapshot",
               compress: Optional[str] = None, **options: Any) -> str:
        """POST /nodes/{node}/vzdump; returns the UPID to follow with ``wait_task``."""
        return self.post("nodes", node, "vzdump", vmid=str(check_vmid(vmid)), storage=storage,
                         mode=mode, compress=compress, **options)

    def create_guest(self, node: str, kind: GuestKind, vmid: int, **options: Any) -> str:
        """POST /nodes/{node}/{qemu|lxc}: create (or, with ``archive``, restore) a guest; UPID."""
        return self.post("nodes", node, _kind(kind), vmid=check_vmid(vmid), **options)

    def restore(self, node: str, kind: GuestKind, vmid: int, archive: str, storage: str,
                *, force: bool = False, **options: Any) -> str:
        """Restore a backup volume (``pbs:backup/vm/100/...`` or a vzdump file) as ``vmid``; UPID."""
        key = "ostemplate" if kind == "lxc" else "archive"
        extra = {"restore": 1} if kind == "lxc" else {}
        return self.create_guest(node, kind, vmid, storage=storage, force=int(force) if force else None,
                                 **{key: archive}, **extra, **options)

    def extract_config(self, node: str, volume: str) -> str:
        """GET /nodes/{node}/vzdump/extractconfig: the guest config a backup holds, as text."""
        return self.get("nodes", node, "vzdump", "extractconfig", volume=volume)

    def storage_config(self, storage: str) -> dict[str, Any]:
        """GET /storage/{storage}: the storage's storage.cfg section (type, server, datastore...)."""
        return self.get("storage", storage)

    def destroy_guest(self, node: str, kind: GuestKind, vmid: int, *, purge: bool = False) -> str:
        """DELETE /nodes/{node}/{qemu|lxc}/{vmid}: destroy the guest and its disks; UPID."""
        return self.delete("nodes", node, _kind(kind), check_vmid(vmid),
                           purge=1 if purge else None)

    def snapshots(self, node: str, kind: GuestKind, vmid: int) -> list[dict[str, Any]]:
        """GET .../snapshot: ``[{"name": ..., "snaptime": ..., "parent": ...}, {"name": "current"}]``."""
        return self.get("nodes", node, _kind(kind), check_vmid(vmid), "snapshot")

    def create_snapshot(self, node: str, kind: GuestKind, vmid: int, name: str,
                        description: Optional[str] = None, vmstate: bool = False) -> str:
        """POST .../snapshot; returns the UPID."""
        extra = {"vmstate": 1} if vmstate and kind == "qemu" else {}
        return self.post("nodes", node, _kind(kind), check_vmid(vmid), "snapshot", snapname=name,
                         description=description, **extra)

    def delete_snapshot(self, node: str, kind: GuestKind, vmid: int, name: str) -> str:
        """DELETE .../snapshot/{name}; returns the UPID."""
        return self.delete("nodes", node, _kind(kind), check_vmid(vmid), "snapshot", name)

    def rollback_snapshot(self, node: str, kind: GuestKind, vmid: int, name: str) -> str:
        """POST .../snapshot/{name}/rollback; returns the UPID."""
        return self.post("nodes", node, _kind(kind), check_vmid(vmid), "snapshot", name, "rollback")

    def guest_status(self, node: str, kind: GuestKind, vmid: int) -> dict[str, Any]:
        """GET .../status/current."""
        return self.get("nodes", node, _kind(kind), check_vmid(vmid), "status", "current")

    def set_guest_power(self, node: str, kind: GuestKind, vmid: int,
                        action: Literal["start", "stop", "shutdown", "reboot"]) -> str:
        """POST .../status/{action}; returns the UPID."""
        return self.post("nodes", node, _kind(kind), check_vmid(vmid), "status", action)

    def migrate(self, node: str, kind: GuestKind, vmid: int, target: str, **options: Any) -> str:
        """POST .../migrate to another node of the cluster; returns the UPID."""
        return self.post("nodes", node, _kind(kind), check_vmid(vmid), "migrate", target=target, **options)

    def tasks(self, node: str, **filters: Any) -> list[dict[str, Any]]:
        """GET /nodes/{node}/tasks (recent tasks; filters as PVE: vmid, typefilter, limit...)."""
        return self.get("nodes", node, "tasks", **filters)

    def remote_migrate(self, node: str, kind: GuestKind, vmid: int, *, endpoint: str,
                       target_storage: str, target_bridge: str, **options: Any) -> str:
        """POST .../remote_migrate to another cluster; returns the UPID. ``endpoint`` (PVE's
        proxmox-remote string) holds the target's API token: never log it."""
        return self.post("nodes", node, _kind(kind), check_vmid(vmid), "remote_migrate",
                         **{"target-endpoint": endpoint, "target-storage": target_storage,
                            "target-bridge": target_bridge}, **options)

    def cluster_status(self) -> list[dict[str, Any]]:
        """GET /cluster/status: the cluster (when there is one) and its nodes."""
        return self.get("cluster", "status")

    def cpu_models(self, node: str) -> list[dict[str, Any]]:
        """GET /nodes/{node}/capabilities/qemu/cpu: the CPU models VMs on ``node`` may use."""
        return self.get("nodes", node, "capabilities", "qemu", "cpu")

    def current_config(self, node: str, kind: GuestKind, vmid: int) -> dict[str, Any]:
        """GET .../config?current=1: the running config without pending changes, and its
        digest."""
        return self.get("nodes", node, _kind(kind), check_vmid(vmid), "config", current=1)


def _kind(kind: str) -> str:
    if kind not in ("qemu", "lxc"):
        raise InputError(f"guest kind {kind!r} must be qemu or lxc")
    return kind
