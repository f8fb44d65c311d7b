"""The ``ProxmoxNode`` block: how DAPX reaches one Proxmox VE or Backup Server node.

One block document per node, named after the node. It holds the SSH login (user, private key,
pinned host key) and the API login (token id and secret, pinned TLS fingerprint). Secrets are
``SecretStr``: Prefect stores them encrypted and shows them obfuscated; ``repr``/``model_dump``
never show them. Every field is validated here, so nothing unchecked reaches a command line.

The orchestrator's own SSH key (created by ``dapx init``) lives in Prefect's built-in ``Secret``
block named ``dapx-orchestrator-key``; a node whose ``ssh_private_key`` is empty uses it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from typing import TYPE_CHECKING, Literal, Optional

from prefect.blocks.core import Block
from pydantic import ConfigDict, Field, SecretStr, field_validator, model_validator

from dapx.core import validate as core_validate
from dapx.errors import InputError

if TYPE_CHECKING:
    from dapx.transports.pbs import PbsClient
    from dapx.transports.pve import PveClient
    from dapx.transports.ssh import NodeSession

ORCHESTRATOR_KEY_BLOCK = "dapx-orchestrator-key"
"""Name of the Prefect ``Secret`` block holding the orchestrator's private SSH key."""

DEFAULT_API_PORTS = {"pve": 8006, "pbs": 8007}

_UNIX_USER = re.compile(r"[a-z_][a-z0-9_.-]{0,31}")
_TOKEN_ID = re.compile(r"[A-Za-z0-9_.-]+@[A-Za-z0-9_.-]+![A-Za-z0-9_.-]+")
_HOST_KEY_TYPES = ("ssh-ed25519", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384",
                   "ecdsa-sha2-nistp521", "ssh-rsa")
_TOKEN_SECRET = re.compile(r"[\x21-\x7e]{1,512}")
_FINGERPRINT = re.compile(r"[0-9A-F]{2}(?::[0-9A-F]{2}){31}")


def normalize_host_key(line: str) -> str:
    """``"ssh-ed25519 AAAA... comment"`` -> ``"ssh-ed25519 AAAA..."``; raises ValueError if malformed."""
    parts = line.strip().split()
    if len(parts) < 2 or parts[0] not in _HOST_KEY_TYPES:
        raise ValueError(
            f"host key must be an OpenSSH public key line starting with one of {', '.join(_HOST_KEY_TYPES)}")
    try:
        blob = base64.b64decode(parts[1], validate=True)
    except binascii.Error:
        raise ValueError("host key is not valid base64") from None
    if not blob.startswith(len(parts[0]).to_bytes(4, "big") + parts[0].encode()):
        raise ValueError(f"host key data does not match its type {parts[0]}")
    return f"{parts[0]} {parts[1]}"


def host_key_fingerprint(line: str) -> str:
    """OpenSSH-style ``SHA256:...`` fingerprint of a public key line (as ``ssh-keygen -l`` prints)."""
    blob = base64.b64decode(normalize_host_key(line).split()[1])
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


def normalize_fingerprint(value: str) -> str:
    """Accept ``aa:bb:..`` or bare hex (sha256) and return upper-case colon hex; ValueError if not sha256."""
    hexdigits = value.strip().replace(":", "").upper()
    pretty = ":".join(hexdigits[i:i + 2] for i in range(0, len(hexdigits), 2))
    if not _FINGERPRINT.fullmatch(pretty):
        raise ValueError("TLS fingerprint must be a SHA-256 digest: 32 hex bytes separated by colons")
    return pretty


def validate_host(value: str) -> str:
    """A hostname or IPv4 address with nothing a shell could misread (``dapx.core.validate``);
    ValueError otherwise, as pydantic expects."""
    try:
        return core_validate.validate_host(value.strip())
    except InputError as exc:
        raise ValueError(str(exc)) from None


