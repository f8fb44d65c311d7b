"""Protection state per guest (X4): ages of the newest replica and backup, late when older
than twice the job's interval, unprotected when no job covers it, replicas left out."""

from __future__ import annotations

import dataclasses

from datetime import datetime, timedelta, timezone

from hypothesis import given
from hypothesis import strategies as st

from dapx.core.protection import (Guest, Record, covers_of_job, cover_state, job_kind,
                                  protection_rows, table_rows)

NOW = datetime(2026, 5, 1, 12, 0, tzinfo=timezone.utc)
QUARTER = timedelta(minutes=15)
DAY = timedelta(days=1)


def replica_job(guest: int = 100, **changes) -> dict:
    return {"job": {"source": "pve1", "guest": guest, "destination": "pve3",
                    "dest_vmid": 9000 + guest} | changes}


def covers(name: str, flow: str, params: dict, interval=QUARTER, **kw):  # noqa: ANN001, ANN201
    return covers_of_job(name, flow, params, interval, **kw)


def test_job_kinds_follow_the_flow_name() -> None:
    assert job_kind("zfs-replica") == job_kind("btrfs-replica") == "replica"
    assert job_kind("pbs-recovery") == "replica"
    assert job_kind("pbs-backup") == "backup"
    assert job_kind("snapshots") is None and job_kind("migrate") is None


def test_what_a_job_covers() -> None:
    (cover,) = covers("zfs-replica/vm100", "zfs-replica", replica_job())
    assert (cover.subject, cover.kind, cover.destination, cover.replica) == \
        ("pve1/100", "replica", "pve3", "pve3/9100")
    backup = covers("pbs-backup/b", "pbs-backup", {"job": {"node": "pve2", "guests": [200, 201],
                                                          "pbs": "pbs1"}}, DAY)
    assert [(c.subject, c.kind, c.destination) for c in backup] == \
        [("pve2/200", "backup", "pbs1"), ("pve2/201", "backup", "pbs1")]
    (dataset,) = covers("dataset-replica/ds", "dataset-replica",
                        {"job": {"source": "pve1", "dataset": "rpool/data/share",
                                 "destination": "pve2"}})
    assert dataset.subject == "pve1:rpool/data/share" and dataset.replica == ""
    assert covers("snap/x", "snapshots", replica_job()) == []


def test_states_of_guests() -> None:
    guests = [Guest("pve1", 100, "web"), Guest("pve1", 101, "ct"), Guest("pve1", 102, "db"),
              Guest("pve1", 103, "new"), Guest("pve3", 9100, "web-replica")]
    jobs = (covers("zfs-replica/vm100", "zfs-replica", replica_job(100))
            + covers("pbs-backup/vm100", "pbs-backup",
                     {"job": {"node": "pve1", "guest": 100, "pbs": "pbs1"}}, DAY)
            + covers("zfs-replica/vm102", "zfs-replica", replica_job(102),
                     created=NOW - DAY)
            + covers("zfs-replica/vm103", "zfs-replica", replica_job(103),
                     created=NOW - timedelta(minutes=5)))
    records = [Record("pve1/100", "replica", "pve3", NOW - timedelta(minutes=20),
                      "zfs-replica/vm100"),
               Record("pve1/100", "backup", "pbs1", NOW - timedelta(hours=5), "pbs-backup/vm100"),
               Record("pve1/102", "replica", "pve3", NOW - timedelta(minutes=31),
                      "zfs-replica/vm102")]
    rows = {r.subject: r for r in protection_rows(guests, jobs, records, NOW)}
    assert "pve3/9100" not in rows  # the replica VM 100's job registered: a copy
    assert rows["pve1/100"].state == "ok"
    assert rows["pve1/100"].replica_at == NOW - timedelta(minutes=20)
    assert rows["pve1/100"].backup_to == "pbs1"
    assert rows["pve1/101"].state == "unprotected"
    assert rows["pve1/102"].state == "late"
    assert "last replica 31 min 0 s ago, schedule allows 30 min 0 s" in rows["pve1/102"].reasons[0]
    assert rows["pve1/103"].state == "pending"
    order = [r.subject for r in protection_rows(guests, jobs, records, NOW)]
    assert order == ["pve1/101", "pve1/102", "pve1/103", "pve1/100"]  # problems first
    table = {r["guest"]: r for r in table_rows(list(rows.values()), NOW)}
    assert table["pve1/100"]["replica age"] == "20 min 0 s (pve3)"
    assert table["pve1/100"]["backup age"] == "5 h 0 min (pbs1)"
    assert table["pve1/101"]["backup age"] == "never"


