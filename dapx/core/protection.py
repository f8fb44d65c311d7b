"""Protection state per guest (X4), as pure functions over three lists.

In: the guests the nodes report (``Guest``), what each job covers (``Cover``, from the job's
deployment: flow, parameters, cron) and the successful runs the store recorded (``Record``).
Out: one ``Protection`` row per guest (and per dataset a job replicates): the age of its newest
replica and backup, and its state:

- ``ok``: every job covering it succeeded within twice its interval;
- ``late``: some job's newest success is older than twice its interval (or it has none and
  the job is older than that);
- ``pending``: a job covers it but has not run yet and is younger than twice its interval;
- ``unprotected``: no job covers it.

A guest that is the replica a job registered on its destination is a copy, not a guest to
protect, and is left out, until the failover flow starts it as the live guest (X5): from then
on it is a guest of its own (unprotected until a job covers it), and both rows say so, until a
job copies the guest again (after a failback). The original a failback set aside is a guest
too, and its row says what it is.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any, Iterable, Literal, Mapping

Kind = Literal["replica", "backup"]
State = Literal["ok", "late", "pending", "unprotected"]
RECORD_KINDS = ("replica", "backup", "recovery", "failover", "failback")
"""What ``record_protection`` accepts; a recovery (a replica through PBS, R5) counts as a
replica. A failover (its destination is the started copy, ``pve3/9100``) and a failback (its
destination is the live copy it brought home, its ref the original it set aside,
``pve1/102``, or empty) are events, no copies at all."""
EVENT_KINDS = ("failover", "failback")
LATE_FACTOR = 2
"""A job is late when its newest success is older than this many intervals."""
_SEVERITY = {"unprotected": 0, "late": 1, "pending": 2, "ok": 3}


@dataclass(frozen=True)
class Guest:
    """A guest as a node's API lists it."""

    node: str
    vmid: int
    name: str = ""
    kind: str = "qemu"

    @property
    def subject(self) -> str:
        return guest_subject(self.node, self.vmid)


@dataclass(frozen=True)
class Record:
    """One successful replica, backup or recovery (a row of the store)."""

    subject: str
    """``pve1/100`` for a guest, ``pve1:rpool/data/share`` for a dataset."""
    kind: str
    destination: str
    at: datetime
    job: str = ""
    ref: str = ""
    """The snapshot or backup id made."""
    bytes_sent: int = 0
    seconds: float = 0.0
    flow_run_id: str = ""

    @property
    def counts_as(self) -> Kind:
        return "backup" if self.kind == "backup" else "replica"


@dataclass(frozen=True)
class Cover:
    """One job protecting one subject."""

    job: str
    """``zfs-replica/vm100-to-pve3``."""
    kind: Kind
    subject: str
    destination: str = ""
    interval: timedelta | None = None
    """Longest gap of the job's schedule; None for a job without one (run by hand)."""
    created: datetime | None = None
    paused: bool = False
    replica: str = ""
    """The guest this job registers on its destination (``pve3/9100``), a copy; for a cover
    of every guest of a node, ``pve3/*``: each guest's copy at its VMID + ``replica_offset``."""
    replica_offset: int = 0


@dataclass(frozen=True)
class Protection:
    """One guest's (or dataset's) row."""

    subject: str
    name: str = ""
    state: State = "unprotected"
    replica_at: datetime | None = None
    replica_to: str = ""
    backup_at: datetime | None = None
    backup_to: str = ""
    jobs: tuple[str, ...] = ()
    reasons: tuple[str, ...] = field(default_factory=tuple)
    """Why it is late or unprotected, one line each."""

    @property
    def problem(self) -> bool:
        return self.state in ("late", "unprotected")


EVERY_GUEST = "*"
"""The VMID of a cover that protects every guest of its node (a backup job without a list)."""


def expand_covers(guests: list[Guest], covers: list[Cover]) -> list[Cover]:
    """Covers of every guest of a node (``pve1/*``) made one per guest that node reports."""
    out = []
    for cover in covers:
        node, _, vmid = cover.subject.rpartition("/")
        if vmid != EVERY_GUEST:
            out.append(cover)
            continue
        out.extend(replace(cover, subject=g.subject, replica=_replica_of(cover, g.vmid))
                   for g in guests if g.node == node)
    return out


def _replica_of(cover: Cover, vmid: int) -> str:
    """The copy an every-guest cover registers for guest ``vmid`` ("" when none)."""
    if not cover.replica:
        return ""
    return guest_subject(cover.destination, vmid + cover.replica_offset)


def guest_subject(node: str, vmid: object) -> str:
    return f"{node}/{vmid}"


def dataset_subject(node: str, dataset: str) -> str:
    return f"{node}:{dataset}"


