"""PBS backups as PVE names them, what a task's end says, which backups a policy keeps."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from dapx.core.backups import (BackupRef, archive_from_log, backup_entry, find_backup,
                               newest_first, parse_backup, parse_pbs_time, pbs_time,
                               task_outcome)
from dapx.core.jobspec import BackupJob, PbsRetention, RecoveryJob, RestoreRequest
from dapx.core.pbs_retention import select_kept, to_remove
from dapx.errors import InputError

T0 = 1764115200  # 2025-11-26T00:00:00Z
DAY, HOUR = 86400, 3600


# -- names ----------------------------------------------------------------------------------------


def test_backup_names_a_user_may_type() -> None:
    ref = parse_backup("vm/100/2025-11-26T00:00:00Z", "pbs")
    assert (ref.kind, ref.backup_id, ref.time) == ("qemu", 100, T0)
    assert ref.volid == "pbs:backup/vm/100/2025-11-26T00:00:00Z"
    assert parse_backup("pbs:backup/ct/101/2025-11-26T00:00:00Z", "pbs").kind == "lxc"
    latest = parse_backup(" ct/101/latest ", "pbs")
    assert latest.time is None and latest.path == "ct/101/latest"
    with pytest.raises(InputError, match="names no single backup"):
        latest.volid  # noqa: B018 - the property raises


@pytest.mark.parametrize("text", ["vm/100", "vm/100/yesterday", "host/x/2025-11-26T00:00:00Z",
                                  "vm/100/2025-11-26T00:00:00Z; rm -rf /",
                                  "vm/../2025-11-26T00:00:00Z", "vm/99/latest", ""])
def test_bad_backup_names_are_refused(text: str) -> None:
    with pytest.raises(InputError):
        parse_backup(text, "pbs")


def test_volume_on_another_storage_is_refused() -> None:
    with pytest.raises(InputError, match="on storage 'other', not 'pbs'"):
        parse_backup("other:backup/vm/100/2025-11-26T00:00:00Z", "pbs")


def test_pbs_times_round_trip() -> None:
    assert pbs_time(T0) == "2025-11-26T00:00:00Z" and parse_pbs_time(pbs_time(T0)) == T0
    with pytest.raises(InputError):
        parse_pbs_time("2025-11-26 00:00")


# -- task outcomes --------------------------------------------------------------------------------


def test_ok_and_warnings_are_success_with_the_warning_lines() -> None:
    assert task_outcome("OK", ["INFO: x", "TASK OK"]).ok
    warned = task_outcome("WARNINGS: 1", ["INFO: start", "WARN: no efidisk configured! Using "
                                          "temporary efivars disk.", "TASK WARNINGS: 1"])
    assert warned.ok and warned.warnings == ["no efidisk configured! Using temporary efivars "
                                             "disk."]
    assert task_outcome("WARNINGS: 2", []).warnings == ["WARNINGS: 2"]


def test_failure_names_pves_error_lines() -> None:
    log = ["INFO: starting new backup job: vzdump 390", "ERROR: Backup of VM 390 failed - "
           "unable to open file", "INFO: Failed at 2025-11-26 00:00:01", "TASK ERROR: job errors"]
    outcome = task_outcome("job errors", log)
    assert not outcome.ok
    assert outcome.error == "job errors: Backup of VM 390 failed - unable to open file"
    assert task_outcome("boom", ["a", "b", "c", "d", "TASK ERROR: boom"]).error == "boom: b; c; d"
    assert task_outcome("", []).error == "no exit status"


def test_archive_path_from_the_vzdump_log() -> None:
    log = ["INFO: Starting Backup of VM 100 (qemu)",
           "INFO: creating Proxmox Backup Server archive 'vm/100/2025-11-26T00:00:00Z'"]
    assert archive_from_log(log) == "vm/100/2025-11-26T00:00:00Z"
    assert archive_from_log(["INFO: skip external VMs: 200"]) is None


# -- listings -------------------------------------------------------------------------------------


def item(vmid: int, when: int, kind: str = "vm", **extra) -> dict:
    return {"volid": f"pbs:backup/{kind}/{vmid}/{pbs_time(when)}", "ctime": when,
            "size": 1024, "content": "backup", "vmid": vmid} | extra


def test_listing_newest_first_per_guest_and_lookup() -> None:
    items = [item(100, T0), item(101, T0 + 5, "ct", protected=1, notes="before upgrade\nmore"),
             item(100, T0 + 10, verification={"state": "ok"}),
             {"volid": "pbs:iso/x.iso", "content": "iso"}]
    entries = newest_first([e for e in map(backup_entry, items) if e])
    assert [(e.guest, e.time) for e in entries] == [(100, T0 + 10), (100, T0), (101, T0 + 5)]
    assert entries[0].verified == "ok" and entries[1].verified == "none"
    assert entries[2].protected and entries[2].notes == "before upgrade"
    assert find_backup(entries, parse_backup("vm/100/latest", "pbs")).time == T0 + 10
    assert find_backup(entries, parse_backup(f"vm/100/{pbs_time(T0)}", "pbs")).time == T0
    with pytest.raises(InputError, match=r"does not exist on storage pbs \(newest: pbs:backup/"
                                         r"vm/100/"):
        find_backup(entries, parse_backup("vm/100/2001-01-01T00:00:00Z", "pbs"))
    with pytest.raises(InputError, match="holds no backup of it"):
        find_backup(entries, BackupRef(storage="pbs", backup_type="ct", backup_id=100))


# -- job models -----------------------------------------------------------------------------------


def test_retention_must_keep_something_and_counts_are_positive() -> None:
    with pytest.raises(ValidationError, match="no keep count; PBS would keep every backup"):
        PbsRetention()
    with pytest.raises(ValidationError, match="1..10000"):
        PbsRetention(keep_daily=-1)
    with pytest.raises(ValidationError):
        PbsRetention(keep_last=1, keep_forever=1)
    policy = PbsRetention(keep_last=7, keep_daily=14)
    assert policy.counts() == {"keep_last": 7, "keep_daily": 14}
    assert policy.describe() == "keep-last 7, keep-daily 14"


def test_job_models_refuse_bad_input_in_one_line() -> None:
    base = {"node": "pve1", "storage": "pbs", "retention": {"keep_last": 1}}
    with pytest.raises(InputError, match="^retention: retention sets no keep count"):
        BackupJob.from_input(**(base | {"retention": {}}))
    with pytest.raises(InputError, match="lists a VMID twice"):
        BackupJob.from_input(**(base | {"guests": [100, 100]}))
    with pytest.raises(InputError, match="storage"):
        BackupJob.from_input(**(base | {"storage": "pbs;reboot"}))
    with pytest.raises(InputError, match="mode"):
        BackupJob.from_input(**(base | {"mode": "hot"}))
    request = {"storage": "pbs", "backup": "vm/300/latest", "destination": "pve1",
               "dest_storage": "local"}
    assert RestoreRequest.from_input(**(request | {"bridge_map": "vmbr1=vmbr0"})).bridge_map \
        == {"vmbr1": "vmbr0"}
    with pytest.raises(InputError, match="^backup: backup 'vm/300' must look like"):
        RestoreRequest.from_input(**(request | {"backup": "vm/300"}))
    with pytest.raises(InputError, match="bridge"):
        RestoreRequest.from_input(**(request | {"bridge_map": "vmbr0=$(reboot)"}))
    job = RecoveryJob.from_input(source="pve3", guest=300, destination="pve1", storage="pbs",
                                 dest_storage="local")
    assert job.target_vmid == 300 and job.retention is None and not job.start


# -- retention rules ------------------------------------------------------------------------------


def test_keep_last_and_daily_as_pbs_documents() -> None:
    """PBS's prune simulator example: keep-last 2 then keep-daily covers other days."""
    times = [T0 + 3 * DAY + 2 * HOUR, T0 + 3 * DAY + HOUR, T0 + 3 * DAY, T0 + 2 * DAY + HOUR,
             T0 + 2 * DAY, T0 + DAY, T0]
    kept = select_kept(times, set(), {"keep_last": 2, "keep_daily": 2})
    assert [t for t, k in kept.items() if k] == [T0 + 3 * DAY + 2 * HOUR, T0 + 3 * DAY + HOUR,
                                                 T0 + 2 * DAY + HOUR, T0 + DAY]