def test_a_run_of_the_same_work_outside_the_job_counts_but_another_destination_does_not() -> None:
    (cover,) = covers("zfs-replica/vm100", "zfs-replica", replica_job())
    by_hand = Record("pve1/100", "replica", "pve3", NOW - timedelta(minutes=1), "")
    elsewhere = Record("pve1/100", "replica", "pve2", NOW - timedelta(minutes=1), "other/job")
    assert cover_state(cover, [by_hand], NOW)[0] == "ok"
    assert cover_state(cover, [elsewhere], NOW)[0] == "late"


def test_a_backup_job_of_every_guest_covers_each_guest_its_node_reports() -> None:
    jobs = covers("pbs-backup/all", "pbs-backup", {"job": {"node": "pve1", "guests": []}}, DAY)
    guests = [Guest("pve1", 100, "web"), Guest("pve1", 101, "ct"), Guest("pve2", 200, "db")]
    records = [Record("pve1/100", "backup", "pbs1:store1", NOW - timedelta(hours=1),
                      "pbs-backup/all")]
    rows = {r.subject: r for r in protection_rows(guests, jobs, records, NOW)}
    assert rows["pve1/100"].state == "ok" and rows["pve1/100"].jobs == ("pbs-backup/all",)
    assert rows["pve1/101"].state == "late"  # covered, never backed up
    assert rows["pve2/200"].state == "unprotected"  # another node's guest
    assert "pve1/*" not in rows


def test_a_fleet_job_covers_the_guests_of_each_route() -> None:
    fleet = covers("fleet-replica/f", "fleet-replica",
                   {"job": {"routes": {"pve1": "pve3", "pve2": "pve3"}}}, QUARTER)
    guests = [Guest("pve1", 100, "web"), Guest("pve2", 200, "db")]
    rows = {r.subject: r for r in protection_rows(guests, fleet, [], NOW)}
    assert set(rows) == {"pve1/100", "pve2/200"}
    assert all(r.jobs == ("fleet-replica/f",) for r in rows.values())
    listed = covers("fleet-replica/g", "fleet-replica",
                    {"job": {"routes": {"pve1": "pve3"}, "vmids": [100]}})
    assert [(c.subject, c.destination) for c in listed] == [("pve1/100", "pve3")]


def test_the_copies_a_fleet_of_every_guest_registers_are_left_out() -> None:
    # A fleet of every guest of pve1 registers each copy on pve3 at VMID + offset: those are
    # copies, not guests to protect; pve3's own guests still are.
    guests = [Guest("pve1", 100, "web"), Guest("pve1", 101, "ct"), Guest("pve3", 100, "web"),
              Guest("pve3", 10101, "ct"), Guest("pve3", 300, "app")]
    for offset, copies in ((0, {"pve3/100"}), (10000, {"pve3/10101"})):
        fleet = covers("fleet-replica/f", "fleet-replica",
                       {"job": {"routes": {"pve1": "pve3"}, "vmid_offset": offset}})
        rows = {r.subject: r for r in protection_rows(guests, fleet, [], NOW)}
        everyone = {"pve1/100", "pve1/101", "pve3/100", "pve3/10101", "pve3/300"}
        assert set(rows) == everyone - copies, offset
        assert rows["pve3/300"].state == "unprotected"
    unregistered = covers("fleet-replica/n", "fleet-replica",
                          {"job": {"routes": {"pve1": "pve3"}, "register_vm": False}})
    assert "pve3/100" in {r.subject for r in protection_rows(guests, unregistered, [], NOW)}