def job_kind(flow_name: str) -> Kind | None:
    """What a job's flow does for protection: ``backup`` flows back up, ``replica`` and
    ``recovery`` flows replicate; any other flow (snapshots, migration) protects nothing."""
    if "backup" in flow_name:
        return "backup"
    if "replica" in flow_name or "recovery" in flow_name:
        return "replica"
    return None


def covers_of_job(job: str, flow_name: str, parameters: Mapping[str, Any],
                  interval: timedelta | None, *, created: datetime | None = None,
                  paused: bool = False) -> list[Cover]:
    """What a job deployment covers, read from its ``job`` parameter: ``source`` (or
    ``node``) with ``guest`` (a VMID), ``guests`` (VMIDs) or ``dataset``; ``destination``
    (or ``pbs``) names where copies go; ``dest_vmid`` the replica's VMID. A fleet job
    (``routes``: source -> destination, ``vmids`` or every guest of each source) covers each
    of its guests (with a pool or tag filter: every guest of the source, a known excess), and
    registers each one's copy at its VMID + ``vmid_offset``."""
    kind = job_kind(flow_name)
    spec = parameters.get("job") if isinstance(parameters.get("job"), Mapping) else parameters
    if kind is not None and isinstance(spec.get("routes"), Mapping):  # a fleet job
        return [cover for source, dest in spec["routes"].items()
                for cover in covers_of_job(job, flow_name, {
                    "source": source, "destination": dest, "guests": spec.get("vmids") or [],
                    "register_vm": spec.get("register_vm", True),
                    "vmid_offset": spec.get("vmid_offset") or 0}, interval, created=created,
                    paused=paused)]
    node = spec.get("source") or spec.get("node")
    if kind is None or not isinstance(node, str):
        return []
    destination = str(spec.get("destination") or spec.get("pbs") or "")
    if "dataset" in spec and "guest" not in spec:
        subjects = [(dataset_subject(node, spec["dataset"]), None)]
    else:
        vmids = spec.get("guests") or ([spec["guest"]] if "guest" in spec else [])
        subjects = [(guest_subject(node, v), v) for v in vmids]
        if not vmids and "guests" in spec:  # every guest of the node, whichever exist
            subjects = [(guest_subject(node, EVERY_GUEST), None)]
    offset = int(spec.get("vmid_offset") or 0)  # a fleet's: each copy at VMID + offset
    registers = kind == "replica" and bool(destination) and spec.get("register_vm", True)
    covers = []
    for subject, vmid in subjects:
        replica = ""
        if registers and subject.endswith("/" + EVERY_GUEST):
            replica = guest_subject(destination, EVERY_GUEST)
        elif registers and vmid is not None:
            replica = guest_subject(destination, spec.get("dest_vmid") or int(vmid) + offset)
        covers.append(Cover(job=job, kind=kind, subject=subject, destination=destination,
                            interval=interval, created=created, paused=paused,
                            replica=replica, replica_offset=offset))
    return covers


def _newest(records: Iterable[Record]) -> Record | None:
    return max(records, key=lambda r: r.at, default=None)


def _satisfies(record: Record, cover: Cover) -> bool:
    """A record counts for a job when that job made it, or when it copied the same subject
    the same way to the same place (a run of the same work outside the job)."""
    if record.subject != cover.subject or record.counts_as != cover.kind:
        return False
    return record.job == cover.job or (bool(cover.destination)
                                        and record.destination == cover.destination)


def cover_state(cover: Cover, records: list[Record], now: datetime) -> tuple[State, str]:
    """(state, reason) of one job for one subject."""
    newest = _newest(r for r in records if _satisfies(r, cover))
    if cover.interval is None:
        if newest is None:
            return "pending", f"{cover.job} has no schedule and has not run yet"
        return "ok", ""
    allowed = cover.interval * LATE_FACTOR
    if newest is None:
        if cover.created is not None and now - cover.created <= allowed:
            return "pending", f"{cover.job} has not run yet"
        return "late", f"{cover.job}: no successful {cover.kind} yet"
    age = now - newest.at
    if age > allowed:
        return "late", (f"{cover.job}: last {cover.kind} {_age(age)} ago, schedule allows "
                        f"{_age(allowed)}" + (" (schedule paused)" if cover.paused else ""))
    return "ok", ""


def _age(delta: timedelta) -> str:
    from dapx.core.notify import format_duration

    return format_duration(max(delta.total_seconds(), 0.0))