def test_protected_backups_are_kept_and_count_for_no_rule() -> None:
    times = [T0 + 2 * DAY, T0 + DAY, T0]
    assert to_remove(times, {T0 + 2 * DAY}, {"keep_last": 1}) == [T0]
    assert to_remove(times, set(), {}) == []  # no rule: PBS keeps everything


def test_weekly_monthly_yearly_periods() -> None:
    monday = int(datetime(2025, 11, 24, 12, tzinfo=timezone.utc).timestamp())
    times = [monday + 6 * DAY, monday + 5 * DAY, monday - DAY, monday - 8 * DAY]
    kept = select_kept(times, set(), {"keep_weekly": 2})
    assert [t for t, k in kept.items() if k] == [monday + 6 * DAY, monday - DAY]
    year = [int(datetime(y, m, 1, tzinfo=timezone.utc).timestamp())
            for y, m in ((2025, 3), (2025, 2), (2024, 12), (2023, 5))]
    assert [t for t, k in select_kept(year, set(), {"keep_monthly": 2}).items() if k] == year[:2]
    assert [t for t, k in select_kept(year, set(), {"keep_yearly": 2}).items() if k] == \
        [year[0], year[2]]


RULES = st.fixed_dictionaries({}, optional={name: st.integers(1, 4) for name in (
    "keep_last", "keep_hourly", "keep_daily", "keep_weekly", "keep_monthly", "keep_yearly")})
TIMES = st.lists(st.integers(T0, T0 + 400 * DAY), min_size=0, max_size=25, unique=True)


@settings(max_examples=300, deadline=None)
@given(TIMES, RULES, st.data())
def test_policy_properties(times: list[int], keep: dict[str, int], data) -> None:
    protected = set(data.draw(st.lists(st.sampled_from(times), unique=True))) if times else set()
    kept = select_kept(times, protected, keep)
    assert set(kept) == set(times)
    assert all(kept[t] for t in protected)
    if not keep:
        assert all(kept.values())
        return
    survivors = [t for t in times if kept[t]]
    assert len(survivors) <= sum(keep.values()) + len(protected)
    unprotected = sorted((t for t in times if t not in protected), reverse=True)
    if unprotected:
        assert kept[unprotected[0]]  # the newest backup always survives a prune
    assert all(kept[t] for t in unprotected[:keep.get("keep_last", 0)])
    again = select_kept(survivors, protected & set(survivors), keep)
    assert all(again.values())  # pruning what a prune kept removes nothing more


@settings(max_examples=300, deadline=None)
@given(TIMES, RULES, st.data())
def test_plans_agree_with_the_lab_pbs(times: list[int], keep: dict[str, int], data) -> None:
    """The plan's copy of PBS's rules and the lab PBS's own copy decide alike."""
    from dapx.lab.pvesim import pbs_prune

    protected = set(data.draw(st.lists(st.sampled_from(times), unique=True))) if times else set()
    sim = pbs_prune.select(times, protected, {k.replace("_", "-"): v for k, v in keep.items()})
    assert select_kept(times, protected, keep) == sim
