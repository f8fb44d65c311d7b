"""Argv builders for zfs, syncoid and btrfs, and the parsers for their output."""

from __future__ import annotations

import subprocess
import uuid

import pytest

from dapx.core import btrfs_argv, zfs_argv
from dapx.core.snapshots import Snapshot, plan_incremental
from dapx.core.syncoid_argv import (STREAM_CIPHERS, STREAM_SSH, SyncoidOptions, ssh_options,
                                    syncoid_argv)
from dapx.errors import InputError, PermanentError

DS = "rpool/data/vm-100-disk-0"


def test_zfs_list_snapshot_props_avoids_what_zfs_fuse_lacks() -> None:
    argv = zfs_argv.list_snapshot_props(DS)
    assert argv == ["zfs", "get", "-H", "-p", "-r", "-d", "1", "-o", "name,property,value",
                    "guid,createtxg,creation", DS]
    assert "-t" not in argv and "list" not in argv


ZFS_GET = (
    f"{DS}\tguid\t111\n{DS}\tcreatetxg\t1\n{DS}\tcreation\t1700000000\n"
    f"{DS}@dapx_j_2\tguid\t9007199254740993\n{DS}@dapx_j_2\tcreatetxg\t40\n"
    f"{DS}@dapx_j_2\tcreation\t1700000200\n"
    f"{DS}@dapx_j_1\tguid\t18446744073709551615\n{DS}@dapx_j_1\tcreatetxg\t20\n"
    f"{DS}@dapx_j_1\tcreation\t1700000100\n"
    f"{DS}/child@x\tguid\t5\n{DS}/child@x\tcreatetxg\t5\n{DS}/child@x\tcreation\t5\n"
)


def test_parse_snapshot_props_exact_numbers_and_order() -> None:
    snaps = zfs_argv.parse_snapshot_props(ZFS_GET, DS)
    assert snaps == [
        Snapshot(name="dapx_j_1", guid=18446744073709551615, createtxg=20, creation=1700000100),
        Snapshot(name="dapx_j_2", guid=9007199254740993, createtxg=40, creation=1700000200)]


def test_parse_snapshot_props_errors() -> None:
    with pytest.raises(PermanentError, match="unexpected"):
        zfs_argv.parse_snapshot_props("garbage line\n", DS)
    with pytest.raises(PermanentError, match="expected a number"):
        zfs_argv.parse_snapshot_props(f"{DS}@a\tguid\t-\n", DS)
    with pytest.raises(PermanentError, match="left out"):
        zfs_argv.parse_snapshot_props(f"{DS}@a\tguid\t1\n", DS)
    assert zfs_argv.parse_snapshot_props("", DS) == []


def test_zfs_snapshot_destroy_rollback() -> None:
    assert zfs_argv.snapshot(DS, "dapx_j_3") == ["zfs", "snapshot", f"{DS}@dapx_j_3"]
    assert zfs_argv.destroy_snapshot(DS, "dapx_j_1") == ["zfs", "destroy", f"{DS}@dapx_j_1"]
    assert zfs_argv.rollback(DS, "dapx_j_1") == ["zfs", "rollback", "-r", f"{DS}@dapx_j_1"]
    assert zfs_argv.destroy_dataset(DS) == ["zfs", "destroy", "-r", DS]
    assert zfs_argv.create_parents("tank/replica") == ["zfs", "create", "-p", "tank/replica"]
    assert zfs_argv.dataset_exists(DS) == ["zfs", "list", "-H", "-o", "name", DS]


@pytest.mark.parametrize("call", [
    lambda: zfs_argv.snapshot(DS, "a;b"), lambda: zfs_argv.destroy_snapshot(DS, ""),
    lambda: zfs_argv.destroy_snapshot("rpool/$(x)", "a"), lambda: zfs_argv.destroy_dataset("rpool"),
    lambda: zfs_argv.rollback(DS, "-f"), lambda: zfs_argv.set_user_property(DS, "owner", "x"),
    lambda: zfs_argv.set_user_property(DS, "dapx:owner", "a b"),
    lambda: zfs_argv.get_property(DS, "sharenfs"),
])
def test_zfs_builders_refuse_bad_input(call) -> None:  # noqa: ANN001
    with pytest.raises(InputError):
        call()


def test_zfs_user_property() -> None:
    assert zfs_argv.set_user_property(DS, "dapx:owner", "pve1/100") == \
        ["zfs", "set", "dapx:owner=pve1/100", DS]
    assert zfs_argv.get_property(f"{DS}@a", "dapx:owner") == \
        ["zfs", "get", "-H", "-p", "-o", "value", "dapx:owner", f"{DS}@a"]
    assert zfs_argv.parse_property_value("-\n") is None
    assert zfs_argv.parse_property_value("pve1/100\n") == "pve1/100"


def _options(**extra) -> SyncoidOptions:  # noqa: ANN003
    return SyncoidOptions(ssh_key="/root/.ssh/dapx_replication",
                          known_hosts_file="/etc/dapx/known_hosts", **extra)