def protection_rows(guests: list[Guest], covers: list[Cover], records: list[Record],
                    now: datetime) -> list[Protection]:
    """One row per guest and per covered subject, problems first, then by subject.

    Guests that are a job's registered replica are left out (they are copies)."""
    covers = expand_covers(guests, covers)
    failovers = [r for r in records if r.kind == "failover"]
    failbacks = [r for r in records if r.kind == "failback"]
    records = [r for r in records if r.kind not in EVENT_KINDS]
    present = {g.subject for g in guests}
    notes = failback_notes(failbacks, present, now) | failover_notes(failovers, records,
                                                                     present, now)
    copies = {c.replica for c in covers if c.replica} - set(notes)
    names = {g.subject: g.name for g in guests}
    by_cover = _group(covers)
    by_record = _group(records)
    subjects = [g.subject for g in guests if g.subject not in copies]
    rows = [_row(s, names.get(s, ""), by_cover.get(s, []), by_record.get(s, []), now)
            for s in dict.fromkeys(subjects + [c.subject for c in covers])]
    rows = [replace(r, reasons=(notes[r.subject], *r.reasons)) if r.subject in notes else r
            for r in rows]
    return sorted(rows, key=lambda r: (_SEVERITY[r.state], r.subject))


def failover_notes(failovers: list[Record], records: list[Record], guests: set[str],
                   now: datetime) -> dict[str, str]:
    """For each failover whose started copy is still among ``guests`` and no replica of the
    same guest to the same node came after: a line for the started copy (``pve3/9100``: "live
    copy of pve1/100 since its failover 5 min ago") and one for the guest it came from."""
    notes: dict[str, str] = {}
    first: dict[tuple[str, str, str], datetime] = {}  # a repeated run records its failover again
    for failover in sorted(failovers, key=lambda r: r.at):
        since = first.setdefault((failover.subject, failover.destination, failover.ref),
                                 failover.at)
        node = failover.destination.split("/", 1)[0]
        if failover.destination not in guests:
            continue  # the started copy was removed
        if any(r.subject == failover.subject and r.counts_as == "replica" and
               r.destination == node and r.at > since for r in records):
            continue  # a job copies it again: the started copy was given up (or failed back)
        ago = _age(now - since)
        notes[failover.destination] = (f"live copy of {failover.subject} since its failover "
                                       f"{ago} ago")
        notes[failover.subject] = f"failed over to {failover.destination} {ago} ago"
    return notes


def failback_notes(failbacks: list[Record], guests: set[str], now: datetime) -> dict[str, str]:
    """For each failback whose original, set aside, is still among ``guests``: a line for it
    (``pve1/102``: "original of pve1/100 set aside by its failback 5 min ago; ...")."""
    notes: dict[str, str] = {}
    for failback in sorted(failbacks, key=lambda r: r.at, reverse=True):  # the first stays
        if failback.ref in guests:
            notes[failback.ref] = (f"original of {failback.subject} set aside by its failback "
                                   f"{_age(now - failback.at)} ago; remove it once it is not "
                                   "needed")
    return notes


def _group(items: Iterable[Any]) -> dict[str, list[Any]]:
    grouped: dict[str, list[Any]] = {}
    for item in items:
        grouped.setdefault(item.subject, []).append(item)
    return grouped


def _row(subject: str, name: str, covers: list[Cover], records: list[Record],
         now: datetime) -> Protection:
    replica = _newest(r for r in records if r.counts_as == "replica")
    backup = _newest(r for r in records if r.counts_as == "backup")
    if not covers:
        state: State = "unprotected"
        reasons = ("no job replicates or backs it up",)
    else:
        judged = [cover_state(c, records, now) for c in covers]
        state = min((s for s, _ in judged), key=_SEVERITY.__getitem__)
        reasons = tuple(r for s, r in judged if s == state and r)
    return Protection(subject=subject, name=name, state=state,
                      replica_at=replica.at if replica else None,
                      replica_to=replica.destination if replica else "",
                      backup_at=backup.at if backup else None,
                      backup_to=backup.destination if backup else "",
                      jobs=tuple(dict.fromkeys(c.job for c in covers)), reasons=reasons)


def age_text(at: datetime | None, now: datetime) -> str:
    """``5 min 3 s`` ago, or ``never``."""
    return "never" if at is None else _age(now - at)


def table_rows(rows: list[Protection], now: datetime) -> list[dict[str, str]]:
    """Rows for `dapx status` and the table artifact."""
    return [{"guest": r.subject, "name": r.name, "state": r.state,
             "replica age": age_text(r.replica_at, now) + (f" ({r.replica_to})"
                                                          if r.replica_to else ""),
             "backup age": age_text(r.backup_at, now) + (f" ({r.backup_to})"
                                                        if r.backup_to else ""),
             "jobs": ", ".join(r.jobs) or "-", "why": "; ".join(r.reasons) or "-"}
            for r in rows]
