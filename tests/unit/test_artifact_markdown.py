"""Artifacts read well in Prefect's UI: parsed as CommonMark with tables, a plan page has its
facts as a list, its rows as a real table (not text inside the last bullet), and readable
values (a bridge map as ``vmbr0 → vmbr1``, never a Python dict)."""

from __future__ import annotations

from dapx.ui_extensions.artifacts import markdown_table, plan_markdown, readable
from tests.helpers.markdown import list_items, tables


def test_plan_page_is_a_list_then_a_table_then_notes() -> None:
    facts = {"guest": "pve1/100", "bridges": {"vmbr0": "vmbr1"}, "cpu host": True,
             "bandwidth limit": None}
    rows = [{"disk": "scsi0", "plan": "full send", "note": "a | b"},
            {"disk": "scsi1", "plan": "incremental", "note": "line\nbreak"}]
    page = plan_markdown("Replication plan: guest 100", facts, rows, ["dry run: nothing changed"])
    assert tables(page) == [[["disk", "plan", "note"], ["scsi0", "full send", "a | b"],
                             ["scsi1", "incremental", "line break"]]]
    items = list_items(page)
    assert items[:4] == ["**guest**: pve1/100", "**bridges**: vmbr0 → vmbr1",
                         "**cpu host**: yes", "**bandwidth limit**: none"]
    assert items[4] == "dry run: nothing changed"
    assert not any("|" in item for item in items), "a table was swallowed by a list item"


def test_readable_values() -> None:
    assert readable({"vmbr0": "vmbr1", "vmbr2": "vmbr3"}) == "vmbr0 → vmbr1, vmbr2 → vmbr3"
    assert readable(["a", "b"]) == "a, b" and readable([]) == "none"
    assert readable(False) == "no" and readable(3) == "3"


def test_a_table_without_rows_says_so() -> None:
    assert tables(markdown_table([])) == []