def test_a_failed_over_copy_is_a_guest_of_its_own_until_a_job_copies_again() -> None:
    guests = [Guest("pve1", 100, "web"), Guest("pve3", 9100, "web")]
    job = covers("zfs-replica/vm100", "zfs-replica", replica_job(100), paused=True)
    replica = Record("pve1/100", "replica", "pve3", NOW - timedelta(minutes=10))
    failover = Record("pve1/100", "failover", "pve3/9100", NOW - timedelta(minutes=5))
    assert [r.subject for r in protection_rows(guests, job, [replica], NOW)] == ["pve1/100"]
    rows = {r.subject: r for r in protection_rows(guests, job, [replica, failover], NOW)}
    assert rows["pve3/9100"].state == "unprotected" and rows["pve3/9100"].problem
    assert rows["pve3/9100"].reasons == ("live copy of pve1/100 since its failover 5 min 0 s ago",
                                         "no job replicates or backs it up")
    assert rows["pve1/100"].reasons[0] == "failed over to pve3/9100 5 min 0 s ago"
    assert rows["pve1/100"].replica_at == replica.at  # a failover is no copy
    again = Record("pve1/100", "replica", "pve3", NOW - timedelta(minutes=1))
    rows = {r.subject: r for r in protection_rows(guests, job, [replica, failover, again], NOW)}
    assert set(rows) == {"pve1/100"} and not rows["pve1/100"].reasons
    gone = {r.subject: r for r in protection_rows(guests[:1], job, [replica, failover], NOW)}
    assert set(gone) == {"pve1/100"} and not gone["pve1/100"].reasons  # the copy was removed
    # a failover run again (it records again, with the same mark time): the first one's age
    marked = dataclasses.replace(failover, ref="2026-12-03 09:40:12Z")
    repeat = dataclasses.replace(marked, at=NOW - timedelta(minutes=1))
    rows = {r.subject: r for r in protection_rows(guests, job, [replica, marked, repeat], NOW)}
    assert rows["pve3/9100"].reasons[0] == "live copy of pve1/100 since its failover 5 min 0 s ago"
    # failed back: the live copy a replica again (a job copied after), the original aside
    home = Record("pve1/100", "failback", "pve3/9100", NOW - timedelta(minutes=2),
                  ref="pve1/102")
    guests.append(Guest("pve1", 102, "web"))
    rows = {r.subject: r for r in protection_rows(guests, job,
                                                  [replica, failover, home, again], NOW)}
    assert set(rows) == {"pve1/100", "pve1/102"} and not rows["pve1/100"].reasons
    assert rows["pve1/100"].replica_at == again.at  # a failback is no copy
    assert rows["pve1/102"].state == "unprotected"
    assert rows["pve1/102"].reasons[0] == ("original of pve1/100 set aside by its failback "
                                           "2 min 0 s ago; remove it once it is not needed")


def test_a_job_without_schedule_is_never_late() -> None:
    (cover,) = covers("zfs-replica/manual", "zfs-replica", replica_job(), interval=None)
    old = Record("pve1/100", "replica", "pve3", NOW - timedelta(days=300), "zfs-replica/manual")
    assert cover_state(cover, [old], NOW)[0] == "ok"
    assert cover_state(cover, [], NOW)[0] == "pending"


@given(st.integers(1, 24 * 60), st.integers(0, 5 * 24 * 60))
def test_late_exactly_when_older_than_twice_the_interval(interval_min: int, age_min: int) -> None:
    (cover,) = covers("j", "zfs-replica", replica_job(), interval=timedelta(minutes=interval_min))
    record = Record("pve1/100", "replica", "pve3", NOW - timedelta(minutes=age_min), "j")
    state, _ = cover_state(cover, [record], NOW)
    assert state == ("late" if age_min > 2 * interval_min else "ok")
