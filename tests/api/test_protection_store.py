"""The protection store (X4, P7) on SQLite and on a real PostgreSQL server started here: the
newest record per guest, kind, destination and job; history pruned without losing a guest's
last record; records of one run; a run's notification claimed once even when claimants race
with their own connections (as a crash hook and notify-run do, in different processes)."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import tempfile
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from dapx.core.protection import Record
from dapx.transports.store import ProtectionStore, async_url
from tests.helpers.receivers import free_port

NOW = datetime.now(timezone.utc)


def _pg_bin() -> Path:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))
    if not found:
        pytest.fail("PostgreSQL server binaries are not installed (Debian package "
                    "postgresql-15): the store's PostgreSQL support is tested against a real "
                    "server", pytrace=False)
    return found[-1].parent


def _as_postgres(argv: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: run it as the postgres user then."""
    return ["runuser", "-u", "postgres", "--", *argv] if os.geteuid() == 0 else argv


@pytest.fixture(scope="module")
def postgres_url():
    """A throwaway PostgreSQL cluster on 127.0.0.1 (trust auth), removed afterwards."""
    bindir, port = _pg_bin(), free_port()
    home = Path(tempfile.mkdtemp(prefix="dapx-pg-"))
    if os.geteuid() == 0:
        shutil.chown(home, "postgres", "postgres")
    data = home / "data"
    try:
        subprocess.run(_as_postgres([str(bindir / "initdb"), "-D", str(data), "-A", "trust",
                                     "-U", "dapx", "--no-sync"]),
                       check=True, capture_output=True)
        subprocess.run(_as_postgres([str(bindir / "pg_ctl"), "-D", str(data), "-w", "-l",
                                     str(home / "log"), "-o",
                                     f"-p {port} -k {home} -c listen_addresses=127.0.0.1 "
                                     "-c fsync=off", "start"]), check=True, capture_output=True)
        yield f"postgresql://dapx@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(_as_postgres([str(bindir / "pg_ctl"), "-D", str(data), "-m",
                                     "immediate", "stop"]), capture_output=True)
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path):  # noqa: ANN201
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/dapx/protection.db"
        return
    url = request.getfixturevalue("postgres_url")
    yield url

    async def wipe() -> None:  # each test starts from empty tables
        from dapx.transports.store import metadata

        async with ProtectionStore(url) as store:
            async with store._begin() as conn:
                await conn.run_sync(metadata.drop_all)

    asyncio.run(wipe())


def rec(subject: str, kind: str, destination: str, age: timedelta, job: str = "j",
        run: str = "") -> Record:
    return Record(subject=subject, kind=kind, destination=destination, at=NOW - age, job=job,
                  ref=f"snap-{age.total_seconds():.0f}", bytes_sent=100, seconds=1.5,
                  flow_run_id=run)


def test_latest_per_guest_kind_destination_and_job_and_pruning(store_url: str) -> None:
    async def scenario() -> None:
        async with ProtectionStore(store_url) as store:
            for age in (timedelta(days=60), timedelta(days=40), timedelta(hours=1)):
                await store.add(rec("pve1/100", "replica", "pve3", age, run=f"r{age.days}"))
            await store.add(rec("pve1/100", "backup", "pbs1:store", timedelta(days=50)))
            await store.add(rec("pve1/101", "replica", "pve3", timedelta(days=90), job="k"))
            await store.add(rec("pve1/101", "replica", "pve3", timedelta(days=1), job="k"))
            latest = {(r.subject, r.kind): r for r in await store.latest()}
            assert set(latest) == {("pve1/100", "replica"), ("pve1/100", "backup"),
                                   ("pve1/101", "replica")}
            assert latest[("pve1/100", "replica")].at == NOW - timedelta(hours=1)
            # the only backup is 50 days old: pruning kept it, it is the newest of its group
            assert latest[("pve1/100", "backup")].ref == f"snap-{50 * 86400}"
            assert latest[("pve1/100", "replica")].at.tzinfo is not None
            assert [r.ref for r in await store.for_run("r0")] == ["snap-3600"]
            # older than 35 days and not the newest of their group: pruned
            assert await store.for_run("r40") == [] and await store.for_run("r60") == []

    asyncio.run(scenario())


def test_a_runs_notification_is_claimed_once_even_in_a_race(store_url: str) -> None:
    async def claim(attempt: int) -> bool:
        async with ProtectionStore(store_url) as store:  # a connection of its own
            return await store.claim_notification("run-1", attempt, "Crashed")

    async def scenario() -> None:
        async with ProtectionStore(store_url):  # tables exist before the race
            pass
        assert sorted(await asyncio.gather(*(claim(1) for _ in range(6)))) == \
            [False] * 5 + [True]
        assert await claim(2)  # the run's next attempt is another notification
        async with ProtectionStore(store_url) as store:
            assert sorted(await store.notified("run-1")) == [(1, "Crashed"), (2, "Crashed")]

    asyncio.run(scenario())


def test_urls_get_async_drivers_and_never_show_a_password() -> None:
    assert async_url("sqlite:////var/lib/x.db") == "sqlite+aiosqlite:////var/lib/x.db"
    assert async_url("postgresql://u:p@db/dapx") == "postgresql+asyncpg://u:p@db/dapx"
    assert async_url("postgresql+asyncpg://u:p@db/x") == "postgresql+asyncpg://u:p@db/x"
    assert "Db-Pa55" not in repr(ProtectionStore("postgresql://dapx:Db-Pa55@db:5432/dapx"))

