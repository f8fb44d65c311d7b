"""Locks: one run at a time per guest and destination (DESIGN safety rule), and no lock outlives
the run that holds it.

A lock is a Prefect global concurrency limit of one slot, created by the product itself before
use. A run takes the slot with a **lease** (``LEASE_SECONDS``, Prefect's minimum) that it renews
while it works; the server's repossessor frees the slot of a lease nobody renews, so a run that
died never blocks the next one for longer than one lease period. ``dapx up`` runs the server
with file-backed lease storage, so leases survive a server restart (the in-memory default loses
them and the slot stays taken for good).

Who holds a lock is written to a Prefect variable ``dapx-lock-<limit>`` (flow run, lease; after
a release it names the last holder until the next run takes the slot). A run that waits
re-validates that holder: when its flow run is no longer running (finished, crashed,
cancelled, deleted), the holder's lease is released at once instead of waiting for it to expire.
A run that cannot get the slot within its wait fails with ``LockTimeout`` naming the holder, its
state, and when its lease ends.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
import time
from contextlib import asynccontextmanager, contextmanager
from contextvars import ContextVar
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, AsyncIterator, Awaitable, Callable, Iterator
from uuid import UUID

from dapx.errors import InputError, TransientError

DEFAULT_WAIT = 600.0
"""Seconds a run waits for another run of the same guest and destination."""

LEASE_SECONDS = 60.0
"""A held slot's lease (Prefect's minimum): the longest a dead run can block the next one,
plus the repossessor's loop (15 s)."""

RENEW_SECONDS = 15.0
POLL_SECONDS = 2.0
LIVE_STATES = {"RUNNING", "PENDING", "SCHEDULED", "PAUSED", "CANCELLING"}

_NAME = re.compile(r"[a-z0-9][a-z0-9.-]{0,199}")
log = logging.getLogger("dapx.locks")


class LockTimeout(TransientError):
    """Another run held the slot for longer than we were willing to wait."""


def guest_lock_name(node: str, vmid: int) -> str:
    """``dapx-guest-pve1-100``: one run at a time replicates, backs up, migrates, restores over
    or replaces a guest (and retention waits for its replicas)."""
    name = f"dapx-guest-{node}-{vmid}"
    if not _NAME.fullmatch(name):
        raise InputError(f"cannot build a lock name from {node!r}, {vmid!r}")
    return name


def dataset_lock_name(source: str, dataset: str, destination: str) -> str:
    """``dapx-dataset-pve1-rpool-data-share-to-pve3-1a2b3c4d``: one dataset replicated to
    one node. Dataset names may hold capitals, ``_`` and ``:``, which limit names may not:
    they are folded to dashes and a hash of the exact names keeps different datasets apart."""
    digest = hashlib.sha256(f"{source}\0{dataset}\0{destination}".encode()).hexdigest()[:8]
    folded = re.sub(r"[^a-z0-9.-]+", "-", dataset.lower())[:120]
    name = f"dapx-dataset-{source}-{folded}-to-{destination}-{digest}"
    if not _NAME.fullmatch(name):
        raise InputError(f"cannot build a lock name from {source!r}, {dataset!r}, "
                         f"{destination!r}")
    return name


# -----------------------------------------------------------------------------------------------
# The holder record


@dataclass(frozen=True)
class Holder:
    """Who holds a lock: written when the slot is taken, read by runs that wait."""

    flow_run: str | None
    lease: str
    since: str

    @classmethod
    def now(cls, flow_run: str | None, lease: UUID) -> "Holder":
        return cls(flow_run, str(lease), datetime.now(timezone.utc).isoformat(timespec="seconds"))


def holder_variable(lock: str) -> str:
    """``dapx-lock-<limit>``: the Prefect variable naming a lock's holder."""
    return f"dapx-lock-{lock}"


