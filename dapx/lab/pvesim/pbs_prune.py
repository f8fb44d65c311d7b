"""PBS's prune selection (keep-last/hourly/daily/weekly/monthly/yearly), as a pure function.

Follows proxmox-backup's compute_prune_info: newest first; each rule keeps the newest snapshot
of each period until it has kept N periods; periods already covered by an earlier rule are
skipped; protected snapshots are always kept. No keep option at all keeps everything.
"""

from __future__ import annotations

import datetime as dt

RULES = (
    ("keep-last", None),
    ("keep-hourly", "%Y/%m/%d/%H"),
    ("keep-daily", "%Y/%m/%d"),
    ("keep-weekly", "%G/%V"),
    ("keep-monthly", "%Y/%m"),
    ("keep-yearly", "%Y"),
)


def _sel_id(epoch: int, fmt: str | None) -> str:
    if fmt is None:
        return str(epoch)
    # PBS selects periods in local time; the lab runs in UTC
    return dt.datetime.fromtimestamp(epoch, dt.timezone.utc).strftime(fmt)


def select(times: list[int], protected: set[int], keep: dict[str, int]) -> dict[int, bool]:
    """{backup-time: keep?} for one group's snapshot times."""
    ordered = sorted(times, reverse=True)
    if not any(keep.get(name) for name, _ in RULES):
        return {t: True for t in ordered}
    mark: dict[int, bool] = {t: True for t in ordered if t in protected}
    for name, fmt in RULES:
        count = keep.get(name) or 0
        if not count:
            continue
        already = {_sel_id(t, fmt) for t, k in mark.items() if k and t not in protected}
        included: set[str] = set()
        for t in ordered:
            if t in mark:
                continue
            sel = _sel_id(t, fmt)
            if sel in already:
                continue
            if sel not in included:
                if len(included) >= count:
                    break
                included.add(sel)
                mark[t] = True
            else:
                mark[t] = False
    return {t: mark.get(t, False) for t in ordered}
