"""Pure notification rules (A3): which runs send a message, what it says, how secrets in
target URLs are kept out of text; cron intervals for "late"; the daily summary's text."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dapx.core.cron import longest_gap
from dapx.core.digest import JobRun, NodeCheck, run_bucket, summary
from dapx.core.notify import (RunNotice, daily_cron, describe_job, job_mode, run_body,
                              run_subject, scrub, secret_parts, should_notify,
                              state_detail, ui_url_from_api, with_recipient)
from dapx.core.protection import Protection
from dapx.errors import InputError

OUTCOMES = ("Completed", "Failed", "Crashed")


@pytest.mark.parametrize("mode, sends", [
    ("always", {"Completed", "Failed", "Crashed"}),
    ("failure", {"Failed", "Crashed"}),
    ("daily", set()),
    ("never", set()),
    ("typo", {"Failed", "Crashed"}),  # an unknown mode never silences a failure
])
def test_modes(mode: str, sends: set[str]) -> None:
    assert {o for o in OUTCOMES if should_notify(mode, o)} == sends
    assert not should_notify(mode, "Running")


def test_mode_and_subject_are_read_from_the_job_parameter() -> None:
    params = {"job": {"source": "pve1", "guest": 100, "destination": "pve3",
                      "notify": "always"}, "dry_run": False}
    assert job_mode(params) == "always"
    assert job_mode({"job": {"source": "pve1"}}) == "failure"
    assert describe_job(params) == ("guest 100", "pve1 -> pve3")
    assert describe_job({"job": {"source": "pve1", "dataset": "rpool/data/share",
                                 "destination": "pve2"}}) == \
        ("dataset rpool/data/share", "pve1 -> pve2")


def test_message_names_job_guest_nodes_outcome_duration_bytes_and_link() -> None:
    notice = RunNotice(job="zfs-replica/vm100-to-pve3", outcome="Failed", what="guest 100",
                       nodes="pve1 -> pve3", detail="disk scsi0: dataset busy",
                       started=datetime(2026, 5, 1, 3, 0, tzinfo=timezone.utc), seconds=125.0,
                       bytes_sent=33554432, refs=("dapx_pve3-100_x",),
                       url="http://127.0.0.1:4200/runs/flow-run/abc")
    assert run_subject(notice) == \
        "[dapx] FAILED zfs-replica/vm100-to-pve3: guest 100, pve1 -> pve3"
    body = run_body(notice)
    for expected in ("Job: zfs-replica/vm100-to-pve3", "Outcome: Failed", "Protects: guest 100",
                     "Nodes: pve1 -> pve3", "Duration: 2 min 5 s", "Bytes: 32.0 MiB",
                     "Message: disk scsi0: dataset busy",
                     "Run: http://127.0.0.1:4200/runs/flow-run/abc"):
        assert expected in body


def test_state_detail_drops_prefects_lead_in() -> None:
    assert state_detail("Flow run encountered an exception: InputError: guest 555 is not on "
                        "node pve1\nTraceback...") == "InputError: guest 555 is not on node pve1"
    assert state_detail(None) == "" and state_detail("Process exited -9") == "Process exited -9"


def test_ui_link_is_derived_from_the_api_url() -> None:
    assert ui_url_from_api("http://10.0.0.5:4200/api") == "http://10.0.0.5:4200"
    assert ui_url_from_api("https://dapx.example.com/api/") == "https://dapx.example.com"
    assert ui_url_from_api(None) is None


def test_default_recipient_fills_only_mail_urls_naming_none() -> None:
    assert with_recipient("mailtos://u:p@h:587?from=a@example.com", "ops@example.com") == \
        "mailtos://u:p@h:587?from=a@example.com&to=ops@example.com"
    assert with_recipient("mailto://u:p@h", "ops@example.com") == \
        "mailto://u:p@h?to=ops@example.com"
    for unchanged in ("mailtos://u:p@h?to=x@example.com", "mailtos://u:p@h/x@example.com",
                      "json://h/x"):
        assert with_recipient(unchanged, "ops@example.com") == unchanged


def test_secret_parts_of_urls_are_scrubbed_but_settings_stay_readable() -> None:
    url = ("json://bob:Pa55word@hooks.example.com:8443/T0KEN-PATH?+Authorization=Bearer%20"
           "xyz789&mode=ssl&-key=q1w2e3")
    text = ("failed https://hooks.example.com:8443/T0KEN-PATH?key=q1w2e3 with "
            "Authorization: Bearer xyz789 as bob:Pa55word (mode ssl)")
    clean = scrub(text, secret_parts(url))
    for secret in ("Pa55word", "T0KEN-PATH", "xyz789", "q1w2e3"):
        assert secret not in clean
    assert "hooks.example.com:8443" in clean and "mode ssl" in clean
    assert secret_parts("mailtos://u:pw@h:bad-port") == ["mailtos://u:pw@h:bad-port"]


@given(st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJ0123456789-_.~", min_size=3,
               max_size=24))
def test_any_password_never_survives_scrubbing(password: str) -> None:
    url = f"mailtos://dapx:{password}@smtp.example.com:465?mode=ssl"
    assert password not in scrub(f"login dapx:{password} refused; retried {password}",
                                 secret_parts(url))


@pytest.mark.parametrize("line, gap", [
    ("*/15 * * * *", timedelta(minutes=15)),
    ("5/20 * * * *", timedelta(minutes=20)),
    ("0 8 * * *", timedelta(days=1)),
    ("0 8 * * 1-5", timedelta(days=3)),  # Friday to Monday
    ("@hourly", timedelta(hours=1)),
    ("0 3 1 1 *", timedelta(days=366)),  # a leap year lies in the window
    ("0 0 1 * 1", timedelta(days=7)),  # day of month OR Monday
])
def test_longest_gap(line: str, gap: timedelta) -> None:
    assert longest_gap(line) == gap


def test_longest_gap_of_a_line_that_never_fires_and_of_a_bad_line() -> None:
    assert longest_gap("0 0 30 2 *") is None
    with pytest.raises(InputError, match="minute"):
        longest_gap("61 * * * *")


@given(st.sampled_from([1, 2, 3, 4, 5, 6, 10, 12, 15, 20, 30]), st.integers(0, 23))
def test_gap_of_regular_minute_steps(step: int, hour: int) -> None:
    assert longest_gap(f"*/{step} * * * *") == timedelta(minutes=step)
    assert longest_gap(f"0 {hour} * * *") == timedelta(days=1)


def test_daily_cron() -> None:
    assert daily_cron("08:00") == "0 8 * * *"
    assert daily_cron("23:45") == "45 23 * * *"
    with pytest.raises(InputError):
        daily_cron("8am")


def test_summary_counts_every_job_and_lists_failures_late_guests_and_failing_nodes() -> None:
    now = datetime(2026, 5, 1, 6, 0, tzinfo=timezone.utc)
    runs = [JobRun("zfs-replica/a", "COMPLETED", "Completed", now - timedelta(hours=2)),
            JobRun("zfs-replica/a", "FAILED", "Failed", now - timedelta(hours=1),
                   "guest 555 is not on node pve1", "http://ui/runs/flow-run/1"),
            JobRun("zfs-replica/b", "CRASHED", "Crashed", now - timedelta(hours=3)),
            JobRun("zfs-replica/b", "SCHEDULED", "Late", now - timedelta(minutes=5)),
            JobRun("zfs-replica/b", "SCHEDULED", "Scheduled", now + timedelta(minutes=5))]
    rows = [Protection("pve1/101", "ct", "unprotected", reasons=("no job",)),
            Protection("pve1/100", "vm", "ok")]
    checks = [NodeCheck("pve2", False, now, "ssh: connection refused"), NodeCheck("pve1", True)]
    subject, body = summary({"zfs-replica/a": "daily", "zfs-replica/b": "failure",
                             "zfs-replica/idle": "always"}, runs, rows, checks, now,
                            "Europe/Rome")
    assert subject == ("[dapx] daily summary: 4 runs, 1 failed, 1 crashed, 1 late, "
                       "1 guests late or unprotected, 1 nodes failing their check")
    assert "DAPX daily summary, 2026-05-01 08:00 Europe/Rome" in body
    assert "zfs-replica/a [daily]: 1 completed, 1 failed, 0 crashed, 0 late" in body
    assert "zfs-replica/b [failure]: 0 completed, 0 failed, 1 crashed, 1 late" in body
    assert "zfs-replica/idle [always]: 0 completed" in body
    assert "zfs-replica/a Failed: guest 555 is not on node pve1" in body
    assert "http://ui/runs/flow-run/1" in body
    assert "pve1/101 (ct) unprotected: no job" in body and "pve1/100" not in body
    nodes = body.split("Nodes whose last check failed:")[1]
    assert nodes.strip() == "pve2 2026-05-01 08:00: ssh: connection refused"
    assert run_bucket("SCHEDULED", "Scheduled") is None


def test_quiet_day_says_all_well() -> None:
    now = datetime(2026, 5, 1, tzinfo=timezone.utc)
    subject, body = summary({}, [], [], [], now, "UTC")
    assert subject == "[dapx] daily summary: 0 runs, all well"
    assert "no jobs" in body