class ProxmoxNode(Block):
    """A Proxmox VE or Proxmox Backup Server node that DAPX manages over SSH and its HTTPS API.

    The block document's name is the node's name. Keys and the API token secret are stored as
    secrets. The SSH host key and TLS fingerprint are recorded by the first successful node test
    and enforced afterwards.
    """

    # A refused value may be a secret: validation errors never quote the input.
    model_config = ConfigDict(hide_input_in_errors=True)

    _block_type_name = "Proxmox Node"
    _block_type_slug = "proxmox-node"
    _logo_url = ("https://raw.githubusercontent.com/PrefectHQ/prefect/"
                 "420d0d6a78bb6df1fc18bcf188fdad43c1d22ea9/assets/block-logos/process.png")
    _documentation_url = "https://pve.proxmox.com/wiki/Proxmox_VE_API#API_Tokens"
    _description = ("A Proxmox VE or Backup Server node managed by DAPX: SSH login with a pinned host "
                    "key, and an API token with a pinned TLS fingerprint.")
    _code_example = '''
    from dapx.blocks import ProxmoxNode

    proxmox_node = ProxmoxNode.load("BLOCK_NAME")
    async with proxmox_node.ssh() as session:
        print((await session.run(["pveversion"])).stdout)
    print(proxmox_node.api().version())
    '''

    name: str = Field(
        default=...,
        description="Node name as Proxmox knows it (lower case, digits, dashes); also the block's name.",
        examples=["pve1"],
    )
    host: str = Field(
        default=...,
        description="Host name or IPv4 address DAPX connects to.",
        examples=["198.18.213.11", "pve1.example.net"],
    )
    ssh_port: int = Field(
        default=22, ge=1, le=65535,
        description="TCP port of the node's SSH server.",
        examples=[22],
    )
    ssh_user: str = Field(
        default="root",
        description="User DAPX logs in as over SSH.",
        examples=["root"],
    )
    ssh_private_key: Optional[SecretStr] = Field(
        default=None,
        description=("Unencrypted OpenSSH private key (PEM text) authorised for the SSH user; leave empty to "
                     f"use the orchestrator's own key from the Secret block {ORCHESTRATOR_KEY_BLOCK}."),
        examples=["-----BEGIN OPENSSH PRIVATE KEY-----\n...\n-----END OPENSSH PRIVATE KEY-----"],
    )
    ssh_host_key: Optional[str] = Field(
        default=None,
        description=("The node's pinned SSH host public key; recorded by the first node test and enforced "
                     "afterwards (clear it to record a new one)."),
        examples=["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB5h8wUGeC8VsV7yQ1m2fsi2J5Ylh9TSK2G7QeN6Yb8u"],
    )
    kind: Literal["pve", "pbs"] = Field(
        default="pve",
        description="pve for a Proxmox VE node, pbs for a Proxmox Backup Server.",
        examples=["pve"],
    )
    storage_kind: Literal["zfs", "btrfs", "other"] = Field(
        default="zfs",
        description="Main guest storage of the node: zfs, btrfs or other (directory, LVM, Ceph).",
        examples=["zfs"],
    )
    api_token_id: Optional[str] = Field(
        default=None,
        description="API token id as user@realm!tokenname.",
        examples=["root@pam!dapx"],
    )
    api_token_secret: Optional[SecretStr] = Field(
        default=None,
        description="Secret (UUID) of the API token.",
        examples=["0b3c9a4e-6f1d-4c1e-9b7a-3f1f2d5e8a90"],
    )
    tls_fingerprint: Optional[str] = Field(
        default=None,
        description=("SHA-256 fingerprint of the API's TLS certificate, colon hex; recorded by the first "
                     "node test and enforced afterwards."),
        examples=["AB:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:67:89"],
    )
    api_port: Optional[int] = Field(
        default=None, ge=1, le=65535,
        description="TCP port of the HTTPS API; empty means 8006 for pve and 8007 for pbs.",
        examples=[8006],
    )

    @field_validator("name")
    @classmethod
    def _check_name(cls, value: str) -> str:
        try:
            return core_validate.validate_node_name(value)
        except InputError as exc:
            raise ValueError(str(exc)) from None

    @field_validator("host")
    @classmethod
    def _check_host(cls, value: str) -> str:
        return validate_host(value)

    @field_validator("ssh_user")
    @classmethod
    def _check_user(cls, value: str) -> str:
        if not _UNIX_USER.fullmatch(value):
            raise ValueError(f"SSH user {value!r} must be a Unix user name (lower case, digits, _ . -)")
        return value

    @field_validator("ssh_host_key")
    @classmethod
    def _check_host_key(cls, value: Optional[str]) -> Optional[str]:
        return normalize_host_key(value) if value and value.strip() else None

    @field_validator("api_token_id")
    @classmethod
    def _check_token_id(cls, value: Optional[str]) -> Optional[str]:
        if value and not _TOKEN_ID.fullmatch(value):
            raise ValueError(f"API token id {value!r} must look like user@realm!tokenname")
        return value or None

    @field_validator("api_token_secret")
    @classmethod
    def _check_token_secret(cls, value: Optional[SecretStr]) -> Optional[SecretStr]:
        # Goes into an HTTP header: a space, control character or non-ASCII letter would make
        # the HTTP stack raise an error quoting the header. The message never shows the value.
        if value is None or not value.get_secret_value().strip():
            return None
        if not _TOKEN_SECRET.fullmatch(value.get_secret_value()):
            raise ValueError("API token secret must be printable ASCII without spaces or line "
                             "breaks (PVE and PBS secrets are UUIDs)")
        return value

    @field_validator("tls_fingerprint")
    @classmethod
    def _check_fingerprint(cls, value: Optional[str]) -> Optional[str]:
        return normalize_fingerprint(value) if value and value.strip() else None

    @model_validator(mode="after")
    def _default_api_port(self) -> "ProxmoxNode":
        if self.api_port is None:
            self.api_port = DEFAULT_API_PORTS[self.kind]
        return self

    @property
    def ssh_host_key_fingerprint(self) -> Optional[str]:
        """``SHA256:...`` of the pinned host key, or None when none is pinned yet."""
        return host_key_fingerprint(self.ssh_host_key) if self.ssh_host_key else None

    def ssh(self, *, record: bool = False, connect_timeout: float = 15.0) -> "NodeSession":
        """An unconnected SSH session to this node; use ``async with node.ssh() as session``.

        ``record=True`` (only for the node test) accepts an unknown host key when none is pinned;
        the session's ``host_key`` is then the key to save into this block.
        """
        from dapx.transports.ssh import NodeSession

        return NodeSession(self, record=record, connect_timeout=connect_timeout)

    async def ssh_client_key(self) -> tuple[str, str]:
        """(private key PEM, where it came from): the block's own key, else the orchestrator's
        Secret block. Raises InputError when neither exists."""
        secret = self.ssh_private_key
        if secret is not None and secret.get_secret_value().strip():
            return secret.get_secret_value(), f"ssh_private_key of node {self.name}"
        from prefect.blocks.system import Secret

        try:
            pem = str((await Secret.aload(ORCHESTRATOR_KEY_BLOCK)).get())
        except ValueError:
            raise InputError(f"node {self.name} has no SSH private key and the Secret block "
                             f"{ORCHESTRATOR_KEY_BLOCK} does not exist: run `dapx init`") from None
        return pem, f"Secret block {ORCHESTRATOR_KEY_BLOCK}"

    def api(self, *, timeout: float = 30.0) -> "PveClient | PbsClient":
        """A client for this node's API (PVE or PBS by ``kind``); raises TLSFingerprintError if no
        fingerprint is pinned yet (the node test records it first)."""
        if self.kind == "pbs":
            from dapx.transports.pbs import PbsClient

            return PbsClient.from_node(self, timeout=timeout)
        from dapx.transports.pve import PveClient

        return PveClient.from_node(self, timeout=timeout)

    def require_kind(self, kind: str) -> "ProxmoxNode":
        """This block, when it is a ``kind`` node; else InputError naming it, before any
        connection (a PBS server given as a guest's node, a PVE node as a PBS server)."""
        if self.kind == kind:
            return self
        if kind == "pve":
            raise InputError(f"node {self.name} is a Proxmox Backup Server, not a PVE node: "
                             "name a PVE node here (a PBS server is reached through a PVE "
                             "node's pbs storage)")
        raise InputError(f"node {self.name} is a {self.kind} node, not a Proxmox Backup Server")

    def pve_api(self, *, timeout: float = 30.0) -> "PveClient":
        """``api()`` where a PVE node is meant (``require_kind``)."""
        return self.require_kind("pve").api(timeout=timeout)  # type: ignore[return-value]

    def pbs_api(self, *, timeout: float = 30.0) -> "PbsClient":
        """``api()`` where a PBS server is meant (``require_kind``)."""
        return self.require_kind("pbs").api(timeout=timeout)  # type: ignore[return-value]
