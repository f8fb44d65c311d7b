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
    # a failback: what came home, the bytes of its copies, not their scratch snapshots
    facts = RunFacts(flow_run=run, job="failback/default", is_job=True)
    copies = [Record("pve3/9100", "replica", "pve1", run.end_time, ref=f"dapx_pve1-101_{i}",
                     bytes_sent=1024) for i in (1, 2)]
    home = Record("pve1/100", "failback", "pve3/9100", run.end_time, ref="pve1/102")
    notice = build_notice(facts, done, "Completed", [*copies, home])
    assert run_subject(notice) == ("[dapx] COMPLETED failback/default: pve1/100 failed back "
                                   "from pve3/9100")
    assert notice.bytes_sent == 2048 and notice.refs == ()


# -- failback (X5's second half) ------------------------------------------------------------------

COPY = ("#dapx-replica-of: pve3/9400\n"
        f"#dapx-failed-over-from: pve1/100 {WHEN}\n"
        "#web server\ncores: 4\nmemory: 4096\nnet0: virtio=BC:24:11:00:00:01,bridge=vmbr0\n"
        "scsi0: local-zfs:vm-101-disk-0,size=32M\n")
ORIGINAL = ("#web server\nboot: order=scsi0\ncores: 2\ncpu: x86-64-v2-AES\n"
            "hookscript: local:snippets/check.pl\nhostpci0: 0000:01:00.0\nmemory: 2048\n"
            "onboot: 1\nscsi0: local-zfs:vm-100-disk-0,size=32M\n"
            "\n[before-upgrade]\nmemory: 1024\nonboot: 1\n")


def test_the_guest_home_keeps_the_live_config_and_gets_its_node_bound_keys_back() -> None:
    from dapx.core.registration import failed_back_from, failed_back_text

    home = failed_back_text(COPY, ORIGINAL, "qemu", "pve3/9400", WHEN)
    assert home.split("\n") == [
        f"#dapx-failed-back-from: pve3/9400 {WHEN}", "#web server",
        "cores: 4", "hookscript: local:snippets/check.pl", "hostpci0: 0000:01:00.0",
        "memory: 4096", "net0: virtio=BC:24:11:00:00:01,bridge=vmbr0", "onboot: 1",
        "scsi0: local-zfs:vm-101-disk-0,size=32M", ""]  # what the live copy ran with stays
    assert failed_back_from(home) == f"pve3/9400 {WHEN}"
    assert failed_back_text(home, ORIGINAL, "qemu", "pve3/9400", "later") == home  # repeat
    assert "cpu: x86-64-v2-AES" in failed_back_text(COPY.replace("cores: 4", "cores: 4\ncpu: host"),
                                                    ORIGINAL, "qemu", "pve3/9400", WHEN,
                                                    restore_cpu=True)
    # a second round: the earlier round's failed-back line, carried in the description, goes
    round2 = COPY.replace("#web server", f"#dapx-failed-back-from: pve3/9400 {WHEN}\n#web server")
    assert failed_back_text(round2, ORIGINAL, "qemu", "pve3/9400", "later").count(
        "#dapx-failed-back-from") == 1
    alone = failed_back_text(COPY, None, "qemu", "pve3/9400", WHEN)  # the original is gone
    assert "onboot" not in alone and "hookscript" not in alone
    with pytest.raises(ConflictError, match="not the failback's copy of pve3/9400"):
        failed_back_text(ORIGINAL, None, "qemu", "pve3/9400", WHEN)


def test_the_original_set_aside_never_starts_by_itself() -> None:
    from dapx.core.registration import stale_original_text

    stale = stale_original_text(ORIGINAL, "qemu", "pve1/100", "pve3/9400", WHEN)
    assert stale.startswith(f"#dapx-stale-original-of: pve1/100 before its failback from "
                            f"pve3/9400 {WHEN}\n#web server\n")
    main, _, snapshot = stale.partition("[before-upgrade]")
    assert "onboot" not in main and "onboot: 1" in snapshot  # a snapshot's record stays
    assert stale_original_text(stale, "qemu", "pve1/100", "pve3/9400", "later") == stale
    home = f"#dapx-failed-back-from: pve3/9400 {WHEN}\n" + ORIGINAL  # failed back before
    assert stale_original_text(home, "qemu", "pve1/100", "pve3/9400", "later").split("\n")[:2] \
        == ["#dapx-stale-original-of: pve1/100 before its failback from pve3/9400 later",
            "#web server"]


def test_the_live_copy_becomes_the_replica_again() -> None:
    from dapx.core.registration import replica_again_text

    marked = failed_over_text(CONFIG, "pve1/100", WHEN)
    assert replica_again_text(marked, "pve1/100") == CONFIG
    assert replica_again_text(CONFIG, "pve1/100") == CONFIG
    with pytest.raises(ConflictError, match="not the failed-over copy of pve1/10$"):
        replica_again_text(marked, "pve1/10")


def test_the_failback_s_own_snapshots_are_told_from_the_jobs() -> None:
    from dapx.core.failback import btrfs_home_scratch, btrfs_live_scratch, zfs_scratch

    home = ["dapx_pve3-9400_20261203T090000Z", "autosnap_daily", "dapx_pve1-101_20261203T1"]
    assert zfs_scratch(home, "pve1") == ["dapx_pve1-101_20261203T1"]
    assert zfs_scratch(home, "pve3") == ["dapx_pve3-9400_20261203T090000Z"]  # names the node
    paths = ["images/100/vm-100-disk-0", "replica/pve3-9400/vm-9400-disk-0@dapx_pve2-101_1",
             "replica/pve3-94000/vm-94000-disk-0@dapx_pve2-101_1",
             "images/9400/vm-9400-disk-0@dapx_pve2-101_1",
             "images/9400/vm-9400-disk-0@dapx_pve3-9400_1",
             "images/9400/vm-9400-disk-10@dapx_pve2-101_1"]
    assert btrfs_home_scratch(paths, "replica/pve3-9400") == [paths[1]]
    assert btrfs_live_scratch(paths, "pve2", ["images/9400/vm-9400-disk-0"]) == [paths[3]]
