"""The ``Notifications`` block: where DAPX sends job notifications and the daily summary.

One block document (``default``) holds named targets, each an Apprise URL: e-mail over SMTP
(``mailtos://user:password@smtp.example.com:587?from=dapx@example.com`` STARTTLS, add
``&mode=ssl`` with port 465 for implicit TLS), a JSON webhook with custom headers
(``json://hooks.example.com/dapx?+Authorization=Bearer%20TOKEN``), or anything else Apprise
knows. The URLs are a ``SecretDict``: Prefect stores them encrypted and shows every value
obfuscated in the UI and the API; they never appear in a message, a log or an exception.
The block also holds the default recipient of mail targets that name none, and when the daily
summary goes out (time of day and time zone).

``add_target`` / ``remove_target`` / ``list_targets`` / ``send_test_message`` back
`dapx notify add|remove|list|test`; each raises InputError for a user mistake before it writes.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Optional

from prefect.blocks.core import Block
from prefect.types import SecretDict
from pydantic import Field, ValidationError, field_validator

from dapx.core import notify as core
from dapx.errors import InputError
from dapx.transports.notify import Delivery, check_url, deliver

NOTIFICATIONS_BLOCK = "default"
"""Name of the one ``Notifications`` block document DAPX uses."""


def _as_value_error(check: Any, value: Any) -> Any:
    try:
        return check(value)
    except InputError as exc:
        raise ValueError(str(exc)) from None


class Notifications(Block):
    """Where DAPX sends notifications: named Apprise URLs (secret), the default recipient
    of mail targets, and the time of the daily summary."""

    _block_type_name = "DAPX Notifications"
    _block_type_slug = "dapx-notifications"
    _description = ("Apprise targets (e-mail, webhooks, chat) for DAPX job notifications and "
                    "the daily summary; the URLs are stored as secrets.")

    targets: SecretDict = Field(
        default_factory=lambda: SecretDict({}),
        description="Target name -> Apprise URL, e.g. ops-mail -> mailtos://user:pass@smtp."
        "example.com:587?from=dapx@example.com. Values are secret.",
        examples=[{"ops-mail": "mailtos://user:pass@smtp.example.com:587"}])
    default_recipient: Optional[str] = Field(
        default=None, description="Recipient of mail targets whose URL names none (to=).",
        examples=["ops@example.com"])
    summary_time: str = Field(default="08:00", description="When the daily summary is sent "
                              "(HH:MM, in summary_timezone).", examples=["08:00"])
    summary_timezone: str = Field(default="UTC", description="IANA time zone of summary_time "
                                  "and of the times in the summary.", examples=["Europe/Rome"])

    @field_validator("targets", mode="after")
    @classmethod
    def _check_targets(cls, value: SecretDict) -> SecretDict:
        for name, url in value.get_secret_value().items():
            _as_value_error(core.validate_target_name, name)
            if not isinstance(url, str) or not core.url_scheme(url):
                raise ValueError(f"target {name!r} is not an Apprise URL")
        return value

    @field_validator("default_recipient")
    @classmethod
    def _check_recipient(cls, value: Optional[str]) -> Optional[str]:
        return None if not value else _as_value_error(core.validate_recipient, value)

    @field_validator("summary_time")
    @classmethod
    def _check_time(cls, value: str) -> str:
        return _as_value_error(core.validate_clock, value)

    @field_validator("summary_timezone")
    @classmethod
    def _check_zone(cls, value: str) -> str:
        return _as_value_error(core.validate_timezone, value)

    def urls(self) -> dict[str, str]:
        """Target name -> the URL to send to (the default recipient filled in)."""
        return {name: core.with_recipient(url, self.default_recipient)
                for name, url in sorted(self.targets.get_secret_value().items())}

    def send(self, title: str, body: str, only: str | None = None) -> list[Delivery]:
        """Send to every target (or only the one named ``only``); one Delivery each."""
        urls = self.urls()
        if only is not None:
            urls = {only: urls[only]} if only in urls else {}
        return deliver(urls, title, body)


# -----------------------------------------------------------------------------------------------
# Management (`dapx notify ...`)


def load_notifications() -> Notifications | None:
    """The saved block, or None when none was saved yet."""
    try:
        return Notifications.load(NOTIFICATIONS_BLOCK)
    except ValueError:
        return None


async def aload_notifications() -> Notifications | None:
    """The saved block (from async code), or None when none was saved yet."""
    try:
        return await Notifications.aload(NOTIFICATIONS_BLOCK)
    except ValueError:
        return None


def _read_url(path: str) -> str:
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text()
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror}") from None
    url = text.strip()
    if not url or "\n" in url:
        raise InputError(f"{path} must hold one Apprise URL on one line")
    return url


def _save(block: Notifications) -> None:
    block.save(NOTIFICATIONS_BLOCK, overwrite=True)


def update_settings(*, recipient: str | None = None, summary_time: str | None = None,
                    summary_timezone: str | None = None) -> Notifications:
    """Change the default recipient and/or the summary's time; returns the saved block."""
    block = load_notifications() or Notifications()
    changes = {k: v for k, v in (("default_recipient", recipient),
                                 ("summary_time", summary_time),
                                 ("summary_timezone", summary_timezone)) if v is not None}
    try:
        block = Notifications(**(_fields(block) | changes))
    except ValidationError as exc:
        from dapx.core.types import validation_message

        raise InputError(validation_message(exc)) from None
    _save(block)
    return block


