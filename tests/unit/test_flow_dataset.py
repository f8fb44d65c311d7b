"""Pure parts of plain dataset mode (``dataset-replica``) and container disk mapping."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from dapx.core import zfs_argv
from dapx.core.guestconfig import parse_guest_config, serialise
from dapx.core.jobspec import DatasetJob, ReplicaJob
from dapx.core.registration import RegistrationOptions, rewrite_for_destination
from dapx.core.snapnames import job_prefix
from dapx.core.storagecfg import parse_storage_cfg
from dapx.errors import InputError, PermanentError
from dapx.flows import dataset, replica
from dapx.tasks import guests, locks
from dapx.tasks.syncoid import transfer_argv
from tests.unit.test_flow_replica import STORAGE_CFG

BASE = {"source": "pve1", "dataset": "rpool/data/share", "destination": "pve3",
        "dest_dataset": "rpool/backup/share"}
CT101 = """arch: amd64
hostname: ct101
net0: name=eth0,bridge=vmbr0,firewall=1,hwaddr=BC:24:11:5A:10:65,ip=dhcp,type=veth
onboot: 1
rootfs: local-zfs:subvol-101-disk-0,size=1G
unprivileged: 1
"""


def djob(**changes) -> DatasetJob:
    return DatasetJob(**(BASE | changes))


@pytest.mark.parametrize("bad", [
    {"dataset": "rpool/data/share; rm -rf /"}, {"dataset": "rpool/data/$(reboot)"},
    {"dataset": "rpool/data/share@snap"}, {"dataset": "-rpool/x"}, {"dataset": "rpool/../etc"},
    {"dest_dataset": "rpool/backup/a b"}, {"dest_dataset": "rpool"},
    {"destination": "pve1"}, {"keep": 0}, {"compression": "brotli"}, {"bwlimit": "1T"},
    {"mode": "mirror"}])
def test_hostile_or_bad_input_is_an_input_error(bad: dict) -> None:
    with pytest.raises(InputError):
        DatasetJob.from_input(**(BASE | bad))
    with pytest.raises(ValidationError):
        DatasetJob(**(BASE | bad))


def test_schema_has_descriptions_and_examples_for_the_prefect_form() -> None:
    props = DatasetJob.model_json_schema()["properties"]
    assert set(props) == {"source", "dataset", "destination", "dest_dataset", "recursive",
                          "compression", "keep", "bwlimit", "notify"}
    assert all(p.get("description") and p.get("examples") for p in props.values())


def test_children_map_below_the_destination_dataset_parents_first() -> None:
    out = ("rpool/data/share\nrpool/data/share/b\nrpool/data/share/a\n"
           "rpool/data/share/a/deep\nrpool/data/share-other\n")
    tree = zfs_argv.parse_tree(out, "rpool/data/share")
    assert tree == ["rpool/data/share", "rpool/data/share/a", "rpool/data/share/a/deep",
                    "rpool/data/share/b"]
    pairs = dataset.dataset_pairs(djob(recursive=True), tree)
    assert [p.target for p in pairs] == ["rpool/backup/share", "rpool/backup/share/a",
                                         "rpool/backup/share/a/deep", "rpool/backup/share/b"]


def test_a_child_with_a_hostile_name_is_refused() -> None:
    with pytest.raises(InputError, match="a b"):
        zfs_argv.parse_tree("rpool/data/share\nrpool/data/share/a b\n", "rpool/data/share")
    with pytest.raises(PermanentError):
        zfs_argv.parse_tree("rpool/data/other\n", "rpool/data/share")


def test_tag_lock_and_run_for_a_dataset_job() -> None:
    job = djob(recursive=True, keep=4, bwlimit="10M")
    assert dataset.dataset_tag(job) == "pve3-rpool-backup-share"
    job_prefix(dataset.dataset_tag(djob(dest_dataset="rpool/" + "x" * 200)))  # still valid
    run = dataset.dataset_run(job)
    assert (run.recursive, run.keep, run.dest_pool, run.owner) == (
        True, 4, "rpool", "pve1/rpool/data/share")
    name = locks.dataset_lock_name("pve1", "rpool/data/Share_1", "pve3")
    assert name.startswith("dapx-dataset-pve1-rpool-data-share-1-to-pve3-")
    assert name != locks.dataset_lock_name("pve1", "rpool/data/share-1", "pve3")


def test_recursive_runs_use_syncoid_recursive() -> None:
    from dapx.blocks.node import ProxmoxNode

    dest = ProxmoxNode.model_construct(ssh_port=22)
    options = replica.syncoid_options(dataset.dataset_run(djob(recursive=True)), dest, False)
    argv = transfer_argv("rpool/data/share", "198.18.213.13", "rpool/backup/share", options)
    assert "--recursive" in argv
    single = replica.syncoid_options(dataset.dataset_run(djob()), dest, False)
    assert "--recursive" not in transfer_argv("rpool/data/share", "198.18.213.13",
                                              "rpool/backup/share", single)


def test_cli_refuses_hostile_dataset_before_contacting_anything(capsys) -> None:
    from dapx.cli import main

    code = main(["job", "create", "dataset", "--source", "pve1", "--dataset",
                 "rpool/data/share;reboot", "--dest", "pve3", "--dest-dataset", "rpool/b"])
    assert code == 2 and "dataset name" in capsys.readouterr().err
    code = main(["job", "create", "dataset", "--source", "pve1", "--dataset", "rpool/a",
                 "--dest", "pve3"])
    assert code == 2 and "--dest-dataset" in capsys.readouterr().err
    code = main(["job", "create", "replica", "--source", "pve1", "--dest", "pve3"])
    assert code == 2 and "--guest" in capsys.readouterr().err


def test_container_rootfs_maps_to_a_renamed_subvol_and_registers_as_lxc() -> None:
    ct = guests.SourceGuest("pve1", 101, "lxc", CT101, parse_storage_cfg(STORAGE_CFG))
    job = ReplicaJob(source="pve1", guest=101, destination="pve3", dest_vmid=9101)
    (disk,) = replica.zfs_disks(ct, job)
    assert (disk.key, disk.source, disk.target) == (
        "rootfs", "rpool/data/subvol-101-disk-0", "rpool/replica/subvol-9101-disk-0")
    text = serialise(rewrite_for_destination(
        parse_guest_config(CT101, "lxc"), 101,
        RegistrationOptions(new_vmid=9101, storage_map={"local-zfs": "dapx-rpool-replica"},
                            bridge_map={"vmbr0": "vmbr1"}, cpu_host=True)))
    assert "rootfs: dapx-rpool-replica:subvol-9101-disk-0,size=1G\n" in text
    assert "bridge=vmbr1" in text and "onboot" not in text and "cpu:" not in text
    assert guests.config_path("lxc", 9101, "pve3") == "/etc/pve/nodes/pve3/lxc/9101.conf"


def test_syncoids_share_one_ssh_master_per_destination(tmp_path) -> None:  # noqa: ANN001
    """syncoid makes an SSH master per run, on a socket named /tmp/syncoid-<host>-<second>
    (concurrent transfers to one host would share and close it): every ``-S <socket>`` becomes
    the shared master of the destination (auto, kept a few seconds), ``-M`` goes, ``-O exit``
    does nothing, and every other argument reaches ssh unchanged."""
    import os
    import subprocess

    from dapx.blocks.node import ProxmoxNode
    from dapx.core import syncoid_argv

    dest = ProxmoxNode.model_construct(ssh_port=22)
    options = replica.syncoid_options(dataset.dataset_run(djob()), dest, False)
    argv = transfer_argv("rpool/data/share", "198.18.213.13", "rpool/backup/share", options)
    assert argv[0] == "env" and argv[3:5] == ["sh", "-c"] and argv[6:8] == ["sh", "syncoid"]
    assert argv[-2:] == ["rpool/data/share", "root@198.18.213.13:rpool/backup/share"]
    fake = tmp_path / "ssh"  # stands in for the real ssh: prints what it was given
    fake.write_text('#!/bin/sh\nfor a do printf "%s|" "$a"; done\n')
    fake.chmod(0o755)
    masters = tmp_path / "masters"
    env = {**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}"}
    shim = ["env", f"DAPX_MASTERS={masters}", "DAPX_PERSIST=5", *argv[3:7]]
    assert argv[1:3] == [f"DAPX_MASTERS={syncoid_argv.SHARED_MASTERS}",
                         f"DAPX_PERSIST={syncoid_argv.MASTER_PERSIST}"]

    def through_shim(*ssh_args: str) -> str:
        run = [*shim, "sh", "-c", 'ssh "$@"', "sh", *ssh_args]  # what syncoid does
        done = subprocess.run(run, capture_output=True, text=True, env=env)
        assert done.returncode == 0, done.stderr
        return done.stdout

    shared = [f"ControlPath={masters}/%C", "-o", "ControlMaster=auto", "-o",
              "ControlPersist=5"]
    first = through_shim("-M", "-S", "/tmp/syncoid-root@h-1", "-o", "ControlPersist=1m",
                         "root@h", "exit")
    assert first.split("|") == ["-o", *shared, "-o", "ControlPersist=1m", "root@h", "exit", ""]
    second = through_shim("-S", "/tmp/syncoid-root@h-2", "root@h", "a b", "$(x)", "'q'")
    assert second.split("|") == ["-o", *shared, "root@h", "a b", "$(x)", "'q'", ""]
    assert through_shim("-S", "/tmp/syncoid-root@h-1", "root@h", "-O", "exit") == ""
    assert masters.is_dir() and oct(masters.stat().st_mode & 0o777) == "0o700"
