"""dataset-replica (plain dataset mode) on the lab: rpool/data/share with a child, pve1 ->
pve3 as rpool/backup/share, recursively.

In file order, like a job's life: hostile names refused, full copy, incremental, versions
kept. Asserts what a user sees: every file's sha256 on both sides, snapshot lists.
"""

from __future__ import annotations

import os
import time

import pytest

from dapx.core.jobspec import DatasetJob
from dapx.errors import InputError
from dapx.lab import estate
from test_replica_helpers import harness, lab_state, sh, sha256, write_random, zfs_snapshots

pytestmark = pytest.mark.lab

SRC, DST = "pve1", "pve3"
DATASETS = {"rpool/data/share": "rpool/backup/share",
            "rpool/data/share/child": "rpool/backup/share/child"}
FILES = ["a.bin", "docs/readme.txt", "child/c.bin"]  # relative to /rpool/data/share
TAG = "dapx_pve3-rpool-backup-share_"


def job(**changes) -> DatasetJob:
    base = dict(source=SRC, dataset="rpool/data/share", destination=DST,
                dest_dataset="rpool/backup/share", recursive=True, keep=2)
    return DatasetJob(**(base | changes))


def destroy(node: str, dataset: str) -> None:
    """``zfs destroy -r -f``, retried: zfs-fuse answers 'dataset is busy' for a while after a
    dataset was created or mounted."""
    for _ in range(20):
        result = estate.run(node, ["zfs", "destroy", "-r", "-f", dataset], timeout=120)
        if result.returncode == 0 or "does not exist" in result.stderr:
            return
        time.sleep(0.5)
    raise AssertionError(f"cannot destroy {node}:{dataset}: {result.stderr}")


def make_source() -> None:
    """A fresh rpool/data/share with a child dataset and files on pve1; nothing on pve3."""
    destroy(SRC, "rpool/data/share")
    destroy(DST, "rpool/backup")
    sh(SRC, ["zfs", "create", "rpool/data/share"])
    sh(SRC, ["zfs", "create", "rpool/data/share/child"])
    sh(SRC, ["mkdir", "-p", "/rpool/data/share/docs"])
    sh(SRC, ["dd", "of=/rpool/data/share/a.bin", "bs=1M", "status=none"],
       input=os.urandom(4 * 1024 * 1024))
    sh(SRC, ["dd", "of=/rpool/data/share/docs/readme.txt", "status=none"], input=b"share\n")
    sh(SRC, ["dd", "of=/rpool/data/share/child/c.bin", "bs=1M", "status=none"],
       input=os.urandom(2 * 1024 * 1024))


def assert_files_equal() -> None:
    for rel in FILES:
        assert sha256(SRC, f"/rpool/data/share/{rel}") == \
            sha256(DST, f"/rpool/backup/share/{rel}"), rel


def ours(node: str, dataset: str) -> list[str]:
    return [s for s in zfs_snapshots(node, dataset) if s.startswith(TAG)]


@pytest.fixture(scope="module", autouse=True)
def prefect_lab(request: pytest.FixtureRequest):
    lab_state(request)
    make_source()
    yield from harness(request)


async def test_hostile_dataset_names_refused_before_anything_runs() -> None:
    from dapx.cli import main

    for bad in ({"dataset": "rpool/data/share; rm -rf /"}, {"dataset": "rpool/data/$(id)"},
                {"dest_dataset": "rpool/backup/share`reboot`"}, {"dest_dataset": "rpool"},
                {"dataset": "rpool/data/share@x"}, {"dataset": "-rpool/data"}):
        with pytest.raises(InputError):
            DatasetJob.from_input(**(job().model_dump() | bad))
    assert main(["job", "create", "dataset", "--source", SRC, "--dataset", "rpool/x y",
                 "--dest", DST, "--dest-dataset", "rpool/backup/x"]) == 2
    # a child whose name dapx refuses, found on the source at run time
    sh(SRC, ["zfs", "create", "rpool/data/share/bad name"])
    try:
        from dapx.flows.dataset import dataset_replica
        from dapx.flows.trust import trust_nodes

        await trust_nodes(SRC, DST)
        with pytest.raises(InputError, match="bad name"):
            await dataset_replica(job=job())
    finally:
        destroy(SRC, "rpool/data/share/bad name")
    assert all(zfs_snapshots(SRC, ds) == [] for ds in DATASETS)
    assert estate.run(DST, ["zfs", "list", "rpool/backup"]).returncode != 0


async def test_dry_run_then_full_recursive_copy() -> None:
    from dapx.flows.dataset import dataset_replica

    plan = await dataset_replica(job=job(), dry_run=True)
    assert [d.plan.split(" of ")[0] for d in plan.datasets] == ["full send", "full send"]
    assert all(zfs_snapshots(SRC, ds) == [] for ds in DATASETS)
    result = await dataset_replica(job=job())
    assert [(d.source_dataset, d.dest_dataset) for d in result.datasets] == list(DATASETS.items())
    assert result.bytes_sent >= 6 * 1024 * 1024
    assert_files_equal()
    for src, dst in DATASETS.items():
        assert ours(SRC, src) == ours(DST, dst) == [result.snapshot]


async def test_incremental_second_run() -> None:
    from dapx.flows.dataset import dataset_replica

    write_random(SRC, "/rpool/data/share/child/c.bin", 1)
    result = await dataset_replica(job=job())
    assert all(d.plan.startswith("incremental") for d in result.datasets)
    assert result.bytes_sent < 2 * 1024 * 1024  # 1 MiB changed out of 6 MiB
    assert_files_equal()


async def test_versions_to_keep_on_both_sides() -> None:
    from dapx.flows.dataset import dataset_replica

    result = await dataset_replica(job=job())
    for src, dst in DATASETS.items():
        assert len(ours(SRC, src)) == 2 and ours(SRC, src) == ours(DST, dst)
        assert ours(SRC, src)[-1] == result.snapshot
    assert_files_equal()


async def test_forced_resend_of_the_tree_arrives_beside_then_swaps_at_its_root() -> None:
    from dapx.errors import ConflictError
    from dapx.flows.dataset import dataset_replica

    for src in DATASETS:  # an administrator deleted the source's snapshots
        for snap in ours(SRC, src):
            sh(SRC, ["zfs", "destroy", f"{src}@{snap}"])
    write_random(SRC, "/rpool/data/share/a.bin", 1)
    with pytest.raises(ConflictError, match="none shared with the source"):
        await dataset_replica(job=job())
    result = await dataset_replica(job=job(), force=True)
    assert all("beside the old copy" in d.plan for d in result.datasets)
    assert_files_equal()
    for src, dst in DATASETS.items():
        assert ours(SRC, src) == ours(DST, dst) == [result.snapshot]
    assert estate.run(DST, ["zfs", "list", "rpool/backup/dapx-resend"]).returncode != 0
