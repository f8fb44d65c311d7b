"""What a job's notification says and when it is sent (A3), as pure functions.

``should_notify`` applies a job's mode to a run's outcome; ``describe_job`` reads what a run
protects (guest, nodes) from its ``job`` parameter; ``run_message`` builds the subject and
body. ``secret_parts`` and ``scrub`` keep Apprise URLs (which hold passwords and tokens) out
of any text we log or show. No I/O here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, Mapping
from urllib.parse import parse_qsl, unquote, urlsplit

from dapx.core.cron import validate_timezone  # noqa: F401 - used here and re-exported
from dapx.core.units import human_bytes
from dapx.errors import InputError

Outcome = Literal["Completed", "Failed", "Crashed"]
NOTIFY_MODES = ("always", "failure", "daily", "never")
DEFAULT_MODE = "failure"
"""A run whose job names no mode is treated like the job models' default."""

_TARGET_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")
_EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}")
_CLOCK = re.compile(r"([01][0-9]|2[0-3]):([0-5][0-9])")
_MAIL_SCHEMES = ("mailto", "mailtos")


def should_notify(mode: str, outcome: str) -> bool:
    """True when a run ending in ``outcome`` sends a message in notify ``mode``.

    ``always``: every finished run; ``failure``: failed and crashed runs; ``daily`` and
    ``never``: none (``daily`` runs appear in the daily summary only). An unknown mode is
    read as ``failure``, so a typo never silences a failure.
    """
    if mode not in NOTIFY_MODES:
        mode = DEFAULT_MODE
    if mode == "always":
        return outcome in ("Completed", "Failed", "Crashed")
    return mode == "failure" and outcome in ("Failed", "Crashed")


def job_mode(parameters: Mapping[str, Any]) -> str:
    """The notify mode in a flow run's parameters: ``job.notify``, else a top-level
    ``notify``, else the default (``failure``)."""
    job = _as_dict(parameters.get("job"))
    mode = job.get("notify", parameters.get("notify"))
    return mode if isinstance(mode, str) else DEFAULT_MODE


def _as_dict(value: Any) -> dict[str, Any]:
    if isinstance(value, Mapping):
        return dict(value)
    dump = getattr(value, "model_dump", None)  # a job model, when a flow is called in-process
    return dump(mode="json") if callable(dump) else {}


def describe_job(parameters: Mapping[str, Any]) -> tuple[str, str]:
    """(what the run protects, the nodes involved) from a flow run's parameters:
    ``("guest 100", "pve1 -> pve3")``, ``("dataset rpool/data/share", "pve1 -> pve2")``."""
    job = _as_dict(parameters.get("job")) or dict(parameters)
    if "guest" in job:
        what = f"guest {job['guest']}"
    elif job.get("guests"):
        what = "guests " + ", ".join(str(g) for g in job["guests"])
    elif "dataset" in job:
        what = f"dataset {job['dataset']}"
    elif "guests" in job:  # a backup job of every guest of its node
        what = "every guest"
    elif "job_name" in job:  # a run about a job (a failover)
        what = f"job {job['job_name']}"
    else:
        what = ""
    nodes = [str(job[k]) for k in ("source", "node", "destination", "pbs", "target")
             if isinstance(job.get(k), (str, int)) and job.get(k) != ""]
    return what, " -> ".join(dict.fromkeys(nodes))


@dataclass(frozen=True)
class RunNotice:
    """Everything one run's message says."""

    job: str
    """``zfs-replica/vm100-to-pve3``, or the flow and run name for a run outside a job."""
    outcome: str
    """``Completed``, ``Failed`` or ``Crashed``."""
    what: str = ""
    nodes: str = ""
    detail: str = ""
    """The final state's message (why it failed)."""
    started: datetime | None = None
    seconds: float | None = None
    bytes_sent: int | None = None
    refs: tuple[str, ...] = field(default_factory=tuple)
    """Snapshots or backup ids the run made."""
    url: str = ""
    """The run's page in the Prefect UI."""


def run_subject(notice: RunNotice) -> str:
    """``[dapx] FAILED zfs-replica/vm100-to-pve3: guest 100, pve1 -> pve3``."""
    about = ", ".join(p for p in (notice.what, notice.nodes) if p)
    return f"[dapx] {notice.outcome.upper()} {notice.job}" + (f": {about}" if about else "")


def run_body(notice: RunNotice) -> str:
    """The message body: one fact per line, the run's link last."""
    lines = [f"Job: {notice.job}", f"Outcome: {notice.outcome}"]
    if notice.what:
        lines.append(f"Protects: {notice.what}")
    if notice.nodes:
        lines.append(f"Nodes: {notice.nodes}")
    if notice.started is not None:
        lines.append(f"Started: {notice.started:%Y-%m-%d %H:%M:%S %Z}".rstrip())
    if notice.seconds is not None:
        lines.append(f"Duration: {format_duration(notice.seconds)}")
    if notice.bytes_sent is not None:
        lines.append(f"Bytes: {human_bytes(notice.bytes_sent)} ({notice.bytes_sent} B)")
    if notice.refs:
        lines.append(f"Made: {', '.join(notice.refs)}")
    if notice.detail:
        lines.append(f"Message: {notice.detail}")
    if notice.url:
        lines.append(f"Run: {notice.url}")
    return "\n".join(lines) + "\n"


