"""Shared helpers for the replication lab tests (test code: runs lab commands directly)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from pathlib import Path
from collections.abc import AsyncIterator, Awaitable, Iterator
from contextlib import asynccontextmanager, contextmanager

import pytest

from dapx.lab import estate
from dapx.lab.common import LabError


def lab_state(request: pytest.FixtureRequest) -> dict:
    """The lab: the session fixture from conftest (brings it up, takes it down), or, when
    DAPX_LAB_RUNNING=1, the lab someone else already runs (never taken down here)."""
    if os.environ.get("DAPX_LAB_RUNNING") != "1":
        request.getfixturevalue("lab")
    # Read state.json now, not the session's copy: a rebuild earlier in the session (the
    # lab tests kill and repair nodes) seeds the guests again, with new bytes and checksums.
    return estate.load_state()


def sh(node: str, argv: list[str], check: bool = True, input: bytes | str | None = None) -> str:
    """Run argv inside a lab node; stdout."""
    result = estate.run(node, argv, check=check, input=input, timeout=300)
    return result.stdout


def sha256(node: str, path: str) -> str:
    """sha256 of a file in a node, read past the page cache: zfs-fuse does not invalidate
    the kernel's FUSE cache when ``zfs receive`` changes a mounted dataset, so a plain read
    can return the pre-receive bytes (test-only: drops the host's clean caches)."""
    subprocess.run(["sync"], check=True)
    Path("/proc/sys/vm/drop_caches").write_text("3\n")
    return sh(node, ["sha256sum", path]).split()[0]


def zfs_snapshots(node: str, dataset: str) -> list[str]:
    """Short snapshot names of dataset, oldest first ([] when the dataset does not exist)."""
    out = estate.run(node, ["zfs", "list", "-H", "-t", "snapshot", "-o", "name", "-s",
                            "createtxg", "-r", dataset], timeout=120).stdout
    return [ln.split("@", 1)[1] for ln in out.splitlines() if ln.startswith(dataset + "@")]


def write_random(node: str, path: str, mib: int, offset_mib: int = 0) -> None:
    """Overwrite ``mib`` MiB of a disk image with random bytes (in place)."""
    sh(node, ["dd", "if=/dev/urandom", f"of={path}", "bs=1M", f"count={mib}",
              f"seek={offset_mib}", "conv=notrunc", "status=none"])


def netns_pids(node: str) -> list[int]:
    """Pids living in a lab node's network namespace (nodes share the host pid namespace)."""
    out = subprocess.run(["ip", "netns", "pids", f"dapx-{node}"], capture_output=True,
                         text=True, check=False).stdout
    return [int(p) for p in out.split()]


def find_process(node: str, *words: str) -> int | None:
    """A pid in ``node`` whose command line holds every word, or None."""
    for pid in netns_pids(node):
        try:
            cmd = open(f"/proc/{pid}/cmdline", "rb").read().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if all(w in cmd for w in words):
            return pid
    return None


def wait_for_process(node: str, *words: str, timeout: float = 30.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pid = find_process(node, *words)
        if pid:
            return pid
        time.sleep(0.05)
    raise AssertionError(f"no process {' '.join(words)!r} appeared on {node} in {timeout} s")


def harness(request: pytest.FixtureRequest) -> Iterator[None]:
    """The session's Prefect test server (``prefect_harness``, one per test run: starting one
    costs ~10 s), with the lab's nodes saved as blocks for this module."""
    from dapx.lab.register import register_lab_nodes

    request.getfixturevalue("prefect_harness")
    register_lab_nodes()
    yield


def scratch_harness(request: pytest.FixtureRequest, node: str, root: str) -> Iterator[None]:
    """``harness`` for a module whose tests work under a scratch dataset ``root`` on
    ``node``: made empty before them, removed after."""
    lab_state(request)
    estate.run(node, ["zfs", "destroy", "-r", root])
    sh(node, ["zfs", "create", root])
    yield from harness(request)
    estate.run(node, ["zfs", "destroy", "-r", root])


async def latest_artifact(key: str):  # noqa: ANN201
    """The newest artifact with ``key`` from the Prefect API (None when there is none)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.client.schemas.sorting import ArtifactSort

    async with get_client() as client:
        found = await client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])),
            sort=ArtifactSort.CREATED_DESC, limit=1)
    return found[0] if found else None


@contextmanager
def preserved(node: str, datasets: list[str], budget: float | None = None) -> Iterator[None]:
    """Give the datasets back as they were: the lab is shared by every test of a session
    (the lab tier checks the seeded guests' bytes), so a test that writes into a seeded disk
    snapshots it first and rolls back to it at the end (dropping the snapshots taken since).
    ``budget``: seconds to wait for zfs-fuse's busy snapshots (default BUSY_BUDGET)."""
    mark = f"test-keep-{os.getpid()}"
    for dataset in datasets:
        sh(node, ["zfs", "snapshot", f"{dataset}@{mark}"])
    try:
        yield
    finally:
        # zfs-fuse has kept a snapshot busy for minutes after a killed send: the give-back
        # then waits up to BUSY_BUDGET in all and leaves what stays busy, said in a warning
        # (the test passed; the lab tier, which checks the seeded bytes, runs before this).
        deadline = time.monotonic() + (BUSY_BUDGET if budget is None else budget)
        try:
            for dataset in datasets:
                until_not_busy(node, ["zfs", "rollback", "-r", f"{dataset}@{mark}"],
                               deadline=deadline)
                until_not_busy(node, ["zfs", "destroy", f"{dataset}@{mark}"],
                               deadline=deadline)
        except StillBusy as exc:
            import warnings

            warnings.warn(f"not given back, zfs-fuse still calls it busy: {exc}", stacklevel=1)


BUSY_BUDGET = 120.0


class StillBusy(LabError):
    """zfs-fuse still calls a dataset busy when the wait is over."""


def until_not_busy(node: str, argv: list[str], wait: float = 90.0,
                   deadline: float | None = None) -> None:
    """Run argv on a lab node, again while zfs-fuse says a dataset is busy (it keeps a
    snapshot busy for a while after a send from it ended) until ``wait`` seconds (or the
    monotonic ``deadline``) passed: then StillBusy; LabError for any other failure."""
    deadline = deadline if deadline is not None else time.monotonic() + wait
    while True:
        result = estate.run(node, argv, timeout=300)
        if result.returncode == 0:
            return
        if "busy" not in result.stderr:
            raise LabError(f"{node}: {' '.join(argv)}: {result.stderr.strip()}")
        if time.monotonic() > deadline:
            raise StillBusy(f"{node}: {' '.join(argv)}: {result.stderr.strip()}")
        time.sleep(1.0)


def stop_api(node: str) -> None:
    """Kill a lab node's API simulator (the node's pveproxy is down); see ``start_api``."""
    from dapx.lab.common import spec
    from dapx.lab.node import recorded_pids

    pid = recorded_pids(spec(node))["api"]
    os.kill(pid, 9)
    deadline = time.monotonic() + 10
    while "api" in recorded_pids(spec(node)) and time.monotonic() < deadline:
        time.sleep(0.05)


def start_api(node: str) -> None:
    """Start a lab node's API simulator again and wait until it answers."""
    from dapx.lab import sim
    from dapx.lab.common import spec

    sim.start_api(spec(node))
    sim.wait_api(spec(node), estate.load_state()["nodes"][node]["tls_fingerprint"])


def lab_processes(node: str, *words: str) -> list[str]:
    """Command lines of the processes in ``node`` holding every word."""
    found = []
    for pid in netns_pids(node):
        try:
            cmd = open(f"/proc/{pid}/cmdline", "rb").read().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if all(w in cmd for w in words):
            found.append(f"{pid} {cmd}")
    return found


def run_flow_in_subprocess(code: str) -> subprocess.Popen:
    """A separate Python process (its own Prefect client, same test server) running
    ``code``: a flow run that a test can kill hard."""
    import sys

    from prefect.settings import PREFECT_API_URL

    env = os.environ | {"PREFECT_API_URL": str(PREFECT_API_URL.value())}
    return subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)


async def release_dead_holder(limit: str) -> None:
    """Free the lock a killed run held: in the product, the heartbeat automation marks such a
    run crashed and the next run frees its slot; the test server has no automation, and the
    lease would last a minute. The next run creates the limit again."""
    from prefect.client.orchestration import get_client

    async with get_client() as client:
        await client.delete_global_concurrency_limit_by_name(limit)


@asynccontextmanager
async def background(run: Awaitable) -> AsyncIterator[asyncio.Task]:
    """A flow run going on beside the test's own steps. When the test leaves (an assertion
    failed), the run is awaited, its failure ignored, so it never runs into the next test."""
    task = asyncio.ensure_future(run)
    try:
        yield task
    finally:
        await asyncio.gather(task, return_exceptions=True)


def wait_until_gone(node: str, *words: str, timeout: float = 60.0) -> list[str]:
    """Poll until no process in ``node`` holds every word; what is left after ``timeout``."""
    deadline = time.monotonic() + timeout
    while (left := lab_processes(node, *words)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return left
