"""Which backups of one PBS group a keep policy keeps: PBS's own prune selection, for plans.

The prune itself is PBS's (``POST /admin/datastore/{store}/prune``); this pure copy of its
rules (proxmox-backup ``compute_prune_info``) lets a dry run show what a run would remove.
Backups newest first; keep-last keeps the N newest; each other rule keeps the newest backup of
each of its N newest periods (hour, day, ISO week, month, year) not already covered by a
backup an earlier rule kept; protected backups are always kept and count for no rule. No rule
at all keeps everything (PBS's behaviour, which is why jobs refuse an empty policy).

Periods are cut in UTC here; PBS cuts them in its own local time, so on a PBS not running in
UTC a plan can differ from the real prune near midnight.
"""

from __future__ import annotations

from datetime import datetime, timezone

RULES: tuple[tuple[str, str | None], ...] = (
    ("keep_last", None),
    ("keep_hourly", "%Y/%m/%d/%H"),
    ("keep_daily", "%Y/%m/%d"),
    ("keep_weekly", "%G/%V"),
    ("keep_monthly", "%Y/%m"),
    ("keep_yearly", "%Y"),
)


def _period(epoch: int, fmt: str | None) -> str:
    if fmt is None:
        return str(epoch)
    return datetime.fromtimestamp(epoch, timezone.utc).strftime(fmt)


def select_kept(times: list[int], protected: set[int], keep: dict[str, int]) -> dict[int, bool]:
    """``{backup time: kept?}`` for one group. In: backup times (epoch seconds), the protected
    ones, and keep counts by rule name (``keep_last``...; missing or 0 = rule unused)."""
    ordered = sorted(set(times), reverse=True)
    if not any(keep.get(name) for name, _ in RULES):
        return {t: True for t in ordered}
    mark: dict[int, bool] = {}
    for name, fmt in RULES:
        count = keep.get(name) or 0
        if count:
            _mark_rule(ordered, protected, mark, count, fmt)
    return {t: t in protected or mark.get(t, False) for t in ordered}


def _mark_rule(ordered: list[int], protected: set[int], mark: dict[int, bool], count: int,
               fmt: str | None) -> None:
    """One rule: keep the newest backup of each of ``count`` periods not yet covered."""
    covered = {_period(t, fmt) for t, kept in mark.items() if kept}
    chosen: set[str] = set()
    for t in ordered:
        if t in protected or t in mark:
            continue
        period = _period(t, fmt)
        if period in covered:
            continue
        if period in chosen:
            mark[t] = False
            continue
        if len(chosen) >= count:
            break
        chosen.add(period)
        mark[t] = True


def to_remove(times: list[int], protected: set[int], keep: dict[str, int]) -> list[int]:
    """The backup times a prune with ``keep`` removes, newest first (never a protected one)."""
    return [t for t, kept in select_kept(times, protected, keep).items() if not kept]
