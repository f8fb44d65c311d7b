"""The simulator's vzdump to stdout and restore from stdin (what a streamed copy runs): the
archive carries the config and every disk byte; a restore under a taken VMID is refused; a
short archive fails the restore and leaves nothing behind; the source is never left locked."""

from __future__ import annotations

import hashlib
import io
import os

import pytest

from dapx.lab.pvesim import guests, storage, stream
from dapx.tasks.vzstream import pipe_argv, restore_argv
from tests.api.test_sim_pve import api, sim, wait  # noqa: F401 - shared fixture

DATA = os.urandom(5 * 1024 * 1024 + 123)


@pytest.fixture(scope="module")
def vm(sim):
    """VM 720 with one 10 MiB disk on the dir storage, holding DATA at its start."""
    px = api(sim)
    wait(px, px.nodes("pve1").qemu.post(vmid=720, memory=512, scsi0="local:0.01",
                                        net0="virtio,bridge=vmbr0"))
    volid = px.nodes("pve1").qemu(720).config.get()["scsi0"].split(",")[0]
    with open(storage.path(volid), "r+b") as fh:
        fh.write(DATA)
    return px, volid


def digest(volid: str) -> str:
    return hashlib.sha256(storage.path(volid).read_bytes()).hexdigest()


def test_archive_round_trip_keeps_config_and_bytes(vm) -> None:
    px, volid = vm
    archive = io.BytesIO()
    stream.vzdump_stdout(print, "pve1", 720, archive)
    assert "lock" not in guests.require("pve1", "qemu", 720).current
    archive.seek(0)
    stream.restore_stdin(print, "pve1", "qemu", 721, archive, "local", unique=1)
    copy = px.nodes("pve1").qemu(721).config.get()
    assert copy["scsi0"].startswith("local:721/vm-721-disk-0.raw")
    assert digest(copy["scsi0"].split(",")[0]) == digest(volid)
    source = px.nodes("pve1").qemu(720).config.get()
    assert copy["net0"].split(",")[0] != source["net0"].split(",")[0]  # --unique: a new MAC
    archive.seek(0)
    with pytest.raises(RuntimeError, match="VM 721 already exists"):
        stream.restore_stdin(print, "pve1", "qemu", 721, archive, "local")
    wait(px, px.nodes("pve1").qemu(721).delete())


def test_a_short_archive_fails_and_leaves_nothing(vm) -> None:
    archive = io.BytesIO()
    stream.vzdump_stdout(print, "pve1", 720, archive)
    short = io.BytesIO(archive.getvalue()[: len(archive.getvalue()) // 2])
    with pytest.raises(Exception):
        stream.restore_stdin(print, "pve1", "qemu", 722, short, "local")
    assert guests.locate(722) is None
    assert storage.list_volumes("local", 722) == []


def test_pipeline_argv_is_quoted_once_and_refuses_bad_values() -> None:
    from dapx.errors import InputError

    remote = restore_argv("qemu", 9300, "local-zfs", unique=True)
    assert remote == ["qmrestore", "-", "9300", "--storage", "local-zfs", "--unique", "1"]
    assert restore_argv("lxc", 9301, "local", unique=False) == [
        "pct", "restore", "9301", "-", "--storage", "local"]
    argv = pipe_argv(300, "198.18.213.11", remote, key="/root/.ssh/dapx_replication",
                     known_hosts="/root/.ssh/dapx_known_hosts", port=22, rate="4M")
    assert argv[:2] == ["sh", "-c"] and argv[4:] == [
        "300", "snapshot", "/root/.ssh/dapx_replication", "/root/.ssh/dapx_known_hosts", "22",
        "root@198.18.213.11", "qmrestore - 9300 --storage local-zfs --unique 1", "4M"]
    assert pipe_argv(300, None, remote, key="/k", known_hosts="/h", port=22, rate=None)[9] == ""
    with pytest.raises(InputError):
        restore_argv("qemu", 9300, "local;reboot", unique=False)
    with pytest.raises(InputError):
        pipe_argv(300, "host;reboot", remote, key="/k", known_hosts="/h", port=22, rate=None)


def test_container_archive_carries_its_files(sim) -> None:
    px = api(sim)
    wait(px, px.nodes("pve1").lxc.post(vmid=723, hostname="ct723", memory=256,
                                       rootfs="local:0.01"))
    root = storage.path(px.nodes("pve1").lxc(723).config.get()["rootfs"].split(",")[0])
    (root / "etc").mkdir()
    (root / "etc" / "hostname").write_text("ct723\n")
    (root / "data.bin").write_bytes(DATA)
    archive = io.BytesIO()
    stream.vzdump_stdout(print, "pve1", 723, archive)
    archive.seek(0)
    stream.restore_stdin(print, "pve1", "lxc", 724, archive, "local")
    copy = storage.path(px.nodes("pve1").lxc(724).config.get()["rootfs"].split(",")[0])
    assert (copy / "data.bin").read_bytes() == DATA
    assert (copy / "etc" / "hostname").read_text() == "ct723\n"
    for vmid in (723, 724):
        wait(px, px.nodes("pve1").lxc(vmid).delete())
