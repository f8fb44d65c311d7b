"""Retention of one replica job on both sides (S4, X3): what to delete, what to keep, why.

Pure: both sides' snapshot lists, the job's ``keep`` and its snapshot prefix in; a plan out.
Rules (each one a property test in tests/unit/test_core_replica_retention.py):
- only the job's own snapshots (``dapx_<tag>_...``) are candidates: sanoid's, syncoid's,
  Proxmox's, an administrator's and other jobs' snapshots are never selected;
- the newest snapshot both sides share (matched by GUID) is never selected, on either side,
  whatever ``keep`` says: the next incremental run starts from it;
- of the rest, the newest ``keep`` owned snapshots on each side stay (``core.retention``).
"""

from __future__ import annotations

from pydantic import BaseModel, Field

from dapx.core.retention import select_for_deletion
from dapx.core.snapshots import Snapshot, newest_common, ordered


class Decision(BaseModel):
    """One owned snapshot on one side and what retention does with it."""

    name: str = Field(description="Short snapshot name.")
    delete: bool = Field(description="True when retention removes it.")
    reason: str = Field(description="Why it goes or stays.")


class SidePlan(BaseModel):
    """Retention on one side of a job (one dataset or subvolume)."""

    decisions: list[Decision] = Field(default_factory=list, description="Owned snapshots, "
                                      "oldest first.")
    foreign: int = Field(default=0, description="Snapshots not made by this job (untouched).")

    @property
    def delete(self) -> list[str]:
        return [d.name for d in self.decisions if d.delete]

    @property
    def kept(self) -> list[str]:
        return [d.name for d in self.decisions if not d.delete]


class RetentionPlan(BaseModel):
    """Both sides of one disk of one job."""

    common: str | None = Field(default=None, description="Newest snapshot both sides share.")
    source: SidePlan = Field(default_factory=SidePlan)
    target: SidePlan = Field(default_factory=SidePlan)


def plan_side(snapshots: list[Snapshot], *, keep: int, prefix: str,
              protect_guid: int | None) -> SidePlan:
    """One side: owned snapshots oldest first, each deleted or kept with its reason.

    Raises InputError (from ``select_for_deletion``) for a negative keep or a prefix that is
    not dapx's own.
    """
    protect = {s.name for s in snapshots if protect_guid is not None and s.guid == protect_guid}
    victims = {s.name for s in select_for_deletion(snapshots, keep=keep, prefixes=(prefix,),
                                                   protect=protect)}
    owned = [s for s in ordered(snapshots) if s.name.startswith(prefix)]
    newest = {s.name for s in owned[-keep:]} if keep else set()
    decisions = []
    for snap in owned:
        if snap.name in victims:
            reason = f"older than the newest {keep} of this job's snapshots"
        elif snap.name in protect:
            reason = "newest snapshot both sides share (base of the next incremental run)"
        elif snap.name in newest:
            reason = f"one of the newest {keep}"
        else:  # pragma: no cover - select_for_deletion returns every other owned one
            reason = "kept"
        decisions.append(Decision(name=snap.name, delete=snap.name in victims, reason=reason))
    return SidePlan(decisions=decisions, foreign=len(snapshots) - len(owned))


def plan_retention(source: list[Snapshot], target: list[Snapshot], *, keep: int,
                   prefix: str) -> RetentionPlan:
    """Retention of one disk of one job on both sides (rules in the module docstring)."""
    common = newest_common(source, target)
    guid = common.guid if common is not None else None
    return RetentionPlan(common=common.name if common else None,
                         source=plan_side(source, keep=keep, prefix=prefix, protect_guid=guid),
                         target=plan_side(target, keep=keep, prefix=prefix, protect_guid=guid))
