"""Notifications through Apprise to real receivers on loopback (A1, A2): an SMTP server that
demands TLS and a login (STARTTLS on a 587-style port, implicit TLS on a 465-style one, with a
self-signed certificate made here) and an HTTP webhook endpoint. Each test checks what the
receiving side got (subject, body, recipient, login, TLS, headers) and that no secret from a
target's URL appears in a reason, a log line or a block's public form.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import pytest
from prefect.types import SecretDict

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # for tests.helpers
from tests.helpers.receivers import (IMPLICIT_TLS_WARNING, HttpReceiver,  # noqa: E402
                                     SmtpReceiver, free_port)

from dapx.blocks.notifications import Notifications  # noqa: E402
from dapx.transports.notify import check_url, deliver  # noqa: E402
from dapx.errors import InputError  # noqa: E402

pytestmark = pytest.mark.filterwarnings(IMPLICIT_TLS_WARNING)

TOKEN = "tok-7Hq2Lx9Vb4"
BODY = "Job: zfs-replica/vm100-to-pve3\nOutcome: Failed\n"


@pytest.fixture
def starttls(tmp_path):
    with SmtpReceiver(tmp_path, implicit_tls=False) as server:
        yield server


@pytest.fixture
def implicit_tls(tmp_path):
    with SmtpReceiver(tmp_path, implicit_tls=True) as server:
        yield server


@pytest.fixture
def root_log():
    """Everything logged through the root logger (where an application's handlers sit) at
    DEBUG, as text."""
    import io

    stream, root = io.StringIO(), logging.getLogger()
    handler, level = logging.StreamHandler(stream), root.level
    handler.setLevel(logging.DEBUG)
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    yield stream
    root.removeHandler(handler)
    root.setLevel(level)


@pytest.fixture
def webhook():
    with HttpReceiver() as server:
        yield server


def _assert_mail(server: SmtpReceiver, subject: str, to: str = "ops@example.com") -> None:
    (mail,) = server.wait_for(1)
    assert mail.subject == subject
    assert mail.text.strip() == BODY.strip()  # plain text, its lines kept
    assert mail.rcpt_tos == [to] and mail.mail_from == "dapx@example.com"
    assert mail.login == server.user and mail.tls


def test_mail_over_starttls_with_login(starttls: SmtpReceiver) -> None:
    (result,) = deliver({"mail": starttls.url()}, "[dapx] FAILED job", BODY)
    assert result.sent, result.reason
    _assert_mail(starttls, "[dapx] FAILED job")


def test_mail_over_implicit_tls_with_login(implicit_tls: SmtpReceiver) -> None:
    (result,) = deliver({"mail": implicit_tls.url()}, "[dapx] FAILED job", BODY)
    assert result.sent, result.reason
    _assert_mail(implicit_tls, "[dapx] FAILED job")


def test_certificate_is_checked_unless_the_url_says_verify_no(
        starttls: SmtpReceiver, monkeypatch: pytest.MonkeyPatch) -> None:
    (refused,) = deliver({"mail": starttls.url(verify=True)}, "s", BODY)
    assert not refused.sent and "certificate verify failed" in refused.reason
    # Trusting the receiver's certificate (as a private CA would be) works with checks on.
    monkeypatch.setenv("SSL_CERT_FILE", str(starttls.cert))
    (trusted,) = deliver({"mail": starttls.url(verify=True)}, "[dapx] trusted", BODY)
    assert trusted.sent, trusted.reason
    _assert_mail(starttls, "[dapx] trusted")


def test_wrong_password_is_reported_without_the_password(
        starttls: SmtpReceiver, root_log) -> None:  # noqa: ANN001
    wrong = "Wr0ng-Passw0rd-Zz"
    (result,) = deliver({"mail": starttls.url(password=wrong)}, "s", BODY)
    assert not result.sent and "535" in result.reason
    assert starttls.refused_logins >= 1 and not starttls.mails
    assert wrong not in result.reason and wrong not in root_log.getvalue()


def test_webhook_gets_the_json_body_and_custom_headers(webhook: HttpReceiver) -> None:
    url = (f"json://127.0.0.1:{webhook.port}/dapx/hook?+X-Dapx-Token={TOKEN}"
           "&+Authorization=Bearer%20abc-123-def")
    (result,) = deliver({"hook": url}, "[dapx] FAILED job", BODY)
    assert result.sent, result.reason
    (request,) = webhook.wait_for(1)
    assert request.path == "/dapx/hook"
    assert request.headers["X-Dapx-Token"] == TOKEN
    assert request.headers["Authorization"] == "Bearer abc-123-def"
    assert request.headers["Content-Type"] == "application/json"
    payload = request.json()
    assert payload["title"] == "[dapx] FAILED job"
    assert payload["message"].strip() == BODY.strip()


def test_a_refusing_target_does_not_stop_the_others(
        webhook: HttpReceiver, root_log) -> None:  # noqa: ANN001
    closed = f"json://127.0.0.1:{free_port()}/hook?-token={TOKEN}"
    results = deliver({"down": closed, "up": f"json://127.0.0.1:{webhook.port}/x"}, "t", BODY)
    assert [(r.target, r.sent) for r in results] == [("down", False), ("up", True)]
    assert "Connection refused" in results[0].reason
    # Apprise logs the failed request's URL with its query string; none of it may leak.
    assert TOKEN not in results[0].reason and TOKEN not in root_log.getvalue()
    webhook.wait_for(1)
    server_error = HttpReceiver(status=500)
    with server_error:
        (failed,) = deliver({"h": f"json://127.0.0.1:{server_error.port}/x"}, "t", BODY)
    assert not failed.sent and "500" in failed.reason


def test_unknown_or_malformed_urls_are_refused_without_echoing_them() -> None:
    for url, expected in (("no-scheme-secret-123", "not a URL"),
                          ("nosuchservice://user:pw-secret-123@host", "nosuchservice://")):
        with pytest.raises(InputError, match=expected) as err:
            check_url(url)
        assert "secret-123" not in str(err.value)
    assert check_url("mailtos://u:p@example.com:465?mode=ssl") == "mailtos"


def test_block_keeps_urls_secret_and_fills_in_the_default_recipient(
        starttls: SmtpReceiver) -> None:
    block = Notifications(targets=SecretDict({"mail": starttls.url(to=None)}),
                          default_recipient="oncall@example.com")
    assert starttls.password not in repr(block)
    assert starttls.password not in block.model_dump_json()
    (result,) = block.send("[dapx] to the default recipient", BODY)
    assert result.sent, result.reason
    _assert_mail(starttls, "[dapx] to the default recipient", to="oncall@example.com")


@pytest.mark.parametrize("fields, message", [
    ({"targets": SecretDict({"Bad Name": "json://h/x"})}, "target name"),
    ({"targets": SecretDict({"ok": "just text"})}, "not an Apprise URL"),
    ({"default_recipient": "not-an-address"}, "e-mail address"),
    ({"summary_time": "25:00"}, "HH:MM"),
    ({"summary_timezone": "Mars/Olympus"}, "time zone"),
])
def test_block_refuses_bad_fields(fields: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Notifications(**fields)
