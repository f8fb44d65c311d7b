"""Deploy tier, notifications and protection state (A1-A4, X4, P7), as a user meets them.

A real Prefect server, a process worker on the ``dapx`` pool, replica jobs made with `dapx job
create` and run from their deployments on the lab, a real SMTP server (STARTTLS and a login)
and a real webhook receiver on loopback. Each test counts what arrived: ``failure`` mode sends
exactly one message for a failing run and none for a good one, ``always`` one per run,
``daily`` nothing until the summary lists it; an unreachable SMTP server leaves the job
Completed and its log says why; a run killed with SIGKILL is notified exactly once, whether
its worker survived (the worker marks it Crashed and runs the crash hook, the automation's
notify-run finds it done) or not (the run is marked Crashed from outside, as the heartbeat
automation does, and notify-run sends); `dapx status` shows each guest's ages and flags the
one whose job has not run within its schedule.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from prefect.client.orchestration import get_client

from dapx.lab import estate
from tests.deploy.conftest import BIN, dapx, run_cli, wait_final
from tests.lab.test_replica_helpers import preserved
from tests.helpers.receivers import SMTP_PASSWORD, HttpReceiver, SmtpReceiver

GOOD, FAIL, DAILY, CRASH, LATE = "nt-good", "nt-fail", "nt-daily", "nt-crash", "nt-late"
REPLICA_VMIDS = (8300, 8400)
TOKEN = "hook-T0ken-5ecret-77"


@pytest.fixture(scope="module")
def receivers(tmp_path_factory: pytest.TempPathFactory):
    with SmtpReceiver(tmp_path_factory.mktemp("smtp"), implicit_tls=False) as smtp, \
            HttpReceiver() as hook:
        yield smtp, hook


def _hook_url(hook: HttpReceiver) -> str:
    return f"json://127.0.0.1:{hook.port}/dapx?+X-Dapx-Token={TOKEN}"


def _add_targets(smtp: SmtpReceiver, hook: HttpReceiver, tmp: Path) -> None:
    run_cli("dapx", "notify", "add", "mail", "--url-file", "-", "--overwrite",
            input=smtp.url() + "\n")
    (tmp / "hook.url").write_text(_hook_url(hook))
    run_cli("dapx", "notify", "add", "hook", "--url-file", str(tmp / "hook.url"), "--overwrite")


@pytest.fixture(scope="module")
def setup(lab_nodes: str, receivers, tmp_path_factory):  # noqa: ANN001
    """Node blocks, trust pve1 -> pve2, the notification deployments and trigger, the two
    targets, and a process worker polling every second; cleaned up after the module."""
    smtp, hook = receivers
    from dapx.deployments.notify import deploy_notifications
    from dapx.flows.trust import trust_nodes

    assert "notify-run/default" in deploy_notifications()
    trust = asyncio.run(trust_nodes(source="pve1", destination="pve2"))
    with get_client(sync_client=True) as client:  # no scheduled summary in the middle of a test
        for name in ("daily-summary/default", "protection-status/default"):
            client.pause_deployment(client.read_deployment_by_name(name).id)
    _add_targets(smtp, hook, tmp_path_factory.mktemp("urls"))
    worker = subprocess.Popen(
        [str(BIN / "prefect"), "worker", "start", "--pool", "dapx", "--type", "process",
         "--limit", "4"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        env={**os.environ, "PREFECT_WORKER_QUERY_SECONDS": "1",
             "PREFECT_WORKER_PREFETCH_SECONDS": "1"}, start_new_session=True)
    # the replicas snapshot VM 100's seeded disks: they are given back as they were after
    seeded = preserved("pve1", [f"rpool/data/vm-100-disk-{i}" for i in (0, 1)])
    try:
        with seeded:
            yield smtp, hook
    finally:
        from dapx.deployments.processes import stop_tree

        stop_tree(worker, grace=3.0)  # it runs nothing by now: no need to wait long
        remove_jobs(GOOD, FAIL, DAILY, CRASH, LATE)
        if trust.key_authorised:  # leave pve2 as the lab tier expects it: pve1 not trusted
            asyncio.run(trust_nodes(source="pve1", destination="pve2", revoke=True))
        for vmid in REPLICA_VMIDS:
            estate.run("pve2", ["rm", "-f", f"/etc/pve/nodes/pve2/qemu-server/{vmid}.conf"])
            for disk in (0, 1):
                estate.run("pve2", ["zfs", "destroy", "-r", f"rpool/replica/vm-{vmid}-disk-{disk}"])


# -----------------------------------------------------------------------------------------------
# helpers


def create_job(name: str, guest: int, notify: str, *extra: str) -> None:
    assert dapx("job", "create", "replica", "--source", "pve1", "--guest", str(guest),
                "--dest", "pve2", "--name", name, "--notify", notify, "--keep", "2",
                "--replace", *extra) == 0


def remove_jobs(*names: str) -> None:
    from dapx.deployments.jobs import list_jobs, remove_job

    existing = {j["name"] for j in list_jobs()}
    for name in names:
        if name in existing:
            remove_job(name)


def start(job: str) -> uuid.UUID:
    from prefect.deployments import run_deployment

    return run_deployment(f"zfs-replica/{job}", timeout=0).id


def wait_running(run_id: uuid.UUID, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            if client.read_flow_run(run_id).state.is_running():
                return
            time.sleep(0.2)
    raise AssertionError(f"flow run {run_id} did not start in {timeout} s")


def run_logs(run_id: uuid.UUID) -> str:
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    with get_client(sync_client=True) as client:
        logs = client.read_logs(log_filter=LogFilter(
            flow_run_id=LogFilterFlowRunId(any_=[run_id])))
    return "\n".join(log.message for log in logs)


def wait_log(run_id: uuid.UUID, text: str, timeout: float = 30.0) -> str:
    """The run's logs once ``text`` appears (the API log handler ships every ~2 s)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        logs = run_logs(run_id)
        if text in logs:
            return logs
        time.sleep(0.5)
    raise AssertionError(f"{text!r} not in the logs of {run_id}:\n{run_logs(run_id)}")


