"""The daily summary (A4) as pure functions: every job's runs of the last day counted by
outcome, the failed and crashed runs listed, the guests late or unprotected, the nodes whose
last check failed. In: facts read from Prefect and the protection state. Out: subject and body.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from zoneinfo import ZoneInfo

from dapx.core.protection import Protection

BUCKETS = ("completed", "failed", "crashed", "late")
"""The outcomes counted per job (running and cancelled runs are counted apart)."""


@dataclass(frozen=True)
class JobRun:
    """One flow run of a job."""

    job: str
    state_type: str
    """Prefect's state type: ``COMPLETED``, ``FAILED``, ``CRASHED``, ``SCHEDULED``..."""
    state_name: str
    at: datetime | None = None
    detail: str = ""
    url: str = ""


@dataclass(frozen=True)
class NodeCheck:
    """The newest node-check run of one node."""

    node: str
    ok: bool
    at: datetime | None = None
    detail: str = ""
    url: str = ""


def run_bucket(state_type: str, state_name: str) -> str | None:
    """``late``, ``completed``, ``failed``, ``crashed``, ``cancelled``, ``running``, or None
    for a run still waiting for its time (not yet due)."""
    if state_name == "Late":
        return "late"
    return {"COMPLETED": "completed", "FAILED": "failed", "CRASHED": "crashed",
            "CANCELLED": "cancelled", "CANCELLING": "cancelled", "RUNNING": "running",
            "PENDING": "running", "PAUSED": "running"}.get(state_type)


def tally(jobs: dict[str, str], runs: list[JobRun]) -> dict[str, Counter]:
    """Per job (``jobs``: name -> notify mode; a run of a job not listed is counted under
    its own name), the count of runs per bucket."""
    counts: dict[str, Counter] = {name: Counter() for name in jobs}
    for run in runs:
        bucket = run_bucket(run.state_type, run.state_name)
        if bucket:
            counts.setdefault(run.job, Counter())[bucket] += 1
    return counts


def _when(at: datetime | None, zone: ZoneInfo) -> str:
    return at.astimezone(zone).strftime("%Y-%m-%d %H:%M") if at else "?"


def summary_subject(counts: dict[str, Counter], problems: list[Protection],
                    failed_nodes: list[NodeCheck]) -> str:
    total = Counter()
    for counter in counts.values():
        total.update(counter)
    runs = sum(total[b] for b in BUCKETS) + total["running"] + total["cancelled"]
    parts = [f"{runs} runs"] + [f"{total[b]} {b}" for b in ("failed", "crashed", "late")
                                if total[b]]
    if problems:
        parts.append(f"{len(problems)} guests late or unprotected")
    if failed_nodes:
        parts.append(f"{len(failed_nodes)} nodes failing their check")
    if len(parts) == 1:
        parts.append("all well")
    return "[dapx] daily summary: " + ", ".join(parts)


def summary_body(jobs: dict[str, str], runs: list[JobRun], problems: list[Protection],
                 checks: list[NodeCheck], now: datetime, timezone: str) -> str:
    """The summary's text: jobs, failed runs, guests needing attention, failing nodes."""
    zone = ZoneInfo(timezone)
    counts = tally(jobs, runs)
    lines = [f"DAPX daily summary, {_when(now, zone)} {timezone}", "",
             "Jobs, runs of the last 24 hours:"]
    for job in sorted(counts):
        mode = f" [{jobs[job]}]" if job in jobs else ""
        counter = counts[job]
        extra = [f"{counter[b]} {b}" for b in ("running", "cancelled") if counter[b]]
        lines.append(f"  {job}{mode}: " + ", ".join(
            [f"{counter[b]} {b}" for b in BUCKETS] + extra))
    if not counts:
        lines.append("  no jobs")
    bad = [r for r in runs if run_bucket(r.state_type, r.state_name) in ("failed", "crashed")]
    lines += ["", "Failed and crashed runs:"]
    lines += [f"  {_when(r.at, zone)} {r.job} {r.state_name}: {r.detail or '-'}"
              + (f"\n    {r.url}" if r.url else "")
              for r in sorted(bad, key=lambda r: (r.at is None, r.at))] or ["  none"]
    lines += ["", "Guests late or unprotected:"]
    lines += [f"  {p.subject}{f' ({p.name})' if p.name else ''} {p.state}: "
              + "; ".join(p.reasons) for p in problems] or ["  none"]
    failed = [c for c in checks if not c.ok]
    lines += ["", "Nodes whose last check failed:"]
    lines += [f"  {c.node} {_when(c.at, zone)}: {c.detail or '-'}"
              + (f"\n    {c.url}" if c.url else "") for c in failed] or ["  none"]
    return "\n".join(lines) + "\n"


def summary(jobs: dict[str, str], runs: list[JobRun], rows: list[Protection],
            checks: list[NodeCheck], now: datetime, timezone: str) -> tuple[str, str]:
    """(subject, body) of the daily summary."""
    problems = [r for r in rows if r.problem]
    failed = [c for c in checks if not c.ok]
    return (summary_subject(tally(jobs, runs), problems, failed),
            summary_body(jobs, runs, problems, checks, now, timezone))
