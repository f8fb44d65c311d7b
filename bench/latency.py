"""Pick-up latency: `prefect deployment run` -> the run is Running (and -> Completed).

Run as root: `.venv/bin/python bench/latency.py [--runs 10]`. It brings the lab up (holding the
lab lock, as the tests do), starts a Prefect server and a worker the way `dapx up` starts them
(in a Prefect home of its own, so the product's database is never touched), deploys
node-check, and starts it `--runs` times with `prefect deployment run`, one after the other.
For each run it polls the API every 50 ms and prints the median and the spread of:

  picked up   command started -> state Running   (target: median <= 3 s)
  completed   command started -> state Completed

Never a timed test: numbers, not asserts.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

BIN = Path(sys.executable).parent
LAB_LOCK = Path("/tmp/.dapx-lab-session.lock")


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def measure_once(client, node: str) -> tuple[float, float]:  # noqa: ANN001
    started = time.monotonic()
    out = subprocess.run([str(BIN / "prefect"), "deployment", "run", "node-check/default",
                          "-p", f"node={node}"], capture_output=True, text=True,
                         check=True).stdout
    command = time.monotonic() - started
    run = uuid.UUID(out.split("flow-run/")[1].split()[0].strip())
    running = None
    while True:
        state = client.read_flow_run(run).state
        if running is None and state is not None and (state.is_running() or state.is_final()):
            running = time.monotonic() - started
        if state is not None and state.is_final():
            if not state.is_completed():
                raise RuntimeError(f"run {run} ended {state.type}: {state.message}")
            history = client.read_flow_run_states(run)
            created = client.read_flow_run(run).created
            print("  command %.2f s; " % command + ", ".join(
                f"{h.type.value.lower()} +{(h.timestamp - created).total_seconds():.2f}"
                for h in history), flush=True)
            return running, time.monotonic() - started
        time.sleep(0.05)


def spread(values: list[float]) -> str:
    return (f"median {statistics.median(values):5.2f} s   min {min(values):5.2f}   "
            f"max {max(values):5.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=10, help="runs to measure (10)")
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="dapx-bench-latency-"))
    os.environ["PREFECT_HOME"] = str(home)
    port = free_port()
    api_url = f"http://127.0.0.1:{port}/api"

    with open(LAB_LOCK, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        from dapx.lab import estate

        lab_was_up = any(n["state"] == "running" for n in estate.status()["nodes"].values())
        estate.up()
        from dapx.deployments import server

        with server.prefect_server(port, log_path=home / "server.log"):
            from prefect.client.orchestration import get_client

            # The server requires its credential: use it here and in the worker (environment).
            with server.use_credential(api_url, server.api_credential(home)):
                server.register_blocks()
                server.ensure_work_pool()
                from dapx.deployments.builtin import deploy_flow
                from dapx.lab.register import register_lab_nodes

                register_lab_nodes()
                deploy_flow("dapx.flows.nodes.node_check")
                worker = subprocess.Popen(server.worker_argv(limit=4), env=server.worker_env(),
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                          start_new_session=True)
                try:
                    with get_client(sync_client=True) as client:
                        measure_once(client, "pve1")  # the worker's first poll, warm caches
                        results = [measure_once(client, "pve1") for _ in range(args.runs)]
                finally:
                    from dapx.deployments.processes import stop_tree

                    stop_tree(worker, grace=10)
        if not lab_was_up:
            estate.down()
    picked, completed = zip(*results)
    print(f"node-check on pve1 through `prefect deployment run` and a process worker, "
          f"{args.runs} runs")
    print(f"picked up  {spread(list(picked))}   (target: median <= 3 s)")
    print(f"completed  {spread(list(completed))}")


if __name__ == "__main__":
    main()
