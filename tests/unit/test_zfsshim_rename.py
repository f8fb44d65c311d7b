"""The lab's zfs wrapper renames a mounted filesystem as OpenZFS does: children unmounted
first, renamed, mounted again under the new name; a busy child stops it with nothing renamed
and everything mounted as before. (A fake zfs records the calls.)"""

from __future__ import annotations

from pathlib import Path

import pytest

from dapx.lab import zfsshim

FAKE = """#!/bin/sh
echo "$*" >> "{log}"
case "$1" in
  list) printf 'tank/a\\tyes\\ntank/a/b\\tyes\\ntank/a/c\\tno\\n' ;;
  umount) [ "$2" = "{busy}" ] && {{ echo "device is busy" >&2; exit 1; }} ;;
esac
exit 0
"""


def fake_zfs(tmp_path: Path, busy: str = "none") -> Path:
    log = tmp_path / "calls"
    script = tmp_path / "zfs"
    script.write_text(FAKE.format(log=log, busy=busy))
    script.chmod(0o755)
    return log


def test_mounted_filesystem_is_unmounted_renamed_and_mounted(tmp_path, monkeypatch) -> None:
    log = fake_zfs(tmp_path)
    monkeypatch.setattr(zfsshim, "REAL_ZFS", str(tmp_path / "zfs"))
    assert zfsshim.main(["rename", "tank/a", "tank/z"]) == 0
    assert log.read_text().splitlines() == [
        "list -H -o name,mounted -r tank/a", "umount tank/a/b", "umount tank/a",
        "rename tank/a tank/z", "mount tank/z", "mount tank/z/b"]


def test_a_busy_child_renames_nothing_and_remounts(tmp_path, monkeypatch, capsys) -> None:
    log = fake_zfs(tmp_path, busy="tank/a")
    monkeypatch.setattr(zfsshim, "REAL_ZFS", str(tmp_path / "zfs"))
    assert zfsshim.main(["rename", "tank/a", "tank/z"]) == 1
    assert log.read_text().splitlines() == [
        "list -H -o name,mounted -r tank/a", "umount tank/a/b", "umount tank/a",
        "mount tank/a/b"]
    assert "cannot unmount 'tank/a'" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["rename", "tank/a@s1", "tank/a@s2"], ["list"]])
def test_other_commands_go_to_zfs_unchanged(argv, monkeypatch) -> None:
    seen = []

    def execv(path: str, args: list[str]) -> None:  # never returns, as the real one
        seen.append(args)
        raise SystemExit(0)

    monkeypatch.setattr(zfsshim.os, "execv", execv)
    monkeypatch.setattr(zfsshim, "_zfs", lambda *a: pytest.fail("ran zfs itself"))
    with pytest.raises(SystemExit):
        zfsshim.main(argv)
    assert seen[0][1:] == argv