def test_syncoid_defaults_pin_the_host_key() -> None:
    argv = syncoid_argv(DS, "198.18.213.13", "rpool/data/vm-9100-disk-0", _options())
    assert argv == [
        "syncoid", "--no-sync-snap", "--compress=lz4", "--sshkey=/root/.ssh/dapx_replication",
        "--sshport=22", "--sshoption=UserKnownHostsFile=/etc/dapx/known_hosts",
        "--sshoption=GlobalKnownHostsFile=/dev/null", "--sshoption=StrictHostKeyChecking=yes",
        "--sshoption=BatchMode=yes", "--sshoption=IdentitiesOnly=yes",
        f"--sshoption=Ciphers={STREAM_CIPHERS}", "--no-rollback",
        DS, "root@198.18.213.13:rpool/data/vm-9100-disk-0"]


def _ssh_config(*options: str) -> dict[str, str]:
    """What this machine's OpenSSH client makes of ``options`` (``ssh -G``: no connection)."""
    argv = ["ssh", "-G", *[a for o in options for a in ("-o", o)], "dapx.invalid"]
    result = subprocess.run(argv, capture_output=True, text=True, check=True)
    return dict(line.split(" ", 1) for line in result.stdout.splitlines() if " " in line)


def test_streams_prefer_aes_gcm_among_exactly_openssh_s_default_ciphers() -> None:
    """A destination that accepts any of OpenSSH's default ciphers accepts a stream: the set is
    the default one, only its order changes (AES-GCM first)."""
    default = _ssh_config()["ciphers"].split(",")
    ours = _ssh_config(f"Ciphers={STREAM_CIPHERS}")["ciphers"].split(",")
    assert sorted(ours) == sorted(default)
    assert ours[:2] == ["aes128-gcm@openssh.com", "aes256-gcm@openssh.com"]
    assert default[0] == "chacha20-poly1305@openssh.com"


@pytest.mark.parametrize("pipe", ["zfs", "btrfs", "vzstream"])
def test_every_shell_pipeline_streams_with_the_same_ssh_options(pipe: str) -> None:
    import importlib

    script = importlib.import_module(f"dapx.tasks.{pipe}")._PIPE
    assert STREAM_SSH in script
    for option in ssh_options("/k"):
        assert option.split("=")[0] in STREAM_SSH


@pytest.mark.parametrize("ours,theirs", [("lz4", "lz4"), ("zstd", "zstd-fast"),
                                         ("gzip", "gzip"), ("none", "none")])
def test_syncoid_compression_names(ours: str, theirs: str) -> None:
    argv = syncoid_argv(DS, "pve3", DS, _options(compression=ours))
    assert f"--compress={theirs}" in argv


def test_syncoid_zfs_fuse_and_force_flags() -> None:
    argv = syncoid_argv(DS, "pve3", DS, _options(resume=False, bandwidth_limit="10m",
                                                 rollback_target=True, ssh_port=2222,
                                                 recursive=True))
    assert {"--no-resume", "--source-bwlimit=10M", "--sshport=2222",
            "--recursive"} <= set(argv) and "--no-rollback" not in argv
    assert "--force-delete" not in argv and "--create-bookmark" not in argv
    forced = syncoid_argv(DS, "pve3", DS, _options(force_delete=True, create_bookmark=True))
    assert {"--force-delete", "--create-bookmark"} <= set(forced)


@pytest.mark.parametrize("call", [
    lambda: syncoid_argv(DS, "::1", DS, _options()),
    lambda: syncoid_argv(DS, "pve3;reboot", DS, _options()),
    lambda: syncoid_argv("rpool/a b", "pve3", DS, _options()),
    lambda: syncoid_argv(DS, "pve3", "host:pool/x", _options()),
    lambda: syncoid_argv(DS, "pve3", DS, _options(), target_user="root;x"),
])
def test_syncoid_refuses_bad_input(call) -> None:  # noqa: ANN001
    with pytest.raises(InputError):
        call()


@pytest.mark.parametrize("extra", [{"ssh_key": "/root/my key"}, {"known_hosts_file": "x"},
                                   {"bandwidth_limit": "10M;id"}, {"compression": "xz"},
                                   {"ssh_port": 0}, {"surprise": True}])
def test_syncoid_options_validate(extra: dict) -> None:
    base = {"ssh_key": "/root/.ssh/k", "known_hosts_file": "/etc/dapx/kh"} | extra
    with pytest.raises(ValueError):
        SyncoidOptions(**base)


SUB = "/var/lib/pve/local-btrfs/images/200/vm-200-disk-0"


