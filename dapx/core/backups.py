"""PBS backups as PVE names them, and what a vzdump task's end tells.

A backup on a PVE storage of type ``pbs`` is the volume ``pbs:backup/vm/100/2026-11-26T02:00:00Z``
(storage id, ``backup/``, PBS's snapshot path: backup type ``vm``/``ct``, backup id = VMID, RFC
3339 UTC time). ``BackupRef`` holds one; ``parse_backup`` reads the forms a user may type.

A vzdump task ends with exit status ``OK``, ``WARNINGS: N`` (done, with N ``WARN:`` lines in
its log) or an error (``job errors``: the reason is on the log's ``ERROR:`` lines);
``task_outcome`` turns that into a typed outcome with PVE's own words.
"""

from __future__ import annotations

import re
from datetime import datetime, timezone
from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field

from dapx.core.validate import validate_storage_id, validate_vmid
from dapx.errors import InputError, PermanentError

BackupType = Literal["vm", "ct"]
GuestKind = Literal["qemu", "lxc"]
LATEST = "latest"
TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
KIND_OF_TYPE: dict[str, GuestKind] = {"vm": "qemu", "ct": "lxc"}
TYPE_OF_KIND: dict[str, BackupType] = {"qemu": "vm", "lxc": "ct"}

_TIME = r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z"
_PATH = re.compile(rf"(?P<type>vm|ct)/(?P<id>[0-9]+)/(?P<time>{_TIME}|{LATEST})")
_VOLID = re.compile(rf"(?P<storage>[A-Za-z][A-Za-z0-9_.-]*[A-Za-z0-9]):backup/{_PATH.pattern}")
_ARCHIVE_LINE = re.compile(rf".*creating Proxmox Backup Server archive '(?P<path>(?:vm|ct)/"
                           rf"[0-9]+/{_TIME})'.*")
_WARNINGS = re.compile(r"WARNINGS: ([0-9]+)")
CLOCK_SLACK = 120
"""Seconds a backup's PBS time may precede the run's own clock (node clocks drift)."""


def pbs_time(epoch: int) -> str:
    """``1764115200`` -> ``2025-11-26T00:00:00Z`` (PBS's snapshot time, UTC)."""
    return datetime.fromtimestamp(int(epoch), timezone.utc).strftime(TIME_FORMAT)


def parse_pbs_time(text: str) -> int:
    """``2025-11-26T00:00:00Z`` -> epoch seconds. Raises InputError."""
    try:
        return int(datetime.strptime(text, TIME_FORMAT).replace(tzinfo=timezone.utc).timestamp())
    except ValueError:
        raise InputError(f"backup time {text!r} is not a PBS time like 2025-11-26T00:00:00Z") \
            from None


class BackupRef(BaseModel):
    """One backup (or, with ``time`` None, the newest backup of a guest) on a PBS storage."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    storage: str = Field(description="PVE storage id of type pbs.", examples=["pbs"])
    backup_type: BackupType = Field(description="vm or ct.", examples=["vm"])
    backup_id: int = Field(description="The backed-up guest's VMID.", examples=[100])
    time: Optional[int] = Field(default=None, description="Backup time (epoch seconds, UTC); "
                                "None: the newest backup of the guest.", examples=[1764115200])

    @property
    def kind(self) -> GuestKind:
        """The guest kind a restore creates: qemu for vm, lxc for ct."""
        return KIND_OF_TYPE[self.backup_type]

    @property
    def path(self) -> str:
        """PBS's snapshot path ``vm/100/2025-11-26T00:00:00Z`` (``.../latest`` when unpinned)."""
        when = LATEST if self.time is None else pbs_time(self.time)
        return f"{self.backup_type}/{self.backup_id}/{when}"

    @property
    def volid(self) -> str:
        """PVE's volume id ``pbs:backup/vm/100/...``; only for a pinned backup."""
        if self.time is None:
            raise InputError(f"{self.path} names no single backup")
        return f"{self.storage}:backup/{self.path}"


def parse_backup(text: str, storage: str) -> BackupRef:
    """A backup as a user names it: ``vm/100/2025-11-26T00:00:00Z``, ``vm/100/latest`` or the
    volume id ``pbs:backup/vm/100/...`` (whose storage must be ``storage``). Raises InputError."""
    validate_storage_id(storage)
    text = str(text).strip()
    volid = _VOLID.fullmatch(text)
    match = volid or _PATH.fullmatch(text)
    if not match:
        raise InputError(f"backup {text!r} must look like vm/100/2025-11-26T00:00:00Z, "
                         "ct/101/latest or pbs:backup/vm/100/2025-11-26T00:00:00Z")
    if volid and volid["storage"] != storage:
        raise InputError(f"backup {text!r} is on storage {volid['storage']!r}, not {storage!r}")
    when = None if match["time"] == LATEST else parse_pbs_time(match["time"])
    return BackupRef(storage=storage, backup_type=match["type"],  # type: ignore[arg-type]
                     backup_id=validate_vmid(int(match["id"])), time=when)


def archive_from_log(lines: list[str]) -> str | None:
    """The PBS snapshot path vzdump logged (``creating Proxmox Backup Server archive
    'vm/100/2025-11-26T00:00:00Z'``), or None."""
    for line in lines:
        match = _ARCHIVE_LINE.fullmatch(line)
        if match:
            return match["path"]
    return None


