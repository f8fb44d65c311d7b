"""The lab's `zfs` front: the real zfs at once for what zfs-fuse does itself, syncoid's
snapshot listing filtered in the shell, the Python wrapper only for `rename` and other
`get -t` forms (a fake zfs and a fake Python record who ran)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from dapx.lab import zfsshim


def front(tmp_path: Path) -> tuple[Path, Path]:
    """(the front script, the log its fake python and fake zfs write to)."""
    log = tmp_path / "calls"
    for name in ("python", "zfs"):
        fake = tmp_path / name
        fake.write_text(f'#!/bin/sh\necho "{name} $*" >> "{log}"\n')
        fake.chmod(0o755)
    script = tmp_path / "front"
    script.write_text(zfsshim.front_script(str(tmp_path / "python"), str(tmp_path / "zfs")))
    script.chmod(0o755)
    return script, log


@pytest.mark.parametrize("argv", [
    ["list", "-H", "-o", "name", "rpool"],
    ["get", "-H", "-p", "-o", "name,value", "written", "rpool/data"],
    ["get", "-Hpd", "1", "syncoid:sync", "rpool/data"],
    ["snapshot", "rpool/data@t"],
    ["send", "-I", "rpool/a@x", "rpool/a@y"],
    ["destroy", "rpool/data@type"],
])
def test_what_zfs_fuse_does_itself_goes_straight_to_zfs(tmp_path: Path, argv: list[str]) -> None:
    script, log = front(tmp_path)
    subprocess.run([str(script), *argv], check=True)
    assert log.read_text().splitlines() == ["zfs " + " ".join(argv)]


@pytest.mark.parametrize("argv", [
    ["get", "-Hpd", "1", "-t", "bookmark", "guid,creation", "rpool/data"],
    ["get", "-Hp", "-t", "snapshot", "guid", "rpool/data"],
    ["get", "-tsnapshot", "name", "rpool/data"],
    ["get", "-Ht", "snapshot", "name", "rpool/data"],
    ["rename", "rpool/a", "rpool/b"],
])
def test_get_with_a_type_and_rename_go_through_the_wrapper(tmp_path: Path,
                                                            argv: list[str]) -> None:
    script, log = front(tmp_path)
    subprocess.run([str(script), *argv], check=True)
    assert log.read_text().splitlines() == ["python -m dapx.lab.zfsshim " + " ".join(argv)]


def test_hostile_names_reach_zfs_as_one_argument_each(tmp_path: Path) -> None:
    script, _ = front(tmp_path)
    (tmp_path / "zfs").write_text('#!/bin/sh\nprintf "<%s>\\n" "$@"\n')
    out = subprocess.run([str(script), "list", "a b; rm -rf /", "$(x)", "-t*"],
                         capture_output=True, text=True, check=True).stdout
    assert out.splitlines() == ["<list>", "<a b; rm -rf />", "<$(x)>", "<-t*>"]


@pytest.mark.parametrize("status", [0, 1])
def test_syncoids_snapshot_listing_keeps_the_snapshots_and_zfss_status(tmp_path: Path,
                                                                      status: int) -> None:
    script, log = front(tmp_path)
    (tmp_path / "zfs").write_text(
        f'#!/bin/sh\necho "zfs $*" >> "{log}"\n'
        "printf '%s\\t%s\\t%s\\t-\\n' \"$5\" guid 1 \"$5@a b\" guid 2 \"$5/child\" guid 3 "
        f'"$5@c" creation 4\necho warning >&2\nexit {status}\n')
    name = "rpool/data/a b;$(x)"
    done = subprocess.run([str(script), "get", "-Hpd", "1", "-t", "snapshot", "guid,creation",
                           name], capture_output=True, text=True)
    assert done.returncode == status and done.stderr == "warning\n"
    assert done.stdout.splitlines() == [f"{name}@a b\tguid\t2\t-", f"{name}@c\tcreation\t4\t-"]
    assert log.read_text().splitlines() == [f"zfs get -Hpd 1 guid,creation {name}"]
