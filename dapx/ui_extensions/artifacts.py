"""What replication shows in the Prefect UI: the plan (markdown), progress while bytes move,
and a result table per guest. Builders are pure (rows/markdown in, text out); the publish
helpers are thin wrappers around Prefect's artifact API and never raise into a flow: an
artifact that cannot be written must not fail a replication.
"""

from __future__ import annotations

import asyncio
import logging
import re
from typing import Any

from dapx.core.units import human_bytes  # noqa: F401 - the flows take it from here too

_KEY = re.compile(r"[^a-z0-9-]+")
log = logging.getLogger("dapx.artifacts")


def artifact_key(*parts: object) -> str:
    """An artifact key (lower-case letters, digits, dashes) from ``parts``."""
    return _KEY.sub("-", "-".join(str(p) for p in parts).lower()).strip("-")[:100]


def readable(value: Any) -> str:
    """A value as a person reads it: ``{"vmbr0": "vmbr1"}`` -> ``vmbr0 → vmbr1``, lists
    comma-separated, True/False as yes/no, None and empty as ``none``."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if value is None or value == {} or value == [] or value == "":
        return "none"
    if isinstance(value, dict):
        return ", ".join(f"{k} → {readable(v)}" for k, v in value.items())
    if isinstance(value, (list, tuple, set)):
        return ", ".join(readable(v) for v in value)
    return str(value)


def _cell(value: Any) -> str:
    """A value for a markdown table cell or list item (no pipe, no line break)."""
    return readable(value).replace("|", "\\|").replace("\n", " ")


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """A GitHub-style markdown table of ``rows`` (columns from the first row)."""
    if not rows:
        return "_nothing_\n"
    columns = list(rows[0])
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def plan_markdown(title: str, facts: dict[str, Any], rows: list[dict[str, Any]],
                  notes: list[str]) -> str:
    """The dry-run page: a title, key facts, one row per disk, and notes."""
    head = [f"# {title}", ""] + [f"- **{k}**: {_cell(v)}" for k, v in facts.items()]
    tail = ["", "## Notes", ""] + [f"- {_cell(n)}" for n in notes] if notes else []
    # A blank line ends the list: without it the table would be read as part of the last item.
    return "\n".join(head) + "\n\n" + markdown_table(rows) + "\n".join(tail) + "\n"


async def publish_markdown(key: str, markdown: str, description: str) -> None:
    """Create a markdown artifact; logs and carries on when Prefect refuses it."""
    from prefect.artifacts import acreate_markdown_artifact

    try:
        await acreate_markdown_artifact(markdown=markdown, key=key, description=description)
    except Exception as exc:  # an artifact must never fail the run
        log.warning("could not create artifact %s: %s", key, exc)


async def publish_table(key: str, rows: list[dict[str, Any]], description: str) -> None:
    """Create a table artifact; logs and carries on when Prefect refuses it."""
    from prefect.artifacts import acreate_table_artifact

    try:
        await acreate_table_artifact(table=rows, key=key, description=description)
    except Exception as exc:  # an artifact must never fail the run
        log.warning("could not create artifact %s: %s", key, exc)


class Progress:
    """A progress artifact (0..100) for one guest's transfer; updates are throttled and sent
    one at a time, in the order made (two sent at once may land in either order: a bar left
    at 75 % after its 100 %)."""

    def __init__(self, key: str, description: str) -> None:
        self.key, self.description = key, description
        self.artifact_id: Any = None
        self.shown = -1.0
        self._sending = asyncio.Lock()
        self._creating: asyncio.Task | None = None

    async def start(self) -> None:
        """Create the artifact (at 0 %) beside the transfer: the first update waits for it,
        the transfer does not."""
        self._creating = asyncio.create_task(self._create())

    async def _create(self) -> None:
        from prefect.artifacts import acreate_progress_artifact

        try:
            self.artifact_id = await acreate_progress_artifact(
                progress=0.0, key=self.key, description=self.description)
        except Exception as exc:  # an artifact must never fail the run
            log.warning("could not create progress artifact %s: %s", self.key, exc)

    async def update(self, percent: float, *, force: bool = False) -> None:
        """Show ``percent`` when it moved by at least 2 points (or ``force``)."""
        from prefect.artifacts import aupdate_progress_artifact

        percent = max(0.0, min(100.0, percent))
        if self._creating is not None:  # shielded: a cancelled follower must not cancel it
            await asyncio.shield(self._creating)
        if self.artifact_id is None:
            return
        async with self._sending:
            if not force and percent - self.shown < 2.0:
                return
            try:
                await aupdate_progress_artifact(artifact_id=self.artifact_id, progress=percent)
                self.shown = percent
            except Exception as exc:  # an artifact must never fail the run
                log.warning("could not update progress artifact %s: %s", self.key, exc)