HOOK_DONE = "Hook 'notify_hook' finished running successfully"


def messages(smtp: SmtpReceiver, hook: HttpReceiver, job: str) -> tuple[list, list]:
    """(mails, webhook requests) about ``job``."""
    return ([m for m in smtp.mails if f"/{job}" in m.subject],
            [r for r in hook.requests if f"/{job}" in r.json()["title"]])


def assert_count(smtp: SmtpReceiver, hook: HttpReceiver, job: str, count: int,
                 settle: float = 1.5) -> tuple[list, list]:
    """Exactly ``count`` mails and webhooks about ``job``, still so ``settle`` s later."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and min(map(len, messages(smtp, hook, job))) < count:
        time.sleep(0.2)
    time.sleep(settle)
    mails, hooks = messages(smtp, hook, job)
    assert (len(mails), len(hooks)) == (count, count), (
        [m.subject for m in mails], [r.json()["title"] for r in hooks])
    return mails, hooks


def assert_no_secret(*texts: str) -> None:
    for text in texts:
        assert TOKEN not in text and SMTP_PASSWORD not in text


# -----------------------------------------------------------------------------------------------
# tests, in the order a user meets them


def test_notify_test_says_per_target_whether_it_went_out(setup, tmp_path: Path) -> None:  # noqa: ANN001
    smtp, hook = setup
    (tmp_path / "down.url").write_text("mailtos://dapx:Dwn-Pa55word@127.0.0.1:9?"
                                       "from=dapx@example.com&to=ops@example.com")
    run_cli("dapx", "notify", "add", "down", "--url-file", str(tmp_path / "down.url"))
    before = len(smtp.mails), len(hook.requests)
    result = run_cli("dapx", "notify", "test", check=False)
    assert result.returncode == 1, result.stdout + result.stderr
    lines = sorted(result.stdout.splitlines())
    assert lines[0].startswith("down: NOT sent:") and "Connection refused" in lines[0]
    assert lines[1:] == ["hook: sent", "mail: sent"]
    assert (len(smtp.mails), len(hook.requests)) == (before[0] + 1, before[1] + 1)
    assert hook.requests[-1].headers["X-Dapx-Token"] == TOKEN
    listed = run_cli("dapx", "notify", "list").stdout
    assert "down" in listed and "mailtos" in listed and "127.0.0.1" in listed
    assert_no_secret(result.stdout, result.stderr, listed,
                     run_cli("prefect", "block", "inspect", "dapx-notifications/default").stdout)
    assert "Dwn-Pa55word" not in result.stdout + listed
    bad = run_cli("dapx", "notify", "add", "x", "--url-file", "/nonexistent", check=False)
    assert bad.returncode == 2 and "cannot read /nonexistent" in bad.stderr
    run_cli("dapx", "notify", "remove", "down")


def test_failure_mode_one_message_for_a_failing_run_none_for_a_good_one(setup) -> None:  # noqa: ANN001
    smtp, hook = setup
    create_job(FAIL, 555, "failure")
    create_job(GOOD, 100, "failure", "--dest-vmid", "8300", "--schedule", "0 3 1 1 *")
    failed_id, good_id = start(FAIL), start(GOOD)
    failed, good = wait_final(failed_id), wait_final(good_id)
    assert failed.state.is_failed() and good.state.is_completed(), (failed.state, good.state)
    wait_log(good_id, HOOK_DONE)
    (mail,), (request,) = assert_count(smtp, hook, FAIL, 1)
    assert messages(smtp, hook, GOOD) == ([], [])
    assert mail.subject == f"[dapx] FAILED zfs-replica/{FAIL}: guest 555, pve1 -> pve2"
    for line in (f"Job: zfs-replica/{FAIL}", "Outcome: Failed", "Protects: guest 555",
                 "Nodes: pve1 -> pve2", "Duration: ", "guest 555 is not on node pve1",
                 f"/runs/flow-run/{failed_id}"):
        assert line in mail.text
    assert request.json()["title"] == mail.subject
    assert request.headers["X-Dapx-Token"] == TOKEN
    assert_no_secret(mail.text, request.body.decode(), run_logs(failed_id))


def test_always_mode_one_message_per_run(setup) -> None:  # noqa: ANN001
    smtp, hook = setup
    create_job(GOOD, 100, "always", "--dest-vmid", "8300", "--schedule", "0 3 1 1 *")
    create_job(FAIL, 555, "always")
    good_id, failed_id = start(GOOD), start(FAIL)
    assert wait_final(good_id).state.is_completed() and wait_final(failed_id).state.is_failed()
    (mail,), _ = assert_count(smtp, hook, GOOD, 1, settle=0)
    mails, _ = assert_count(smtp, hook, FAIL, 2)  # one from the failure-mode run before
    assert mail.subject.startswith(f"[dapx] COMPLETED zfs-replica/{GOOD}: guest 100")
    assert "Bytes: " in mail.text and "Made: dapx_pve2-8300_" in mail.text
    assert f"/runs/flow-run/{good_id}" in mail.text
    assert f"/runs/flow-run/{failed_id}" in mails[-1].text
    # the protection state names the run and its job (read from the run's context)
    from dapx.tasks.store import open_store

    async def replicas() -> list:
        async with open_store() as store:
            return [r for r in await store.latest() if (r.subject, r.kind) == ("pve1/100",
                                                                             "replica")]

    assert (f"zfs-replica/{GOOD}", str(good_id)) in [(r.job, r.flow_run_id)
                                                    for r in asyncio.run(replicas())]


def test_daily_mode_sends_nothing_until_the_summary_lists_it(setup) -> None:  # noqa: ANN001
    smtp, hook = setup
    create_job(DAILY, 555, "daily")
    run_id = start(DAILY)
    assert wait_final(run_id).state.is_failed()
    wait_log(run_id, HOOK_DONE)
    assert_count(smtp, hook, DAILY, 0, settle=0.5)
    from prefect.deployments import run_deployment

    before = len(smtp.mails)
    summary_run = run_deployment("daily-summary/default", timeout=0)
    assert wait_final(summary_run.id).state.is_completed()
    (mail,) = smtp.wait_for(before + 1)[before:]
    assert mail.subject.startswith("[dapx] daily summary:") and "failed" in mail.subject
    assert f"zfs-replica/{DAILY} [daily]: 0 completed, 1 failed, 0 crashed, 0 late" in mail.text
    assert f"zfs-replica/{DAILY} Failed: InputError: guest 555 is not on node pve1" in mail.text
    assert f"zfs-replica/{FAIL} [always]: 0 completed, 2 failed" in mail.text
    assert "Guests late or unprotected:" in mail.text and "pve2/200" in mail.text
    assert_count(smtp, hook, DAILY, 0, settle=0)  # the summary is the only message


def test_unreachable_smtp_leaves_the_job_completed_and_logs_why(setup, tmp_path: Path) -> None:  # noqa: ANN001
    smtp, hook = setup
    (tmp_path / "closed.url").write_text(smtp.url().replace(f":{smtp.port}", ":9"))
    run_cli("dapx", "notify", "add", "mail", "--url-file", str(tmp_path / "closed.url"),
            "--overwrite")
    try:
        run_id = start(GOOD)  # still in always mode
        assert wait_final(run_id).state.is_completed()
        logs = wait_log(run_id, "notification to mail NOT sent")
        assert "Connection refused" in logs and "notification sent to hook" in logs
        assert_no_secret(logs)
    finally:
        _add_targets(smtp, hook, tmp_path)


def _flow_process(run_id: uuid.UUID, timeout: float = 60.0) -> int:
    """The pid of the process the worker started for ``run_id``."""
    marker = f"PREFECT__FLOW_RUN_ID={run_id}".encode()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                if marker in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
                    return int(pid)
            except OSError:
                continue
        time.sleep(0.2)
    raise AssertionError(f"no process runs flow run {run_id}")


def _notify_runs_of(target: uuid.UUID) -> list:
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName

    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(
            any_=["notify-run"])))
    return [r for r in runs if str(target) in str(r.parameters.get("flow_run_id"))]


def _wait_notify_run(target: uuid.UUID, timeout: float = 60.0):  # noqa: ANN202
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = _notify_runs_of(target)
        if found and found[0].state.is_final():
            return found
        time.sleep(0.5)
    raise AssertionError(f"the automation started no notify-run for {target}")


def test_a_run_killed_with_sigkill_is_notified_exactly_once(setup) -> None:  # noqa: ANN001
    from dapx.tasks.locks import acquire, ensure_limit, guest_lock_name, release

    smtp, hook = setup
    create_job(CRASH, 100, "failure", "--dest-vmid", "8400")
    lock = guest_lock_name("pve1", 100)
    asyncio.run(ensure_limit(lock))
    lease = asyncio.run(acquire(lock, "holding VM 100 for a test", 30, None))
    try:  # the run waits for this lock, touching nothing, until it is killed
        run_id = start(CRASH)
        pid = _flow_process(run_id)
        wait_running(run_id)
        os.kill(pid, signal.SIGKILL)
        run = wait_final(run_id)
    finally:
        asyncio.run(release(lock, lease))
    assert run.state.is_crashed(), run.state
    notify_runs = _wait_notify_run(run_id)
    assert len(notify_runs) == 1 and notify_runs[0].state.is_completed()
    (mail,), (request,) = assert_count(smtp, hook, CRASH, 1, settle=2.0)
    assert mail.subject.startswith(f"[dapx] CRASHED zfs-replica/{CRASH}: guest 100")
    assert "Outcome: Crashed" in mail.text and f"/runs/flow-run/{run_id}" in mail.text
    # the crash hook (in the worker) and notify-run both tried; one sent, one found it done
    assert "already notified" in run_logs(run_id) or \
        "already notified" in run_logs(notify_runs[0].id)


def test_a_run_whose_worker_died_too_is_notified_once_when_marked_crashed(setup) -> None:  # noqa: ANN001
    from prefect.states import Crashed, Running, Scheduled

    smtp, hook = setup
    before = len(messages(smtp, hook, CRASH)[0])
    with get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name(f"zfs-replica/{CRASH}")
        later = datetime.now(timezone.utc) + timedelta(hours=1)  # never picked up here
        run = client.create_flow_run_from_deployment(
            deployment.id, state=Scheduled(scheduled_time=later))
        # What a worker does when it starts the run, then what the heartbeat automation does
        # when run and worker died together: no hook runs anywhere.
        client.set_flow_run_state(run.id, Running(), force=True)
        client.set_flow_run_state(run.id, Crashed(message="no heartbeat for 90 s"), force=True)
    assert _wait_notify_run(run.id)[0].state.is_completed()
    mails, _ = assert_count(smtp, hook, CRASH, before + 1, settle=2.0)
    assert "Message: no heartbeat for 90 s" in mails[-1].text
    assert f"/runs/flow-run/{run.id}" in mails[-1].text


def test_status_shows_ages_and_flags_a_guest_whose_job_is_late(setup) -> None:  # noqa: ANN001
    from dapx.core.protection import Record
    from dapx.tasks.store import open_store

    # The PBS backup flows are not on main yet: record a backup of VM 100 through the
    # store's API, as the backup flow will; and a replica of CT 101 by its job 30 min ago,
    # while that job runs every 5 minutes (late after 10).
    remove_jobs(FAIL, DAILY, CRASH)  # they cover VM 555 (none) and never succeeded
    create_job(LATE, 101, "failure", "--dest-vmid", "8401", "--schedule", "*/5 * * * *",
               "--paused")
    now = datetime.now(timezone.utc)

    async def record() -> None:
        async with open_store() as store:
            await store.add(Record("pve1/100", "backup", "pbs1:store1",
                                   now - timedelta(hours=2), "pbs-backup/vm100-nightly",
                                   "vm/100/2026-05-01T06:00:00Z", 12345, 3.0))
            await store.add(Record("pve1/101", "replica", "pve2",
                                   now - timedelta(minutes=30), f"zfs-replica/{LATE}"))

    asyncio.run(record())
    result = run_cli("dapx", "status", check=False)
    assert result.returncode == 1, result.stdout + result.stderr  # some guest needs attention
    rows = {line.split()[0]: line for line in result.stdout.splitlines()[1:] if line.strip()}
    assert rows["pve1/100"].split()[2] == "ok"
    # replicated by nt-good a minute or two ago (seconds, or minutes and seconds); backed up
    # 2 h ago by the record above, or since then by the backup job's deploy test
    assert re.search(r" ok +(\d+\.\d s|\d+ min \d+ s) \(pve2\) +"
                     r"(2 h 0 min|\d+ min \d+ s|\d+\.\d s) \(pbs1:store1\)",
                     rows["pve1/100"]), rows["pve1/100"]
    assert rows["pve1/101"].split()[2] == "late"
    assert f"zfs-replica/{LATE}: last replica 30 min" in rows["pve1/101"]
    assert "schedule allows 10 min 0 s (schedule paused)" in rows["pve1/101"]
    assert rows["pve2/200"].split()[2] == "unprotected"
    assert "pve2/8300" not in rows  # the replica nt-good registered is a copy, not a guest
    with get_client(sync_client=True) as client:
        from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

        from prefect.client.schemas.sorting import ArtifactSort

        (artifact,) = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["dapx-protection"])),
            sort=ArtifactSort.CREATED_DESC, limit=1)
    assert "pve1/101" in str(artifact.data) and "late" in str(artifact.data)
