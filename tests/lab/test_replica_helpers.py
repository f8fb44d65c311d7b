"""Shared helpers for the replication lab tests (test code: runs lab commands directly)."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from dapx.lab import estate


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
def preserved(node: str, datasets: list[str]) -> Iterator[None]:
    """Give the datasets back as they were: the lab is shared by every test of a session
    (the lab tier checks the seeded guests' bytes), so a test that writes into a seeded disk
    snapshots it first and rolls back to it at the end (dropping the snapshots taken since)."""
    mark = f"test-keep-{os.getpid()}"
    for dataset in datasets:
        sh(node, ["zfs", "snapshot", f"{dataset}@{mark}"])
    try:
        yield
    finally:
        for dataset in datasets:
            sh(node, ["zfs", "rollback", "-r", f"{dataset}@{mark}"])
            sh(node, ["zfs", "destroy", f"{dataset}@{mark}"])
