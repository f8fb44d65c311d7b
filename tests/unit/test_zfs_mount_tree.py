"""A swap's or rename's last step mounts the tree again. A mount that fails leaves the
dataset in place (the swap is done; undoing it would be worse) and is reported on stdout, one
line per dataset with zfs's reason, so the task can warn in the run's log; the script still
succeeds and mounts the rest (a stub zfs records what ran)."""

from __future__ import annotations

import logging
import os
import subprocess
from pathlib import Path

import pytest

from dapx.tasks import zfs

STUB = r'''#!/bin/sh
echo "$*" >> "$ZFS_CALLS"
case "$1 $2" in
  "list -H")
    if [ "$4" = name,canmount,mounted ] && [ "$6" = pool/t ]; then
      printf 'pool/t\ton\tno\npool/t/a\ton\tno\npool/t/b\toff\tno\npool/t/c\ton\tyes\n'
    elif [ "$4" = name,canmount,mounted ]; then
      printf '%s\ton\tyes\n' "$6"
    fi
    exit 0 ;;
  "mount pool/t/a") printf "cannot mount 'pool/t/a': directory is not empty\n\tuse legacy\n" >&2
    exit 1 ;;
  "mount "*) exit 0 ;;
esac
exit 0
'''


def run_script(tmp_path: Path, script: str, *args: str) -> tuple[subprocess.CompletedProcess,
                                                                 list[str]]:
    stub = tmp_path / "zfs"
    stub.write_text(STUB)
    stub.chmod(0o755)
    calls = tmp_path / "calls"
    env = {**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}", "ZFS_CALLS": str(calls)}
    done = subprocess.run(["sh", "-c", script, "sh", *args], capture_output=True, text=True,
                          env=env, timeout=30)
    return done, calls.read_text().splitlines()


def test_a_failed_mount_is_reported_and_the_rest_of_the_tree_is_mounted(tmp_path: Path) -> None:
    done, calls = run_script(tmp_path, zfs._MOUNT_TREES, "pool/t")
    assert done.returncode == 0, done.stderr
    assert [c for c in calls if c.startswith("mount")] == ["mount pool/t", "mount pool/t/a"]
    assert zfs.not_mounted(done.stdout) == [
        ("pool/t/a", "cannot mount 'pool/t/a': directory is not empty  use legacy")]


def test_a_tree_that_mounts_reports_nothing(tmp_path: Path) -> None:
    done, _ = run_script(tmp_path, zfs._MOUNT_TREES, "pool/other")
    assert done.returncode == 0 and done.stdout == ""  # mounted already: nothing to do


def test_the_warning_names_the_dataset_the_reason_and_the_command(
        caplog: pytest.LogCaptureFixture) -> None:
    class Node:
        name = "pve2"

    with caplog.at_level(logging.WARNING):
        zfs.warn_not_mounted(Node(), "not-mounted\trpool/replica/subvol-101-disk-0\tbusy\n"
                                     "something else\n")
    [record] = caplog.records
    assert record.getMessage() == (
        "rpool/replica/subvol-101-disk-0 on node pve2 is in place and whole but not mounted "
        "(busy); mount it with: zfs mount rpool/replica/subvol-101-disk-0")
