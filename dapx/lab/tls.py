"""Self-signed TLS certificates for the nodes' API simulators, and their fingerprints."""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from dapx.lab.common import NodeSpec, keys_dir, write_file


def cert_paths(node: NodeSpec) -> tuple[Path, Path]:
    return keys_dir(node.name) / "tls.pem", keys_dir(node.name) / "tls.key"


def ensure_cert(node: NodeSpec) -> None:
    """Create the node's RSA-2048 self-signed cert (CN and SANs: name, address) once."""
    pem, key_path = cert_paths(node)
    if pem.exists() and key_path.exists():
        return
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{node.name}.lab"),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, "DAPX lab")])
    now = datetime.datetime.now(datetime.timezone.utc)
    san = x509.SubjectAlternativeName([
        x509.DNSName(node.name), x509.DNSName(f"{node.name}.lab"), x509.DNSName("localhost"),
        x509.IPAddress(ipaddress.ip_address(node.address)),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=3650))
            .add_extension(san, critical=False)
            .sign(key, hashes.SHA256()))
    write_file(key_path, key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.TraditionalOpenSSL,
                                           serialization.NoEncryption()), 0o600)
    write_file(pem, cert.public_bytes(serialization.Encoding.PEM))


def fingerprint_of_der(der: bytes) -> str:
    """sha256 of a DER certificate as colon-separated upper-case hex (PVE's style)."""
    digest = hashlib.sha256(der).hexdigest().upper()
    return ":".join(digest[i:i + 2] for i in range(0, len(digest), 2))


def fingerprint(node: NodeSpec) -> str:
    """Fingerprint of the node's certificate file."""
    cert = x509.load_pem_x509_certificate(cert_paths(node)[0].read_bytes())
    return fingerprint_of_der(cert.public_bytes(serialization.Encoding.DER))