async def _read_holder(client: Any, lock: str) -> Holder | None:
    variable = await client.read_variable_by_name(holder_variable(lock))
    if variable is None:
        return None
    try:
        data = json.loads(variable.value) if isinstance(variable.value, str) else variable.value
        return Holder(**data)
    except (TypeError, ValueError):
        return None


async def _write_holder(client: Any, lock: str, holder: Holder) -> None:
    from prefect.client.schemas.actions import VariableCreate, VariableUpdate
    from prefect.exceptions import ObjectAlreadyExists

    import httpx

    value = json.dumps(asdict(holder))
    name = holder_variable(lock)
    update = VariableUpdate(name=name, value=value)
    try:  # the record exists after a lock's first use: one call then
        await soon_again(lambda: client.update_variable(update))
        return
    except httpx.HTTPStatusError as exc:
        if exc.response.status_code != 404:
            raise
    try:
        await soon_again(lambda: client.create_variable(
            VariableCreate(name=name, value=value, tags=["dapx-lock"])))
    except ObjectAlreadyExists:  # another run made it meanwhile
        await soon_again(lambda: client.update_variable(update))


async def _holder_state(client: Any, holder: Holder) -> tuple[str, str]:
    """(state type, flow run name) of the holder's flow run; ("GONE", "") when there is none."""
    from prefect.exceptions import ObjectNotFound

    if not holder.flow_run:
        return "UNKNOWN", ""
    try:
        run = await client.read_flow_run(UUID(holder.flow_run))
    except (ObjectNotFound, ValueError):
        return "GONE", ""
    state = run.state.type.value if run.state else "UNKNOWN"
    return state, run.name or ""


# -----------------------------------------------------------------------------------------------
# Taking, keeping and giving back a slot


