"""The failed-over mark (X5): what the failover flow writes as a replica config's first line,
and its refusals, without a lab."""

from __future__ import annotations

import pytest

from dapx.core.jobspec import ReplicaJob
from dapx.core.registration import failed_over_from, failed_over_text
from dapx.errors import ConflictError
from dapx.flows.failover import refusal

CONFIG = "#dapx-replica-of: pve1/100\n#web server\nmemory: 2048\nscsi0: local-zfs:vm-9100-disk-0\n"
WHEN = "2026-12-03 09:40:12Z"


def test_the_first_line_becomes_the_failed_over_mark_and_the_rest_stays() -> None:
    marked = failed_over_text(CONFIG, "pve1/100", WHEN)
    assert marked == CONFIG.replace("#dapx-replica-of: pve1/100",
                                    f"#dapx-failed-over-from: pve1/100 {WHEN}")
    assert failed_over_from(marked) == f"pve1/100 {WHEN}"
    assert failed_over_text(marked, "pve1/100", "later") == marked  # a repeat changes nothing
    assert failed_over_from(CONFIG) is None


@pytest.mark.parametrize("text", [
    "memory: 2048\n",  # a guest of the administrator's
    "#dapx-replica-of: pve2/100\nmemory: 2048\n",  # the replica of another guest
    f"#dapx-failed-over-from: pve1/1000 {WHEN}\nmemory: 2048\n",  # another failed-over guest
    "#web\n#dapx-replica-of: pve1/100\n",  # a mark that is not the first line
])
def test_the_config_of_another_guest_is_refused(text: str) -> None:
    with pytest.raises(ConflictError, match="belongs to another guest"):
        failed_over_text(text, "pve1/100", WHEN)


def _job() -> ReplicaJob:
    return ReplicaJob(source="pve1", guest=100, destination="pve3", dest_vmid=9100)


def test_refusals_by_what_the_source_says() -> None:
    assert "would run two copies" in refusal("running on pve1", _job(), source_down=True)
    assert "running on pve2" in refusal("running on pve2", _job(), source_down=False)
    assert refusal("stopped on pve1", _job(), source_down=False) is None
    down = refusal("unreachable: cannot reach pve1 (198.18.213.11:8006)", _job(), False)
    assert down.startswith("cannot ask pve1 whether guest 100 runs (cannot reach pve1 "
                           "(198.18.213.11:8006)): if pve1 is down, run again with source_down")
    assert refusal("unreachable: timed out", _job(), source_down=True) is None
    assert refusal("absent", _job(), source_down=False).startswith("guest 100 is not on pve1")
    assert refusal("absent", _job(), source_down=True) is None


def test_the_failover_message_says_which_guest_runs_where() -> None:
    """A failover run's notification names the guest and the started copy, not a copy's bytes
    (its last replica run is a run of its own, with its own message)."""
    import uuid
    from datetime import datetime, timedelta, timezone
    from types import SimpleNamespace

    from dapx.core.notify import run_subject
    from dapx.core.protection import Record
    from dapx.flows.notify import build_notice
    from dapx.tasks.runs import RunFacts

    start = datetime(2026, 12, 3, 9, 35, tzinfo=timezone.utc)
    run = SimpleNamespace(id=uuid.uuid4(), parameters={"job_name": "vm100-to-pve3"},
                          start_time=start, end_time=start + timedelta(seconds=4))
    facts = RunFacts(flow_run=run, job="failover/default", is_job=True)
    done = SimpleNamespace(message="", timestamp=run.end_time)
    record = Record("pve1/100", "failover", "pve3/9100", run.end_time, ref=WHEN)
    notice = build_notice(facts, done, "Completed", [record])
    assert run_subject(notice) == ("[dapx] COMPLETED failover/default: pve1/100 failed over "
                                   "to pve3/9100")
    assert notice.bytes_sent is None and notice.refs == ()
    refused = build_notice(facts, SimpleNamespace(message="guest 100 is running on pve1",
                                                  timestamp=run.end_time), "Failed", [])
    assert run_subject(refused) == "[dapx] FAILED failover/default: job vm100-to-pve3"
    assert refused.detail == "guest 100 is running on pve1"