def test_btrfs_builders() -> None:
    assert btrfs_argv.snapshot_ro(SUB, "dapx_j_1") == [
        "btrfs", "subvolume", "snapshot", "-r", SUB, f"{SUB}@dapx_j_1"]
    assert btrfs_argv.send(f"{SUB}@dapx_j_2") == ["btrfs", "send", f"{SUB}@dapx_j_2"]
    assert btrfs_argv.send(f"{SUB}@dapx_j_2", parent=f"{SUB}@dapx_j_1") == [
        "btrfs", "send", "-p", f"{SUB}@dapx_j_1", f"{SUB}@dapx_j_2"]
    assert btrfs_argv.receive("/var/lib/pve/local-btrfs/dapx-recv/200") == [
        "btrfs", "receive", "/var/lib/pve/local-btrfs/dapx-recv/200"]
    assert btrfs_argv.delete(f"{SUB}@dapx_j_1") == ["btrfs", "subvolume", "delete",
                                                    f"{SUB}@dapx_j_1"]
    assert btrfs_argv.list_subvolumes("/var/lib/pve/local-btrfs") == [
        "btrfs", "subvolume", "list", "-u", "-q", "-R", "-c", "/var/lib/pve/local-btrfs"]
    for bad in [lambda: btrfs_argv.delete("/a/../b"), lambda: btrfs_argv.snapshot_ro(SUB, "a b"),
                lambda: btrfs_argv.send("relative"), lambda: btrfs_argv.receive("/x;y")]:
        with pytest.raises(InputError):
            bad()


# Captured from btrfs-progs v6.2 on this machine, then extended with a second snapshot and an
# interrupted receive. Source fs: images/...; destination side: recv/...
U_SUB, U_S1, U_S2 = ("7a92abaf-93dd-2047-9676-2a7e517fdf10", "c8c4dd96-3fd5-0d4c-a941-d68cdd314fc6",
                     "d1c4dd96-3fd5-0d4c-a941-d68cdd314fc7")
LIST = f"""\
ID 256 gen 7 cgen 7 top level 5 parent_uuid -                                    received_uuid -                                    uuid 82cc0f72-700f-4e4b-846b-87eac4be73ce path a
ID 257 gen 9 cgen 7 top level 5 parent_uuid -                                    received_uuid -                                    uuid {U_SUB} path images/100/vm-100-disk-0
ID 258 gen 7 cgen 7 top level 5 parent_uuid {U_SUB} received_uuid -                                    uuid {U_S1} path images/100/vm-100-disk-0@dapx_j_1
ID 260 gen 9 cgen 9 top level 5 parent_uuid {U_SUB} received_uuid -                                    uuid {U_S2} path images/100/vm-100-disk-0@dapx_j_2
ID 259 gen 8 cgen 8 top level 5 parent_uuid -                                    received_uuid {U_S1} uuid b9093a95-cdd8-3f41-a7f8-c92f70c0786b path recv/vm-100-disk-0@dapx_j_1
ID 261 gen 10 cgen 10 top level 5 parent_uuid b9093a95-cdd8-3f41-a7f8-c92f70c0786b received_uuid -                                    uuid e9093a95-cdd8-3f41-a7f8-c92f70c0786c path recv/vm-100-disk-0@dapx_j_2
"""


def test_btrfs_list_and_matching_by_uuid() -> None:
    subvolumes = btrfs_argv.parse_subvolume_list(LIST)
    assert len(subvolumes) == 6 and subvolumes[1].received_uuid is None
    source = btrfs_argv.snapshots_of(subvolumes, "images/100/vm-100-disk-0")
    target = btrfs_argv.snapshots_of(subvolumes, "recv/vm-100-disk-0", received=True)
    assert [s.name for s in source] == ["dapx_j_1", "dapx_j_2"]
    assert [s.name for s in target] == ["dapx_j_1"]  # dapx_j_2 there is a cut-off receive
    assert target[0].guid == source[0].guid == uuid.UUID(U_S1).int
    assert btrfs_argv.interrupted_receives(subvolumes, "recv/vm-100-disk-0") == [
        "recv/vm-100-disk-0@dapx_j_2"]
    plan = plan_incremental(source, target)
    assert (plan.base.name, plan.to.name) == ("dapx_j_1", "dapx_j_2")


def test_btrfs_list_refuses_garbage() -> None:
    with pytest.raises(PermanentError):
        btrfs_argv.parse_subvolume_list("ID x\n")


def test_btrfs_show() -> None:
    out = """recv/vm-100-disk-0@dapx_x_1
	Name: 			vm-100-disk-0@dapx_x_1
	UUID: 			b9093a95-cdd8-3f41-a7f8-c92f70c0786b
	Parent UUID: 		-
	Received UUID: 		c8c4dd96-3fd5-0d4c-a941-d68cdd314fc6
	Creation time: 		2026-11-26 07:09:29 +0000
	Subvolume ID: 		259
	Generation: 		8
	Gen at creation: 	8
	Flags: 			readonly
"""
    assert btrfs_argv.parse_subvolume_show(out) == {
        "uuid": "b9093a95-cdd8-3f41-a7f8-c92f70c0786b", "parent_uuid": None,
        "received_uuid": "c8c4dd96-3fd5-0d4c-a941-d68cdd314fc6", "id": "259", "cgen": "8",
        "flags": "readonly"}
    with pytest.raises(PermanentError):
        btrfs_argv.parse_subvolume_show("nothing\n")
