"""The protection store: a small SQL database of successful replicas, backups and recoveries
(X4) and of the runs already notified (so a crashed run is notified exactly once, P7).

Any SQLAlchemy URL works (SQLite by default; PostgreSQL for several workers on several hosts).
URLs without an async driver get one: ``sqlite:///`` -> ``sqlite+aiosqlite:///``,
``postgresql://`` -> ``postgresql+asyncpg://`` (both drivers come with Prefect). Tables are
created on first use. Plain class, no Prefect: ``dapx.tasks.store`` opens it with the
configured URL.
"""

from __future__ import annotations

from contextlib import asynccontextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, AsyncIterator

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from dapx.core.protection import Record

KEEP_HISTORY = timedelta(days=35)
"""Older records are pruned, except the newest of each subject, kind, destination and job."""

metadata = sa.MetaData()
records = sa.Table(
    "dapx_protection_records", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("subject", sa.String(300), nullable=False),
    sa.Column("kind", sa.String(20), nullable=False),
    sa.Column("destination", sa.String(300), nullable=False, default=""),
    sa.Column("job", sa.String(300), nullable=False, default=""),
    sa.Column("at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("ref", sa.String(300), nullable=False, default=""),
    sa.Column("bytes_sent", sa.BigInteger, nullable=False, default=0),
    sa.Column("seconds", sa.Float, nullable=False, default=0.0),
    sa.Column("flow_run_id", sa.String(64), nullable=False, default=""),
    sa.Index("ix_dapx_records_subject", "subject", "kind", "destination", "job"),
    sa.Index("ix_dapx_records_run", "flow_run_id"),
)
notified = sa.Table(
    "dapx_notified_runs", metadata,
    sa.Column("flow_run_id", sa.String(64), primary_key=True),
    sa.Column("attempt", sa.Integer, primary_key=True),
    sa.Column("outcome", sa.String(20), nullable=False),
    sa.Column("at", sa.DateTime(timezone=True), nullable=False),
)


def async_url(url: str) -> str:
    """The URL with an async driver (``sqlite+aiosqlite``, ``postgresql+asyncpg``)."""
    for plain, driver in (("sqlite://", "sqlite+aiosqlite://"),
                          ("postgresql://", "postgresql+asyncpg://"),
                          ("postgres://", "postgresql+asyncpg://")):
        if url.startswith(plain):
            return driver + url[len(plain):]
    return url


def _utc(value: datetime) -> datetime:
    """SQLite hands back naive datetimes: they were stored in UTC."""
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value


class ProtectionStore:
    """One database. Use as ``async with ProtectionStore(url) as store: ...``; each use opens
    and disposes its own engine, so hooks and flows on different event loops never share
    connections."""

    def __init__(self, url: str) -> None:
        self.url = async_url(url)
        self._engine: AsyncEngine | None = None

    def __repr__(self) -> str:  # a PostgreSQL URL may hold a password
        return f"ProtectionStore({sa.engine.make_url(self.url).render_as_string()})"

    async def __aenter__(self) -> "ProtectionStore":
        options: dict[str, Any] = {}
        if self.url.startswith("sqlite"):
            path = sa.engine.make_url(self.url).database
            if path and path != ":memory:":
                Path(path).parent.mkdir(parents=True, exist_ok=True)
            # Flow runs in several processes write at once: wait for the lock, don't fail.
            options["connect_args"] = {"timeout": 30}
        self._engine = create_async_engine(self.url, **options)
        if self.url.startswith("sqlite"):
            sa.event.listen(self._engine.sync_engine, "connect", _sqlite_wal)
        try:
            async with self._engine.begin() as conn:
                await conn.run_sync(metadata.create_all)
        except BaseException:
            # No connection may outlive a failed open: aiosqlite keeps a (non-daemon) thread
            # per connection, which would hold the process open at exit.
            await self.__aexit__()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._engine is not None:
            await self._engine.dispose()
            self._engine = None

    @asynccontextmanager
    async def _begin(self) -> AsyncIterator[Any]:
        if self._engine is None:
            raise RuntimeError("ProtectionStore used outside `async with`")
        async with self._engine.begin() as conn:
            yield conn

    async def add(self, record: Record) -> None:
        """Store one record; prune history older than KEEP_HISTORY (keeping each group's
        newest, so a guest last protected long ago still shows its age)."""
        async with self._begin() as conn:
            await conn.execute(records.insert().values(
                subject=record.subject, kind=record.kind, destination=record.destination,
                job=record.job, at=record.at, ref=record.ref, bytes_sent=record.bytes_sent,
                seconds=record.seconds, flow_run_id=record.flow_run_id))
            newest = sa.select(sa.func.max(records.c.id)).group_by(
                records.c.subject, records.c.kind, records.c.destination, records.c.job)
            await conn.execute(records.delete().where(
                records.c.at < record.at - KEEP_HISTORY, records.c.id.not_in(newest)))

    async def latest(self) -> list[Record]:
        """The newest record of each subject, kind, destination and job."""
        newest = sa.select(sa.func.max(records.c.id)).group_by(
            records.c.subject, records.c.kind, records.c.destination, records.c.job)
        return await self._select(records.c.id.in_(newest))

    async def for_run(self, flow_run_id: str) -> list[Record]:
        """The records one flow run made."""
        return await self._select(records.c.flow_run_id == str(flow_run_id))

    async def _select(self, where: Any) -> list[Record]:
        async with self._begin() as conn:
            rows = (await conn.execute(sa.select(records).where(where)
                                       .order_by(records.c.id))).mappings().all()
        return [Record(subject=r["subject"], kind=r["kind"], destination=r["destination"],
                       job=r["job"], at=_utc(r["at"]), ref=r["ref"],
                       bytes_sent=r["bytes_sent"], seconds=r["seconds"],
                       flow_run_id=r["flow_run_id"]) for r in rows]

    async def claim_notification(self, flow_run_id: str, attempt: int, outcome: str) -> bool:
        """Mark attempt ``attempt`` of a flow run as notified. True for the first caller
        only: the database's primary key decides between a hook and the automation's
        notify-run racing each other, even in different processes or hosts."""
        try:
            async with self._begin() as conn:
                await conn.execute(notified.insert().values(
                    flow_run_id=str(flow_run_id), attempt=int(attempt), outcome=outcome,
                    at=datetime.now(timezone.utc)))
        except IntegrityError:
            return False
        return True

    async def notified(self, flow_run_id: str) -> list[tuple[int, str]]:
        """(attempt, outcome) of every notification claimed for a flow run."""
        async with self._begin() as conn:
            rows = (await conn.execute(
                sa.select(notified.c.attempt, notified.c.outcome)
                .where(notified.c.flow_run_id == str(flow_run_id)))).all()
        return [(r[0], r[1]) for r in rows]


def _sqlite_wal(dbapi_connection: Any, _record: Any) -> None:
    """WAL lets readers (`dapx status`) work while a run writes."""
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.close()