def format_duration(seconds: float) -> str:
    """``3.2`` -> ``3.2 s``; ``125`` -> ``2 min 5 s``; ``7260`` -> ``2 h 1 min``;
    ``200000`` -> ``2 d 7 h``."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    whole = int(seconds)
    days, rest = divmod(whole, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days} d {hours} h"
    if hours:
        return f"{hours} h {minutes} min"
    return f"{minutes} min {secs} s"


_PREFECT_PREFIX = re.compile(r"^(Flow run encountered an exception|Task run encountered an "
                             r"exception|Flow run failed due to):?\s*")


def state_detail(message: str | None, limit: int = 500) -> str:
    """The first line of a final state's message, without Prefect's lead-in:
    ``Flow run encountered an exception: InputError: guest 555 ...`` ->
    ``InputError: guest 555 ...``."""
    lines = (message or "").strip().splitlines()
    return _PREFECT_PREFIX.sub("", lines[0])[:limit] if lines else ""


def run_url(ui_url: str | None, flow_run_id: object) -> str:
    """The run's page in the Prefect UI, or "" when no UI address is known."""
    return f"{ui_url.rstrip('/')}/runs/flow-run/{flow_run_id}" if ui_url else ""


def ui_url_from_api(api_url: str | None) -> str | None:
    """``http://host:4200/api`` -> ``http://host:4200`` (the UI is served beside the API)."""
    if not api_url:
        return None
    return re.sub(r"/api/?$", "", api_url.rstrip("/"))


# -----------------------------------------------------------------------------------------------
# Targets: names, the default recipient, and keeping their secrets out of text


def validate_target_name(name: str) -> str:
    """A target name: lower-case letters, digits, ``-`` and ``_`` (32 at most)."""
    if not isinstance(name, str) or not _TARGET_NAME.fullmatch(name):
        raise InputError(f"target name {name!r} must be lower-case letters, digits, '-' or "
                         "'_' (e.g. ops-mail)")
    return name


def validate_recipient(address: str) -> str:
    """An e-mail address (the default recipient of mail targets)."""
    if not isinstance(address, str) or not _EMAIL.fullmatch(address):
        raise InputError(f"recipient {address!r} is not an e-mail address")
    return address


def validate_clock(text: str) -> str:
    """``HH:MM`` (24 h) -> the same; InputError otherwise."""
    if not isinstance(text, str) or not _CLOCK.fullmatch(text):
        raise InputError(f"time {text!r} must be HH:MM on a 24-hour clock, e.g. 08:00")
    return text


def daily_cron(clock: str) -> str:
    """``08:00`` -> ``0 8 * * *``."""
    hours, minutes = validate_clock(clock).split(":")
    return f"{int(minutes)} {int(hours)} * * *"


def url_scheme(url: str) -> str:
    """The scheme of an Apprise URL (``mailtos``, ``json``...), lower case; "" if none."""
    scheme, sep, _ = url.partition("://")
    return scheme.lower() if sep and re.fullmatch(r"[A-Za-z0-9+.-]{1,32}", scheme) else ""


def url_host(url: str) -> str:
    """The host an Apprise URL points at, without user, password, port or path ("" if none)."""
    try:
        return urlsplit(url).hostname or ""
    except ValueError:
        return ""


def with_recipient(url: str, recipient: str | None) -> str:
    """A mail URL with no recipient of its own sends to ``recipient`` (``?to=``); any other
    URL, or a mail URL naming its recipients (path or ``to=``), is returned unchanged."""
    if not recipient or url_scheme(url) not in _MAIL_SCHEMES:
        return url
    parts = urlsplit(url)
    if parts.path.strip("/") or any(k == "to" for k, _ in parse_qsl(parts.query)):
        return url
    return url + ("&" if parts.query else ("?" if not url.endswith("?") else "")) + \
        f"to={recipient}"


_PLAIN_KEYS = {"mode", "verify", "method", "format", "cto", "rto", "smtp", "from", "to", "cc",
               "bcc", "name", "overflow", "retry", "wait", "optional", "reply", "port"}
"""Query keys whose values are settings, not secrets (kept readable in reasons)."""


def secret_parts(url: str) -> list[str]:
    """Every piece of an Apprise URL that may be a secret, raw and decoded, longest first:
    the user and password, every path segment (many services carry tokens there), and the
    value of every query key that is not a plain setting (``+Header=``, ``-param=`` and
    ``:field=`` values included). The scheme, host, port and settings such as ``mode=ssl``
    stay readable."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a malformed port
    except ValueError:  # unparseable: hide the whole thing
        return [url]
    pieces = {url, url.split("://", 1)[-1], parts.netloc.rpartition("@")[0]}
    pieces.update(p for p in (parts.username, parts.password) if p)
    pieces.update(s for s in parts.path.split("/") if s)
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        if key.lower() not in _PLAIN_KEYS:
            pieces.add(value)
    pieces |= {unquote(p) for p in pieces}
    # A piece shorter than 3 characters is no secret worth the name, and hiding every "a"
    # or "1" would garble the reason; a password is hidden whatever its length.
    return sorted((p for p in pieces if len(p) >= 3 or (p and p == parts.password)),
                  key=len, reverse=True)


def scrub(text: str, secrets: list[str]) -> str:
    """``text`` with every piece in ``secrets`` replaced by ``***``."""
    for piece in secrets:
        if piece:
            text = text.replace(piece, "***")
    return text
