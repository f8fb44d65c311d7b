"""Times as people read them in command output: never raw epoch seconds."""

from __future__ import annotations

from dapx.core.units import utc_time
from dapx.flows.guest_snapshot import GuestSnapshotResult, PveSnapshot


def test_utc_time_reads_as_a_date_and_unknown_as_a_dash() -> None:
    assert utc_time(1796279683) == "2026-12-03 06:34:43Z"
    assert utc_time(0) == "-"


def test_snapshot_create_prints_when_each_snapshot_was_taken() -> None:
    result = GuestSnapshotResult(node="pve1", guest=100, kind="qemu", action="create",
                                 name="before-upgrade", done="created before-upgrade",
                                 snapshots=[PveSnapshot(name="before-upgrade",
                                                        snaptime=1796279683, vmstate=True,
                                                        description="kernel 6.8")])
    lines = str(result).splitlines()
    assert lines[0] == "guest 100 on pve1: created before-upgrade"
    assert lines[1].split() == ["before-upgrade", "2026-12-03", "06:34:43Z", "RAM", "kernel",
                                "6.8"]
