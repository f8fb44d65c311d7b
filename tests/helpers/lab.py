"""The lab for tests/lab: brought up once per test run, torn down at the end.

A machine that cannot run the lab FAILS these tests with the reason (never skips).
Set DAPX_LAB_KEEP=1 to leave the lab running after the session (faster reruns).
"""

from __future__ import annotations

import fcntl
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from dapx.lab import estate
from dapx.lab.common import NETNS_PREFIX, LabError, lab_dir

SESSION_LOCK = Path("/tmp/.dapx-lab-session.lock")
"""One lab per machine: a test session holds this lock while it uses the lab, so a second
session (another checkout, a CI run beside a developer's) waits instead of tearing the
first one's lab down. ``flock /tmp/.dapx-lab-session.lock CMD`` takes it from a shell."""

LAB_MOUNT_POINTS = ["/etc/pve", "/etc/dapx-lab", "/root/.ssh", "/etc/sanoid", "/etc/network",
                    "/var/log/pve", "/rpool", "/var/lib/vz", "/var/lib/pve", "/datastore",
                    "/etc/proxmox-backup", "/var/cache/sanoid", "/run/netns", "/run/dapx-lab"]


def _out(argv: list[str]) -> str:
    return subprocess.run(argv, capture_output=True, text=True, check=False).stdout


def machine_snapshot() -> dict[str, set]:
    """What a lab could leave behind: mounts, loop devices, netns, links, addresses,
    namespaces in use by any process, and the directories the lab mounts over."""
    mounts = {" ".join(line.split()[4:5] + line.split(" - ")[1].split()[:2])
              for line in Path("/proc/self/mountinfo").read_text().splitlines()}
    namespaces = set()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        for kind in ("net", "mnt", "uts"):
            try:
                namespaces.add(os.readlink(f"/proc/{pid}/ns/{kind}"))
            except OSError:
                pass
    return {
        "mounts": mounts,
        "loops": set(_out(["losetup", "-l", "-n", "-O", "NAME,BACK-FILE"]).splitlines()),
        "netns": set(_out(["ip", "netns", "list"]).splitlines()),
        "links": {line.split(":")[1].strip().split("@")[0]
                  for line in _out(["ip", "-o", "link", "show"]).splitlines()},
        "addresses": {" ".join(line.split()[1:4])
                      for line in _out(["ip", "-o", "addr", "show"]).splitlines()},
        "namespaces": namespaces,
        "paths": {p for p in LAB_MOUNT_POINTS if os.path.lexists(p)},
    }


HOST_NETNS = os.readlink("/proc/self/ns/net")


def lab_processes() -> list[str]:
    """Live processes that carry the lab's mark or run a lab daemon (zombies excluded)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                continue
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            env = Path(f"/proc/{pid}/environ").read_bytes()
            netns = os.readlink(f"/proc/{pid}/ns/net")
        except OSError:
            continue
        # A simulator in this machine's own network namespace without the mark is the api
        # tier's (it runs beside the lab tier, on loopback), not the lab's.
        if (b"DAPX_LAB_NODE=" in env or "zfs-fuse" in cmd or str(lab_dir()) in cmd
                or ("dapx.lab.pvesim" in cmd and netns != HOST_NETNS)):
            found.append(f"{pid} {cmd}")
    return found


def _lab_present() -> bool:
    netns = _out(["ip", "netns", "list"])
    return bool(lab_processes()) or any(l.startswith(NETNS_PREFIX) for l in netns.split())


@pytest.fixture(scope="session")
def lab_session_lock() -> Iterator[None]:
    """Hold the machine's lab lock for the rest of the test session (see SESSION_LOCK)."""
    with open(SESSION_LOCK, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"waiting for another test session's lab ({SESSION_LOCK})", flush=True)
            fcntl.flock(handle, fcntl.LOCK_EX)
        yield


@pytest.fixture(scope="session")
def machine_before(lab_session_lock: None) -> dict[str, set]:
    """The machine without any lab (a lab left running by an earlier run is taken down first)."""
    try:
        estate.preflight()
    except LabError as exc:
        pytest.fail(f"the lab cannot run on this machine: {exc}", pytrace=False)
    if _lab_present():
        estate.down()
    return machine_snapshot()


@pytest.fixture(scope="session")
def lab(machine_before: dict[str, set]) -> Iterator[dict]:
    """The running lab's state (state.json content); down() at the end unless DAPX_LAB_KEEP=1."""
    try:
        state = estate.up()
    except LabError as exc:
        pytest.fail(f"the lab did not come up: {exc}", pytrace=False)
    yield state
    if os.environ.get("DAPX_LAB_KEEP") != "1":
        estate.down()


@pytest.fixture(scope="session")
def prefect_harness() -> Iterator[None]:
    """One Prefect test server (``prefect_test_harness``) for the whole session."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=60):
        yield
