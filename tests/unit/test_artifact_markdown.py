"""Artifacts read well in Prefect's UI: parsed as CommonMark with tables, a plan page has its
facts as a list, its rows as a real table (not text inside the last bullet), and readable
values (a bridge map as ``vmbr0 → vmbr1``, never a Python dict)."""

from __future__ import annotations

from dapx.ui_extensions import artifacts
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


async def test_progress_updates_land_in_the_order_made(monkeypatch) -> None:
    """Two guests finishing at once: 75 % then the final 100 %. The first update is the slow
    one; the bar must still end at 100 (updates go one at a time, a stale one is dropped)."""
    import asyncio

    import prefect.artifacts

    landed: list[float] = []

    async def update(artifact_id, progress: float) -> None:  # noqa: ANN001
        await asyncio.sleep(0.05 if progress < 100 else 0.0)
        landed.append(progress)

    monkeypatch.setattr(prefect.artifacts, "aupdate_progress_artifact", update)
    bar = artifacts.Progress("fleet-progress-pve1", "fleet")
    bar.artifact_id = "id"
    await asyncio.gather(bar.update(75.0), bar.update(100.0, force=True), bar.update(50.0))
    assert landed == [75.0, 100.0] and bar.shown == 100.0


async def test_the_progress_bar_is_created_beside_the_transfer(monkeypatch) -> None:  # noqa: ANN001
    """``start`` returns at once (a busy server must not hold the transfer back); the first
    update waits for the artifact, then lands on it."""
    import asyncio

    import prefect.artifacts

    made = asyncio.Event()
    landed: list[tuple[str, float]] = []

    async def create(progress: float, key: str, description: str) -> str:
        await made.wait()
        return "id"

    async def update(artifact_id, progress: float) -> None:  # noqa: ANN001
        landed.append((artifact_id, progress))

    monkeypatch.setattr(prefect.artifacts, "acreate_progress_artifact", create)
    monkeypatch.setattr(prefect.artifacts, "aupdate_progress_artifact", update)
    bar = artifacts.Progress("replica-progress-pve1", "guest 100")
    await asyncio.wait_for(bar.start(), timeout=1)  # returns although creating still waits
    follower = asyncio.ensure_future(bar.update(10.0))  # the transfer's follower...
    await asyncio.sleep(0.05)
    follower.cancel()  # ...cancelled at the transfer's end, still waiting
    pending = asyncio.ensure_future(bar.update(40.0, force=True))
    await asyncio.sleep(0.05)
    assert landed == [] and not pending.done()
    made.set()
    await pending
    assert landed == [("id", 40.0)]
