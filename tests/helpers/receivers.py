"""Real notification receivers on loopback for tests: an SMTP server (aiosmtpd) that demands
TLS (STARTTLS, 587-style, or implicit TLS, 465-style) and a login, and an HTTP server that
records webhook requests. Both bind 127.0.0.1 on a free port and keep what they received.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import socket
import ssl
import threading
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def self_signed_cert(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and localhost: (cert.pem, key.pem)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "dapx test receiver")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


@dataclass
class Mail:
    """One message the SMTP receiver accepted."""

    mail_from: str
    rcpt_tos: list[str]
    message: EmailMessage
    login: str
    tls: bool

    @property
    def subject(self) -> str:
        return str(self.message["Subject"])

    @property
    def text(self) -> str:
        """The text part, with the wire's CRLF line ends as \n."""
        part = self.message.get_body(("plain", "html"))
        return part.get_content().replace("\r\n", "\n") if part is not None else ""


SMTP_PASSWORD = "s3cret-Mail-Pass"

IMPLICIT_TLS_WARNING = "ignore:Requiring AUTH while not requiring TLS"
"""For ``pytest.mark.filterwarnings``: aiosmtpd warns on every implicit-TLS session that AUTH
does not require TLS; the socket is TLS from its first byte there, which it cannot see."""


class SmtpReceiver:
    """aiosmtpd on 127.0.0.1 requiring a TLS session and the login ``user``/``password``.

    ``implicit_tls``: TLS from the first byte (465-style); otherwise STARTTLS is required
    before AUTH (587-style)."""

    def __init__(self, directory: Path, *, implicit_tls: bool, user: str = "dapx",
                 password: str = SMTP_PASSWORD) -> None:
        self.cert, self.key = self_signed_cert(directory)
        self.user, self.password = user, password
        self.implicit_tls = implicit_tls
        self.port = free_port()
        self.mails: list[Mail] = []
        self.refused_logins = 0
        self._lock = threading.Lock()
        self._controller = None

    def __enter__(self) -> "SmtpReceiver":
        from aiosmtpd.controller import Controller
        from aiosmtpd.smtp import AuthResult, LoginPassword

        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.cert, self.key)
        receiver = self

        def authenticate(server, session, envelope, mechanism, auth_data):  # noqa: ANN001
            ok = (isinstance(auth_data, LoginPassword)
                  and auth_data.login.decode() == receiver.user
                  and auth_data.password.decode() == receiver.password)
            if not ok:
                with receiver._lock:
                    receiver.refused_logins += 1
            # handled=False: aiosmtpd answers 535 itself; auth_data: the session keeps it
            return AuthResult(success=ok, handled=False, auth_data=auth_data)

        class Handler:
            async def handle_DATA(self, server, session, envelope):  # noqa: ANN001, N802
                mail = Mail(envelope.mail_from, list(envelope.rcpt_tos),
                            message_from_bytes(envelope.original_content or envelope.content,
                                               policy=policy.default),
                            session.auth_data.login.decode()
                            if isinstance(session.auth_data, LoginPassword) else "",
                            server.transport.get_extra_info("ssl_object") is not None)
                with receiver._lock:
                    receiver.mails.append(mail)
                return "250 OK"

        # With implicit TLS aiosmtpd cannot tell the session is encrypted, so it would never
        # offer AUTH if told to require TLS for it; the socket itself is TLS there.
        options = dict(authenticator=authenticate, auth_required=True,
                       auth_require_tls=not self.implicit_tls)
        if self.implicit_tls:
            self._controller = Controller(Handler(), hostname="127.0.0.1", port=self.port,
                                          ssl_context=context, **options)
        else:
            self._controller = Controller(Handler(), hostname="127.0.0.1", port=self.port,
                                          tls_context=context, require_starttls=True,
                                          **options)
        self._controller.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._controller.stop()

    def url(self, *, password: str | None = None, to: str | None = "ops@example.com",
            verify: bool = False) -> str:
        """The Apprise URL of this server: ``mailtos://`` with the login, STARTTLS or
        ``mode=ssl``, ``verify=no`` for the self-signed certificate unless ``verify``."""
        mode = "ssl" if self.implicit_tls else "starttls"
        url = (f"mailtos://{self.user}:{password or self.password}@127.0.0.1:{self.port}"
               f"?mode={mode}&from=dapx@example.com")
        if to:
            url += f"&to={to}"
        return url + ("" if verify else "&verify=no")

    def wait_for(self, count: int, timeout: float = 10.0) -> list[Mail]:
        """The messages once at least ``count`` arrived (AssertionError after ``timeout``)."""
        return _wait(lambda: self.mails, count, timeout, "mails")


@dataclass
class Request:
    """One request the HTTP receiver got."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> dict:
        return json.loads(self.body)


@dataclass
class HttpReceiver:
    """A webhook endpoint on 127.0.0.1 answering ``status`` to every POST and recording it."""

    status: int = 200
    requests: list[Request] = field(default_factory=list)

    def __enter__(self) -> "HttpReceiver":
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                receiver.requests.append(Request("POST", self.path, dict(self.headers), body))
                self.send_response(receiver.status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def wait_for(self, count: int, timeout: float = 10.0) -> list[Request]:
        return _wait(lambda: self.requests, count, timeout, "webhook requests")


def _wait(items, count: int, timeout: float, what: str):  # noqa: ANN001, ANN202
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if len(items()) >= count:
            return list(items())
        time.sleep(0.05)
    raise AssertionError(f"expected {count} {what}, got {len(items())} in {timeout} s")

