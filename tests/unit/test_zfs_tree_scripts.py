"""The forced resend's tree scripts, with a stub zfs that records what ran.

A swap's or rename's last step mounts the tree again. A mount that fails leaves the dataset in
place (the swap is done; undoing it would be worse) and is reported on stdout, one line per
dataset with zfs's reason, so the task can warn in the run's log; the script still succeeds
and mounts the rest.

The scratch parent is removed once empty, asked again while zfs says busy (zfs-fuse does, right
after its children were renamed away); never when a child is there; a real error at once."""

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


PARENT_STUB = r'''#!/bin/sh
echo "$*" >> "$ZFS_CALLS"
state=$(dirname "$ZFS_CALLS")
case "$1" in
  list)
    [ -e "$state/destroyed" ] && exit 1
    for ds; do :; done  # the last argument: zfs list -H -o name [-r -d 1] DS
    echo "$ds"
    [ "$5" = -r ] && [ -n "$CHILD" ] && echo "$ds/$CHILD"
    [ "$5" = -r ] && [ -n "$LATE_CHILD" ] && grep -q '^destroy' "$ZFS_CALLS" &&
      echo "$ds/$LATE_CHILD"
    exit 0 ;;
  get) echo no; exit 0 ;;
  destroy)
    n=$(grep -c '^destroy' "$ZFS_CALLS")
    if [ "$n" -le "$BUSY" ]; then echo "cannot destroy '$2': dataset is busy" >&2; exit 1; fi
    [ -n "$FAIL" ] && { echo "cannot destroy '$2': $FAIL" >&2; exit 1; }
    touch "$state/destroyed"; exit 0 ;;
esac
exit 0
'''


def remove_parent(tmp_path: Path, tries: int, **env: str) -> tuple[subprocess.CompletedProcess,
                                                                    int]:
    stub = tmp_path / "zfs"
    stub.write_text(PARENT_STUB)
    stub.chmod(0o755)
    calls = tmp_path / "calls"
    calls.touch()
    done = subprocess.run(["sh", "-c", zfs._REMOVE_IF_EMPTY, "sh", "pool/dapx-resend",
                           str(tries)], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}",
                               "ZFS_CALLS": str(calls), "BUSY": "0", "CHILD": "", "LATE_CHILD": "",
                               "FAIL": "",
                               **env})
    return done, calls.read_text().count("destroy pool/dapx-resend")


def test_an_empty_parent_busy_for_a_while_is_removed(tmp_path: Path) -> None:
    done, destroys = remove_parent(tmp_path, tries=5, BUSY="2")
    assert done.returncode == 0, done.stderr
    assert destroys == 3 and (tmp_path / "destroyed").exists()


def test_a_parent_busy_past_its_tries_fails_naming_why(tmp_path: Path) -> None:
    done, destroys = remove_parent(tmp_path, tries=2, BUSY="9")
    assert done.returncode == 1 and destroys == 2
    assert "dataset is busy" in done.stderr


def test_a_parent_with_a_child_is_left(tmp_path: Path) -> None:
    done, destroys = remove_parent(tmp_path, tries=5, CHILD="share")
    assert done.returncode == 0 and destroys == 0


def test_another_error_is_not_asked_again(tmp_path: Path) -> None:
    done, destroys = remove_parent(tmp_path, tries=5, FAIL="permission denied")
    assert done.returncode == 1 and destroys == 1 and "permission denied" in done.stderr


def test_a_child_that_appears_as_it_is_destroyed_leaves_it_without_a_failure(
        tmp_path: Path) -> None:
    done, destroys = remove_parent(tmp_path, tries=5, LATE_CHILD="share",
                                   FAIL="filesystem has children")
    assert done.returncode == 0 and destroys == 1 and done.stderr == ""
