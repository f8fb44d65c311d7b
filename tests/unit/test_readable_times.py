"""Times and changes as people read them in command output and artifacts: never raw epoch
seconds or a Python dict."""

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


def test_a_migrations_hardware_changes_read_as_key_value_pairs() -> None:
    from dapx.flows.migration import MigrationResult

    fields = dict(mode="copy", source="pve1", guest=101, destination="pve3", dest_vmid=7101,
                  transport="zfs")
    changed = MigrationResult(**fields, changes={"description": "dapx-replica-of: pve1/101",
                                                 "memory": "1024", "cores": "2"})
    assert changed.hardware_text == "memory=1024, cores=2"
    assert MigrationResult(**fields).hardware_text == "-"


def test_a_sanoid_policy_reads_as_its_counts() -> None:
    from dapx.flows.snapshot_policy import PolicyResult

    result = PolicyResult(node="pve1", guest=100, enabled=True, template="default",
                          counts={"hourly": 24, "daily": 30}, datasets=["rpool/data/d0"],
                          changed=True, dry_run=True)
    assert str(result) == ("guest 100 on pve1: sanoid policy template default (hourly=24 "
                           "daily=30) on rpool/data/d0; /etc/sanoid/sanoid.conf would change")