def _fields(block: Notifications) -> dict[str, Any]:
    return {"targets": SecretDict(dict(block.targets.get_secret_value())),
            "default_recipient": block.default_recipient, "summary_time": block.summary_time,
            "summary_timezone": block.summary_timezone}


def add_target(name: str, url_file: str, *, overwrite: bool = False) -> str:
    """Add target ``name`` with the Apprise URL read from ``url_file`` ('-': stdin; never a
    command-line argument, which other users can read in the process list). Returns the
    URL's scheme. InputError for a bad name, an unreadable file, a URL Apprise cannot use, or
    an existing name without ``overwrite``."""
    core.validate_target_name(name)
    url = _read_url(url_file)
    scheme = check_url(url)
    block = load_notifications() or Notifications()
    targets = dict(block.targets.get_secret_value())
    if name in targets and not overwrite:
        raise InputError(f"target {name!r} exists; pass --overwrite to replace it")
    targets[name] = url
    _save(Notifications(**(_fields(block) | {"targets": SecretDict(targets)})))
    return scheme


def remove_target(name: str) -> None:
    """Delete target ``name``; InputError when there is none."""
    block = load_notifications()
    targets = dict(block.targets.get_secret_value()) if block else {}
    if name not in targets:
        raise InputError(f"unknown notification target {name!r} (targets: "
                         f"{', '.join(sorted(targets)) or 'none'})")
    del targets[name]
    _save(Notifications(**(_fields(block) | {"targets": SecretDict(targets)})))


def list_targets() -> list[dict[str, str]]:
    """Every target as name, service (URL scheme) and host: nothing secret."""
    block = load_notifications()
    if block is None:
        return []
    return [{"name": name, "service": core.url_scheme(url), "host": core.url_host(url)}
            for name, url in sorted(block.targets.get_secret_value().items())]


def send_test_message(only: str | None = None) -> list[Delivery]:
    """Send a test message to every target (or ``only``); one Delivery per target.
    InputError when there are no targets or ``only`` is unknown."""
    block = load_notifications()
    names = sorted(block.targets.get_secret_value()) if block else []
    if not names:
        raise InputError("no notification targets; add one with `dapx notify add NAME "
                         "--url-file FILE`")
    if only is not None and only not in names:
        raise InputError(f"unknown notification target {only!r} (targets: {', '.join(names)})")
    return block.send("[dapx] test notification",
                      "This is a test message from DAPX: notifications reach this target.\n",
                      only=only)