class TaskOutcome(BaseModel):
    """How a PVE task ended, in PVE's words."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    ok: bool = Field(description="The task did its work (OK, or OK with warnings).")
    warnings: list[str] = Field(default_factory=list, description="Its WARN: lines.")
    error: str = Field(default="", description="Why it failed: its ERROR: lines and exit "
                       "status, or its last lines.")


def task_outcome(exitstatus: str, log: list[str]) -> TaskOutcome:
    """Classify a stopped task. In: its exit status and log lines. Out: a TaskOutcome.

    ``OK`` -> ok; ``WARNINGS: N`` -> ok with the ``WARN:`` lines (or N placeholders when the
    log shows none); anything else -> failed, with the ``ERROR:`` lines (else the last few
    lines before ``TASK ERROR``) and the exit status.
    """
    status = (exitstatus or "").strip()
    if status == "OK":
        return TaskOutcome(ok=True)
    warned = _WARNINGS.fullmatch(status)
    if warned:
        lines = [ln.split("WARN:", 1)[1].strip() for ln in log if "WARN:" in ln]
        return TaskOutcome(ok=True, warnings=lines or [status])
    body = [ln.strip() for ln in log if ln.strip() and not ln.startswith("TASK ")]
    errors = [ln.split("ERROR:", 1)[1].strip() for ln in body if "ERROR:" in ln]
    detail = "; ".join(errors) if errors else "; ".join(body[-3:])
    status = status or "no exit status"
    return TaskOutcome(ok=False, error=f"{status}: {detail}" if detail else status)


class BackupEntry(BaseModel):
    """One backup as a PBS storage lists it on PVE (a row of ``dapx backup list``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    volid: str = Field(description="Volume id to restore from.",
                       examples=["pbs:backup/vm/100/2025-11-26T00:00:00Z"])
    guest: int = Field(description="VMID of the backed-up guest.", examples=[100])
    kind: GuestKind = Field(description="qemu or lxc.", examples=["qemu"])
    time: int = Field(description="Backup time, epoch seconds.", examples=[1764115200])
    size: int = Field(description="Bytes the backup holds.", examples=[33554432])
    verified: str = Field(description="Verification state: ok, failed or none.",
                          examples=["ok"])
    protected: bool = Field(description="Protected from pruning and deletion.")
    notes: str = Field(default="", description="The backup's notes (first line).")

    @property
    def when(self) -> str:
        """The backup time as PBS writes it."""
        return pbs_time(self.time)


def backup_entry(item: dict[str, Any]) -> BackupEntry | None:
    """A storage content item (``GET .../storage/{s}/content``) as a BackupEntry, or None when
    it is not a guest backup."""
    volid = str(item.get("volid", ""))
    match = _VOLID.fullmatch(volid)
    if not match or match["time"] == LATEST:
        return None
    verification = item.get("verification") or {}
    return BackupEntry(volid=volid, guest=int(match["id"]), kind=KIND_OF_TYPE[match["type"]],
                       time=int(item.get("ctime") or parse_pbs_time(match["time"])),
                       size=int(item.get("size") or 0),
                       verified=str(verification.get("state") or "none"),
                       protected=bool(int(item.get("protected") or 0)),
                       notes=str(item.get("notes") or "").split("\n")[0])


def newest_first(entries: list[BackupEntry]) -> list[BackupEntry]:
    """Backups grouped by guest (ascending VMID), each guest's newest first."""
    return sorted(entries, key=lambda e: (e.guest, -e.time))


def find_backup(entries: list[BackupEntry], ref: BackupRef) -> BackupEntry:
    """The listed backup ``ref`` names (the newest of its guest when ``ref.time`` is None).

    Raises InputError naming the guest's newest backup when there is no such backup.
    """
    kind = ref.kind
    mine = newest_first([e for e in entries if e.guest == ref.backup_id and e.kind == kind])
    if ref.time is None and mine:
        return mine[0]
    found = next((e for e in mine if e.time == ref.time), None)
    if found is not None:
        return found
    hint = f"newest: {mine[0].volid}" if mine else f"{ref.storage} holds no backup of it"
    raise InputError(f"backup {ref.path} does not exist on storage {ref.storage} ({hint})")


def find_new_backup(group: list[dict[str, Any]], archive: str, since: float) -> dict[str, Any]:
    """The PBS snapshot vzdump just made in ``group`` (PBS's snapshot list of one guest): the
    one it logged (``archive``), else the newest since ``since`` (epoch seconds). Raises
    PermanentError when PBS shows none: an OK task that made no backup is no backup."""
    if archive:
        when = parse_pbs_time(archive.rsplit("/", 1)[1])
        found = next((s for s in group if int(s["backup-time"]) == when), None)
    else:
        fresh = [s for s in group if int(s["backup-time"]) >= since - CLOCK_SLACK]
        found = max(fresh, key=lambda s: int(s["backup-time"])) if fresh else None
    if found is None:
        raise PermanentError(f"vzdump reported success but PBS shows no new backup "
                             f"{archive or '(none logged)'}")
    return found
