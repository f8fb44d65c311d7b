"""Send one message to named Apprise targets and say, per target, whether it went out.

Apprise does the talking (SMTP, HTTP webhooks, chat services...): DAPX has no SMTP or HTTP
client of its own. Each target is sent on its own so one refusal does not hide the others.

Apprise URLs hold passwords and tokens, and Apprise's own log lines can quote parts of them
(a failed request's URL with its query string). So Apprise's logger does not propagate to the
application's handlers; while we send, its lines are captured, every piece of the URL is
scrubbed out of them, and the last useful line becomes the reason a target failed.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from io import StringIO

from dapx.core.notify import scrub, secret_parts, url_scheme
from dapx.errors import InputError

_APPRISE_LOGGER = "apprise"
_SEND_LOCK = threading.Lock()
"""One send at a time per process: the capture handler sits on Apprise's shared logger."""


@dataclass(frozen=True)
class Delivery:
    """What happened to one target."""

    target: str
    sent: bool
    reason: str = ""
    """Why it was not sent (scrubbed of the URL's secrets); "" when it was."""


def _apprise():  # noqa: ANN202 - the apprise module, imported late (it loads ~100 plugins)
    import apprise

    logging.getLogger(_APPRISE_LOGGER).propagate = False
    return apprise


def check_url(url: str) -> str:
    """The scheme of ``url`` when Apprise can send to it; InputError (naming the scheme, never
    the URL) otherwise."""
    apprise = _apprise()
    scheme = url_scheme(url)
    if not scheme:
        raise InputError("the target is not a URL (expected e.g. mailtos://user:pass@host, "
                         "json://host/path)")
    if apprise.Apprise.instantiate(url) is None:
        raise InputError(f"Apprise cannot use this {scheme}:// URL (unknown service, or a "
                         "part of it is malformed); see the Apprise documentation for "
                         f"{scheme}://")
    return scheme


def deliver(targets: dict[str, str], title: str, body: str) -> list[Delivery]:
    """Send ``title``/``body`` to every target (name -> Apprise URL); never raises.

    Out: one Delivery per target, in the given order."""
    return [_deliver_one(name, url, title, body) for name, url in targets.items()]


def _deliver_one(name: str, url: str, title: str, body: str) -> Delivery:
    apprise = _apprise()
    secrets = secret_parts(url)
    server = apprise.Apprise.instantiate(url)
    if server is None:
        return Delivery(name, False, f"Apprise cannot use this {url_scheme(url)}:// URL")
    with _SEND_LOCK:
        buffer, handler = StringIO(), logging.StreamHandler()
        handler.setStream(buffer)
        handler.setLevel(logging.DEBUG)
        logger = logging.getLogger(_APPRISE_LOGGER)
        level = logger.level
        logger.addHandler(handler)
        logger.setLevel(logging.DEBUG)
        try:
            # Our text is plain text: said so, Apprise keeps its lines in the mail's text
            # part and escapes it (line breaks kept) for the HTML part.
            sent = bool(server.notify(body=body, title=title,
                                      body_format=apprise.NotifyFormat.TEXT))
        except Exception as exc:  # a plugin bug must not escape into a flow's hook
            sent = False
            buffer.write(f"{type(exc).__name__}: {exc}\n")
        finally:
            logger.removeHandler(handler)
            logger.setLevel(level)
    if sent:
        return Delivery(name, True)
    return Delivery(name, False, scrub(_reason(buffer.getvalue()), secrets))


def _reason(log_text: str) -> str:
    """The most telling lines Apprise logged about a failure: the low-level exception (which
    says "Connection refused", "certificate verify failed", "535 Authentication failed")
    and the last warning."""
    lines = [ln.strip() for ln in log_text.splitlines() if ln.strip()]
    telling = [ln for ln in lines if "Exception" in ln or "error" in ln.lower()
               or "failed" in ln.lower() or "refused" in ln.lower()]
    chosen = list(dict.fromkeys(telling[-2:])) or lines[-1:]
    return " / ".join(chosen)[:500] or "Apprise reported a failure without a reason"