async def ensure_limit(name: str, limit: int = 1) -> None:
    """Create the global concurrency limit ``name`` (limit 1) unless it exists already."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    async with get_client() as client:
        try:
            await client.read_global_concurrency_limit_by_name(name)
            return
        except ObjectNotFound:
            pass
        try:
            await client.create_global_concurrency_limit(
                GlobalConcurrencyLimitCreate(name=name, limit=limit))
        except ObjectAlreadyExists:  # another run created it between our two calls
            pass


async def ensure_limits(names: list[str]) -> None:
    """``ensure_limit`` for many names: one listing of the limits, then each missing one."""
    from prefect.client.orchestration import get_client

    known: set[str] = set()
    async with get_client() as client:
        while True:
            page = await client.read_global_concurrency_limits(limit=200, offset=len(known))
            known |= {limit.name for limit in page}
            if len(page) < 200:
                break
    await asyncio.gather(*(ensure_limit(n) for n in names if n not in known))


BUSY_RETRY_SECONDS = 0.1
BUSY_BUDGET_SECONDS = 60.0
_RETRY_STATUS = {502, 503, 504}
_QUICK: ContextVar[bool] = ContextVar("dapx_quick_requests", default=False)


class _Busy(ConnectionError):
    """A 502-504 answer to a request made inside ``soon_again`` (a ConnectionError: callers
    that give up on an unreachable server give up on a server busy past the budget too)."""

    def __init__(self, status: int) -> None:
        super().__init__(f"the Prefect server answered {status} (busy) for "
                         f"{BUSY_BUDGET_SECONDS:g} s")


async def _fail_fast(response: Any) -> None:
    """httpx response hook of ``lock_client``: inside ``soon_again``, a busy answer is raised
    at once, before Prefect's client sees it (it sleeps 2 s after a 503 even when told to
    retry 0 times, then returns the 503)."""
    if _QUICK.get() and response.status_code in _RETRY_STATUS:
        await response.aclose()
        raise _Busy(response.status_code)


_TLS: dict[tuple[bool, str], Any] = {}


def _tls_context() -> Any:
    """The TLS context Prefect's client would build for the API (its settings: skip verify,
    the CA file), built once per setting. Prefect builds one for every client it makes,
    loading the CA bundle each time (~50 ms of CPU here, also for an http:// API): a
    fleet's locks and node slots made hundreds."""
    import ssl

    import certifi
    from prefect.settings import PREFECT_API_SSL_CERT_FILE, PREFECT_API_TLS_INSECURE_SKIP_VERIFY

    key = (bool(PREFECT_API_TLS_INSECURE_SKIP_VERIFY.value()),
           PREFECT_API_SSL_CERT_FILE.value() or certifi.where())
    if key not in _TLS:
        if key[0]:
            context = ssl.create_default_context()
            context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
        else:
            context = ssl.create_default_context(cafile=key[1])
        _TLS[key] = context
    return _TLS[key]


_SHARED: ContextVar[Any] = ContextVar("dapx_shared_lock_client", default=None)


def lock_client() -> Any:
    """A Prefect client whose requests made inside ``soon_again`` come back at once when the
    server is busy (elsewhere it behaves as Prefect's own); inside ``shared_lock_client``,
    that block's client (Prefect's clients may be entered again)."""
    from prefect.client.orchestration import get_client

    shared = _SHARED.get()
    if shared is not None:
        return shared
    return get_client(httpx_settings={"event_hooks": {"response": [_fail_fast]},
                                      "verify": _tls_context()})


@asynccontextmanager
async def shared_lock_client() -> AsyncIterator[None]:
    """Every lock call in the block (and in the tasks it starts) through one client: a
    fleet round's guests each take and give back node slots, and each new client fetched a
    CSRF token before its first request (7% of a 100-guest round's run process, py-spy)."""
    async with lock_client() as client:
        token = _SHARED.set(client)
        try:
            yield
        finally:
            _SHARED.reset(token)


_NO_RETRIES: tuple[Any, Any] | None = None
"""(the settings last copied, its copy with the client's retries off)."""


@contextmanager
def _no_client_retries() -> Iterator[None]:
    """Prefect's client told to retry 0 times (``temporary_settings``), with the copy of the
    settings made once per settings object: each copy costs ~60 ms of CPU (pydantic reads
    the environment and the profile again), and a fleet's 100 holder records spent 31% of
    its run's CPU on them (measured with py-spy)."""
    from prefect.context import SettingsContext, get_settings_context
    from prefect.settings import PREFECT_CLIENT_MAX_RETRIES

    global _NO_RETRIES
    context = get_settings_context()
    cached = _NO_RETRIES  # one read: another thread may replace it meanwhile
    if cached is None or cached[0] is not context.settings:
        cached = _NO_RETRIES = (context.settings, context.settings.copy_with_update(
            updates={PREFECT_CLIENT_MAX_RETRIES: 0}))
    with SettingsContext(profile=context.profile, settings=cached[1]):
        yield


async def soon_again(call: Callable[[], Awaitable[Any]]) -> Any:
    """``call()`` (one request to the Prefect server through a ``lock_client``), tried again
    while the server answers 502-504 or cannot be reached: after 0.1 s, then twice as long
    each time up to 2 s, for up to BUSY_BUDGET_SECONDS; then the error is raised. A SQLite
    server answers 503 to a write while it stores another run's events, and Prefect's client
    would wait 2 s (measured: a 1.2-2.4 s stall at the end of one run in three)."""
    import httpx

    deadline, pause = time.monotonic() + BUSY_BUDGET_SECONDS, BUSY_RETRY_SECONDS
    while True:
        token = _QUICK.set(True)
        try:
            with _no_client_retries():
                return await call()
        except _Busy:
            if time.monotonic() >= deadline:
                raise
        except httpx.HTTPStatusError as exc:
            if exc.response.status_code not in _RETRY_STATUS or time.monotonic() >= deadline:
                raise
        except httpx.TransportError:
            if time.monotonic() >= deadline:
                raise
        finally:
            _QUICK.reset(token)
        await asyncio.sleep(pause)
        pause = min(pause * 2, POLL_SECONDS)


class _Held(Exception):
    """A slot asked for is held (423); ``retry_after``: when the server says to ask again."""

    def __init__(self, retry_after: float) -> None:
        super().__init__(f"held; ask again in {retry_after:g} s")
        self.retry_after = retry_after


async def _lease(client: Any, names: list[str], flow_run: str | None) -> UUID:
    """The lease id of one slot of every limit in ``names`` (all or none), taken now.
    Raises _Held when a slot is held, InputError when a limit does not exist (Prefect's
    server would take none of it and say nothing)."""
    import httpx
    from prefect.client.schemas.objects import ConcurrencyLeaseHolder

    holder = ConcurrencyLeaseHolder(type="flow_run", id=UUID(flow_run)) if flow_run else None
    try:
        response = await soon_again(lambda: client.increment_concurrency_slots_with_lease(
            names=names, slots=1, mode="concurrency", lease_duration=LEASE_SECONDS,
            holder=holder))
    except httpx.HTTPStatusError as exc:
        if exc.response.status_code == 423:
            raise _Held(_retry_after(exc.response)) from None
        raise
    body = response.json()
    found = {limit["name"] for limit in body.get("limits", [])}
    if missing := [n for n in names if n not in found]:
        await soon_again(lambda: client.release_concurrency_slots_with_lease(
            lease_id=UUID(body["lease_id"])))
        raise InputError(f"no Prefect global concurrency limit named {', '.join(missing)} "
                         "(deleted while in use?); the next run creates it again")
    return UUID(body["lease_id"])


def _retry_after(response: Any) -> float:
    """The seconds a 423 answer's Retry-After names (POLL_SECONDS without a number)."""
    try:
        return float(response.headers.get("Retry-After", POLL_SECONDS))
    except ValueError:
        return POLL_SECONDS


async def _try_acquire(client: Any, name: str | list[str], flow_run: str | None) -> UUID | None:
    """The lease id of a slot of ``name`` (of every name in a list, all or none) taken now,
    or None when a slot is held."""
    try:
        return await _lease(client, name if isinstance(name, list) else [name], flow_run)
    except _Held:
        return None


async def wait_for_slots(names: list[str], flow_run: str | None) -> UUID:
    """The lease id of one slot of every limit in ``names`` (all or none), waiting as long as
    it takes: asked again when the server's Retry-After says (at most every POLL_SECONDS),
    as Prefect's ``concurrency()`` does."""
    async with lock_client() as client:
        while True:
            try:
                return await _lease(client, names, flow_run)
            except _Held as held:
                await asyncio.sleep(min(max(held.retry_after, BUSY_RETRY_SECONDS),
                                        POLL_SECONDS))


async def _free_if_dead(client: Any, name: str) -> tuple[Holder | None, str, str]:
    """Release the holder's lease when its run is no longer live; (holder, state, run name)."""
    holder = await _read_holder(client, name)
    if holder is None:
        return None, "UNKNOWN", ""
    state, run_name = await _holder_state(client, holder)
    if state not in LIVE_STATES and state != "UNKNOWN":
        log.warning("lock %s: its holder, flow run %s %s, is %s; freeing its slot", name,
                    run_name or "?", holder.flow_run, state.lower())
        await client.release_concurrency_slots_with_lease(lease_id=UUID(holder.lease))
    return holder, state, run_name


def _timeout_message(name: str, what: str, wait: float, holder: Holder | None, state: str,
                     run_name: str) -> str:
    lease_end = datetime.now(timezone.utc) + timedelta(seconds=LEASE_SECONDS)
    who = ""
    if holder is not None and holder.flow_run:
        who = (f": flow run {run_name or '?'} ({holder.flow_run}, {state.lower()}, since "
               f"{holder.since})")
    return (f"another run is already {what} (lock {name!r}){who}; waited {wait:g} s. If that "
            f"run died, its slot frees when its lease ends, by {lease_end:%H:%M:%S} UTC at the "
            "latest; otherwise try again when it has finished")


async def acquire(name: str, what: str, wait: float, flow_run: str | None) -> UUID:
    """Take the slot of limit ``name``, waiting up to ``wait`` seconds, and write its holder
    record; return the lease id.

    Raises LockTimeout naming the holder when the slot does not free up in time.
    """
    lease = await take(name, what, wait, flow_run)
    async with lock_client() as client:
        await _write_holder(client, name, Holder.now(flow_run, lease))
    return lease


async def take(name: str, what: str, wait: float, flow_run: str | None) -> UUID:
    """``acquire`` without the holder record (the caller writes it)."""
    deadline = time.monotonic() + wait
    freed: set[str] = set()
    async with lock_client() as client:
        while True:
            lease = await _try_acquire(client, name, flow_run)
            if lease is not None:
                return lease
            holder, state, run_name = await _free_if_dead(client, name)
            if holder is not None and state not in LIVE_STATES and state != "UNKNOWN" \
                    and holder.lease not in freed:
                freed.add(holder.lease)
                continue  # its slot was just freed: try again at once (once per holder)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise LockTimeout(_timeout_message(name, what, wait, holder, state, run_name))
            await asyncio.sleep(min(POLL_SECONDS, remaining))


async def _keep(name: str, lease: UUID) -> None:
    """Renew the lease every RENEW_SECONDS until cancelled. A renewal that fails (server
    restarting) is tried again at the next tick; a lease the server lost is logged, and the
    run carries on (its work matters more than the lock's bookkeeping)."""
    import httpx
    from prefect.client.orchestration import get_client

    while True:
        await asyncio.sleep(RENEW_SECONDS)
        try:
            async with get_client() as client:
                await client.renew_concurrency_lease(lease, lease_duration=LEASE_SECONDS)
        except httpx.HTTPStatusError as exc:
            if exc.response.status_code == 410:
                log.warning("lock %s: the Prefect server lost this run's lease (a restart with "
                            "in-memory lease storage?); carrying on", name)
                return
            log.warning("lock %s: lease renewal failed (%s); retrying", name, exc)
        except (httpx.HTTPError, OSError, RuntimeError) as exc:
            log.warning("lock %s: lease renewal failed (%s); retrying", name, exc)


async def release(name: str, lease: UUID) -> None:
    """Give the slot back (idempotent: a lease already released or expired is a no-op).

    The holder record stays, naming the last holder: it is rewritten by the next run that
    takes the slot, and a waiter that reads it while the slot is free or newly taken only
    releases that finished run's lease again (a no-op). Deleting it cost ~2 s at the end of
    every run on a SQLite server (a variable delete waits there while the run's task events
    are written)."""
    import httpx

    for attempt in range(3):
        try:
            async with lock_client() as client:
                await soon_again(lambda: client.release_concurrency_slots_with_lease(
                    lease_id=lease))
            return
        except (httpx.HTTPError, OSError, RuntimeError) as exc:  # RuntimeError: client closed
            if attempt == 2:
                log.warning("lock %s: could not release (%s); its lease frees it within %g s",
                            name, exc, LEASE_SECONDS)
            else:
                await asyncio.sleep(2.0)


@asynccontextmanager
async def kept(leases: dict[UUID, list[str]]) -> AsyncIterator[None]:
    """Renew each lease (held for the names it lists) while the body runs, then release them
    all, shielded: a run cancelled in its body still gives its slots back."""
    keepers = [asyncio.create_task(_keep(held[0], one)) for one, held in leases.items()]
    try:
        yield
    finally:
        for keeper in keepers:
            keeper.cancel()
        await asyncio.shield(asyncio.gather(*(release(held[0], one)
                                              for one, held in leases.items())))


def current_flow_run() -> str | None:
    """The id of the flow run this code runs in (None outside a run)."""
    from prefect.context import FlowRunContext

    context = FlowRunContext.get()
    return str(context.flow_run.id) if context and context.flow_run else None


@asynccontextmanager
async def exclusive(name: str, what: str, wait: float = DEFAULT_WAIT) -> AsyncIterator[None]:
    """Hold the slot of limit ``name`` for the body; ``what`` names the work in messages.

    Raises LockTimeout when no slot frees up within ``wait`` seconds. Only the acquisition is
    guarded: a timeout raised by the body itself passes through unchanged.
    """
    await ensure_limit(name)
    flow_run = current_flow_run()
    lease = await take(name, what, wait, flow_run)
    async with kept({lease: [name]}):
        # The holder record is written before the body: a run killed in its first moments
        # (before a record written beside the body landed) left the next run waiting for
        # its lease to end, up to 75 s, instead of freeing it at once. A write that fails is
        # logged, and the run goes on (the lease still holds the lock).
        await _write_holders({lease: [name]}, flow_run)
        yield


@asynccontextmanager
async def holding_free(names: list[str]) -> AsyncIterator[set[str]]:
    """Hold every lock in ``names`` that is free now, never waiting; yields the names held
    (their holder records name this run). One lease for all when all are free (the common
    case), else one per free lock. Renewed while the body runs, released after it."""
    if not names:
        yield set()
        return
    await ensure_limits(names)
    flow_run = current_flow_run()
    async with lock_client() as client:
        lease = await _try_acquire(client, names, flow_run)
        if lease is not None:
            leases = {lease: list(names)}
        else:
            taken = await asyncio.gather(*(_try_acquire(client, n, flow_run) for n in names))
            leases = {one: [n] for n, one in zip(names, taken) if one is not None}
    # The leases hold the locks; the holder records only name this run to waiters. They are
    # written beside the body: on a SQLite server a write waits while the run's task events
    # are stored (2.4 s measured for two records after a fleet's first tasks).
    writer = asyncio.create_task(_write_holders(leases, flow_run))
    async with kept(leases):
        try:
            yield {n for held in leases.values() for n in held}
        finally:
            await asyncio.shield(_stop(writer))


async def _stop(writer: "asyncio.Task[None]") -> None:
    """Stop the holder-record writer of ``holding_free`` once the body is done, and wait
    until it has stopped: a record not written by then would only name a run that is giving
    its slot back (a waiter reading the older record releases that finished run's lease
    again, a no-op), and none is written after the release. On a SQLite server, which
    answers 503 to a write while it stores a run's task events, such a writer took up to
    1.7 s, and waiting for it held up the end of 2 of 8 quick guest runs by up to 0.84 s."""
    writer.cancel()
    await asyncio.gather(writer, return_exceptions=True)


async def _write_holders(leases: dict[UUID, list[str]], flow_run: str | None) -> None:
    """The holder record of every lock in ``leases``, one after another; the records that
    fail are logged once, the others still written (a waiter then sees an older record, and
    waits for the lease as it would for a live holder). One at a time: 100 writes at once
    collide on a SQLite server (each 503 is asked again), and took 45-50 s there, delaying
    the body's first tasks by 2.2 s; one after another they took 3.3-3.9 s
    (``bench/locks.py``)."""
    total, written, why = sum(len(h) for h in leases.values()), 0, None
    try:
        async with lock_client() as client:
            for one, held in leases.items():
                for name in held:
                    try:
                        await _write_holder(client, name, Holder.now(flow_run, one))
                        written += 1
                    except Exception as exc:  # informational records: never fail the run
                        why = exc
    except Exception as exc:  # the client itself
        why = exc
    if written < total:
        log.warning("could not write the holder records of %d of %d lock(s): %s",
                    total - written, total, why)


async def run_exclusively(name: str, what: str, wait: float, dry_run: bool,
                          body: Callable[[bool], Awaitable[None]]) -> None:
    """``body(dry_run)`` with the flow run's node sessions open, holding lock ``name`` unless
    it is a dry run (a plan changes nothing, so it never waits for a running transfer)."""
    from dapx.tasks.ssh import node_sessions

    async with node_sessions():
        if dry_run:
            await body(True)
        else:
            async with exclusive(name, what, wait):
                await body(False)
