"""Deploy tier: `dapx up` stopped with SIGTERM (as systemd and `docker stop` stop it) stops
everything it started within seconds: the worker, the flow run in flight (which ends Crashed,
saying why) and the server; nothing is left running, and the lab it did not start stays up."""

from __future__ import annotations

import os
import signal
import subprocess
import time
import uuid
from pathlib import Path

from prefect.client.orchestration import get_client

from dapx.deployments import server
from dapx.lab import estate
from tests.deploy.conftest import BIN, free_port, prefect_env, run_cli, trust
from tests.helpers import tiny_guests
from tests.lab.test_replica_helpers import find_process

SRC, DST, NEW = "pve1", "pve3", 9650  # a VMID no other test uses


def processes_of(home: Path) -> list[int]:
    """Live processes whose environment carries PREFECT_HOME=home (dapx up's and its children's)."""
    mark = f"PREFECT_HOME={home}".encode() + b"\0"
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and mark in (entry / "environ").read_bytes():
                if (entry / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
                    found.append(int(entry.name))
        except OSError:
            continue
    return found


def wait_line(proc: subprocess.Popen, text: str, timeout: float = 180.0) -> list[str]:
    lines, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        lines.append(line)
        if text in line:
            return lines
    raise AssertionError(f"dapx up never said {text!r}:\n{''.join(lines)}")


def sending(run: uuid.UUID, timeout: float = 120.0) -> None:
    """Wait until the run's `zfs send` runs on the source; fail naming the run's state when
    the run ends (or never starts) without one."""
    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            if find_process(SRC, "zfs", "send"):
                return
            state = client.read_flow_run(run).state
            if state is not None and state.is_final():
                raise AssertionError(f"the run ended before any zfs send: {state.name}: "
                                     f"{state.message}")
            time.sleep(0.2)
    raise AssertionError(f"no zfs send on {SRC} in {timeout} s; the run is {state.name}")


def test_sigterm_stops_everything_dapx_up_started(lab: dict, tmp_path: Path) -> None:
    home, port = tmp_path / "home", free_port()
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env.update(PREFECT_HOME=str(home), PYTHONUNBUFFERED="1")
    up = subprocess.Popen([str(BIN / "dapx"), "up", "--port", str(port), "--lab", "yes"],
                          env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    api_url = f"http://127.0.0.1:{port}/api"
    try:
        wait_line(up, "worker started")
        with prefect_env(home, api_url):
            trust(SRC, DST)
            run_cli("dapx", "job", "create", "replica", "--source", SRC, "--guest", "100",
                    "--dest", DST, "--dest-vmid", str(NEW), "--bwlimit", "1M", "--name", "up-slow")
            out = run_cli("prefect", "deployment", "run", "zfs-replica/up-slow").stdout
            run = uuid.UUID(out.split("flow-run/")[1].split()[0].strip())
            sending(run)
        started = processes_of(home)
        assert len(started) >= 3  # dapx up, the server, the worker, the flow run

        stopping = time.monotonic()
        up.send_signal(signal.SIGTERM)
        assert up.wait(timeout=60) == 0
        assert time.monotonic() - stopping < 30
        assert processes_of(home) == [], "dapx up left processes running"
        assert all(n["state"] == "running" for n in estate.status()["nodes"].values())

        with prefect_env(home, api_url), server.prefect_server(port):
            with get_client(sync_client=True) as client:
                state = client.read_flow_run(run).state
        assert state.is_crashed(), state
    finally:
        if up.poll() is None:
            up.kill()
        for pid in processes_of(home):
            os.kill(pid, signal.SIGKILL)
        for node, words in ((SRC, ("zfs", "send")), (DST, ("zfs", "receive"))):
            while (pid := find_process(node, *words)) is not None:  # the cut transfer
                os.kill(pid, signal.SIGKILL)
                time.sleep(0.2)
        tiny_guests.remove_replicas(DST, [NEW])
        tiny_guests.remove_snapshots(SRC, f"dapx_{DST}-{NEW}_")
