"""TLS certificate fingerprints from PEM text (pure).

The node test reads the node's own certificate file over the pinned SSH session and compares
its fingerprint with the certificate the API presents, so a first API contact cannot be
answered by something else (``dapx.flows.nodes``).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re

_PEM_CERT = re.compile(r"-----BEGIN CERTIFICATE-----\s*([A-Za-z0-9+/=\s]+?)\s*"
                       r"-----END CERTIFICATE-----")

PVE_CERT_FILES = ("/etc/pve/local/pveproxy-ssl.pem", "/etc/pve/local/pve-ssl.pem")
"""Where pveproxy finds its certificate: a custom or ACME one first, else the cluster-signed
node certificate (as pveproxy itself chooses)."""
PBS_CERT_FILES = ("/etc/proxmox-backup/proxy.pem",)
"""The certificate proxmox-backup-proxy serves."""


def der_fingerprint(der: bytes) -> str:
    """SHA-256 of a DER certificate as upper-case colon hex (as ``pvenode cert info`` shows)."""
    digest = hashlib.sha256(der).hexdigest().upper()
    return ":".join(digest[i:i + 2] for i in range(0, len(digest), 2))


def pem_leaf_fingerprint(pem: str) -> str | None:
    """Fingerprint of the first certificate in ``pem`` (the server's own; a chain follows it),
    or None when the text holds no certificate."""
    match = _PEM_CERT.search(pem)
    if match is None:
        return None
    try:
        der = base64.b64decode("".join(match[1].split()), validate=True)
    except binascii.Error:
        return None
    return der_fingerprint(der) if der else None


def cert_files(kind: str) -> tuple[str, ...]:
    """The certificate files of a ``pve`` or ``pbs`` node, in the order its proxy picks them."""
    return PBS_CERT_FILES if kind == "pbs" else PVE_CERT_FILES
