"""Replication planning from both sides' snapshot lists (after zrepl's replication/logic/diff).

In: the source's and the target's snapshots (GUID, createtxg, creation, name). Out: a plan
(``FullSend``, ``Incremental`` or ``UpToDate``) or a typed ``ConflictError`` whose message says
what to do. Snapshots are matched by GUID (BTRFS: the received/own UUID as an int) and ordered
by createtxg (BTRFS: cgen), never by name, because a name can be reused for different data.
"""

from __future__ import annotations

from typing import Literal, Union

from pydantic import BaseModel, ConfigDict, Field

from dapx.errors import ConflictError


class Snapshot(BaseModel):
    """One snapshot of one dataset (or one read-only BTRFS snapshot)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(description="Short name, the part after '@'",
                      examples=["dapx_pve3-100_20250101T000000Z"])
    guid: int = Field(description="ZFS guid (same on every copy of this snapshot); for BTRFS "
                      "the received_uuid, else the uuid, as an int", examples=[1234567890123])
    createtxg: int = Field(description="Transaction group that created it (BTRFS: cgen); "
                           "orders snapshots of one dataset", examples=[4711])
    creation: int = Field(default=0, description="Creation time, Unix seconds",
                          examples=[1735689600])


def ordered(snapshots: list[Snapshot]) -> list[Snapshot]:
    """Snapshots oldest first, by createtxg (ties broken by creation, then name)."""
    return sorted(snapshots, key=lambda s: (s.createtxg, s.creation, s.name))


def newest_common(source: list[Snapshot], target: list[Snapshot]) -> Snapshot | None:
    """The newest target snapshot whose GUID the source also has, as the target holds it."""
    source_guids = {s.guid for s in source}
    shared = [t for t in ordered(target) if t.guid in source_guids]
    return shared[-1] if shared else None


class FullSend(BaseModel):
    """Send ``to`` in full; ``replace_target`` means the existing target is overwritten."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    kind: Literal["full"] = "full"
    to: Snapshot
    replace_target: bool = False


class Incremental(BaseModel):
    """Send from ``base`` (held by both) to ``to``; roll the target back first when set."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    kind: Literal["incremental"] = "incremental"
    base: Snapshot
    to: Snapshot
    rollback_to: Snapshot | None = None
    destroys: tuple[str, ...] = ()  # target snapshots a rollback removes, for the dry run


class UpToDate(BaseModel):
    """Nothing to send: the source's newest snapshot is already on the target."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    kind: Literal["up-to-date"] = "up-to-date"
    common: Snapshot
    rollback_to: Snapshot | None = None
    destroys: tuple[str, ...] = ()


Plan = Union[FullSend, Incremental, UpToDate]


class NothingToSend(ConflictError):
    """The source has no snapshot at all; the flow must take one before planning."""


class Diverged(ConflictError):
    """The target changed after the last common snapshot (new snapshots or written data)."""

    def __init__(self, message: str, *, common: Snapshot, extra: tuple[str, ...]) -> None:
        super().__init__(message)
        self.common = common
        self.extra = extra


class NoCommonSnapshot(ConflictError):
    """The target has snapshots but shares none with the source."""


class ForeignTarget(ConflictError):
    """The target dataset exists and was not created by dapx."""


def size_text(count: int) -> str:
    """``1.5 MiB`` for a byte count (messages only)."""
    value, unit = float(count), "bytes"
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            break
        value /= 1024
    return f"{int(value)} bytes" if unit == "bytes" else f"{value:.1f} {unit}"


def _diverged(dataset: str, common: Snapshot, extra: list[Snapshot], written: int) -> Diverged:
    names = tuple(s.name for s in extra)
    what = []
    if names:
        what.append(f"has snapshots the source lacks after {common.name} ({', '.join(names)})")
    if written:
        what.append(f"was written to since its newest snapshot ({size_text(written)} written)")
    consequence = [f"destroys {', '.join(names)}"] if names else []
    consequence += ["discards what was written"] if written else []
    message = (f"{dataset} diverged: it {' and '.join(what)}; run with force to roll it back "
               f"to {common.name} ({' and '.join(consequence)})")
    return Diverged(message, common=common, extra=names)


def plan_incremental(source: list[Snapshot], target: list[Snapshot] | None, *,
                     target_written: int = 0, target_owned: bool = True,
                     other_owner: str | None = None, target_can_branch: bool = False,
                     force: bool = False, dataset: str = "the destination") -> Plan:
    """The next transfer from ``source`` to ``target``.

    In: both sides' snapshots (``target`` None when the target dataset does not exist);
    ``target_written`` bytes written into the target's head since its newest snapshot (0:
    none; with no snapshot at all: the data it holds); ``target_owned`` when the target is
    dapx's; ``other_owner`` the owner mark of ANOTHER dapx job when the target carries one;
    ``target_can_branch`` when a receive from an older common snapshot keeps the target's
    later snapshots (BTRFS: each received snapshot is its own subvolume), so they are no
    conflict; ``force`` to allow destructive recovery; ``dataset`` names the target in
    messages. Out: FullSend, Incremental or UpToDate. Raises NothingToSend, ForeignTarget
    (never overridden by ``force``), NoCommonSnapshot or Diverged (the last two only without
    ``force``).
    """
    if not source:
        raise NothingToSend(f"the source for {dataset} has no snapshot; take one first")
    newest = ordered(source)[-1]
    if target is None:
        return FullSend(to=newest)
    if other_owner is not None:
        raise ForeignTarget(f"{dataset} is the replica of another dapx job ({other_owner}); "
                            "it is never overwritten, force or not: choose another "
                            "destination VMID, pool or sub-folder")
    if not target_owned:
        raise ForeignTarget(f"{dataset} exists but was not created by dapx; choose another "
                            "destination pool or sub-folder, or remove it by hand")
    if not target:
        # Ours without snapshots (a full send died before its snapshot landed): replace it,
        # unless someone wrote data into it since.
        if target_written and not force:
            raise NoCommonSnapshot(f"{dataset} has no snapshot but holds written data "
                                   f"({size_text(target_written)}); run with force to "
                                   "replace it")
        return FullSend(to=newest, replace_target=True)
    common = newest_common(source, target)
    if common is None:
        if force:
            return FullSend(to=newest, replace_target=True)
        raise NoCommonSnapshot(f"{dataset} has snapshots but none shared with the source; run "
                               "with force to send everything again (the old copy stays until "
                               "the new one has arrived)")
    extra = [] if target_can_branch else [t for t in ordered(target)
                                          if t.createtxg > common.createtxg]
    if extra or target_written:
        if not force:
            raise _diverged(dataset, common, extra, target_written)
        return _forced(newest, common, extra)
    if newest.guid == common.guid:
        return UpToDate(common=common)
    return Incremental(base=common, to=newest)


def plan_staged(source: list[Snapshot], staged: list[Snapshot] | None) -> FullSend | Incremental:
    """The transfer into dapx's own copy BESIDE a target that a forced full send replaces.

    ``staged`` is what a cut earlier attempt left there (None: nothing): when it holds a
    source snapshot the transfer goes on incrementally from it (rolling back anything later:
    the copy is dapx's scratch space), else it is a full send (replacing that copy).
    """
    plan = plan_incremental(source, staged, force=True)
    if isinstance(plan, UpToDate):  # callers always plan a snapshot newer than any held
        raise ValueError("a staged copy cannot already hold the snapshot being sent")
    return plan


def _forced(newest: Snapshot, common: Snapshot, extra: list[Snapshot]) -> Plan:
    """The recovery plan for a diverged target: roll back to ``common``, then send on."""
    destroys = tuple(s.name for s in extra)
    if newest.guid == common.guid:
        return UpToDate(common=common, rollback_to=common, destroys=destroys)
    return Incremental(base=common, to=newest, rollback_to=common, destroys=destroys)


def describe(plan: Plan) -> str:
    """One line for logs and the dry-run artifact."""
    if isinstance(plan, FullSend):
        return f"full send of {plan.to.name}" + (
            " beside the old copy, swapped in when every disk arrived" if plan.replace_target
            else "")
    prefix = f"roll back to {plan.rollback_to.name}, then " if plan.rollback_to else ""
    if isinstance(plan, UpToDate):
        return prefix + f"up to date at {plan.common.name}"
    return prefix + f"incremental {plan.base.name} -> {plan.to.name}"


def after_receive(source: list[Snapshot], target: list[Snapshot],
                  plan: Incremental) -> list[Snapshot]:
    """The target's snapshots once ``plan`` was received as ``zfs send -I`` (what syncoid and
    the direct pipe send): the target's up to the base (a rollback removes later ones), then
    each source snapshot after the base up to ``plan.to``, numbered after the target's.

    In: both sides' snapshots as read before the transfer, ``source`` with ``plan.to`` (the
    snapshot this run took). Raises ValueError when the source lacks the base."""
    kept = [t for t in ordered(target) if t.createtxg <= plan.base.createtxg]
    src = ordered(source)
    base = next((s for s in src if s.guid == plan.base.guid), None)
    if base is None:
        raise ValueError(f"the source does not hold the base {plan.base.name}")
    carried = [s for s in src if base.createtxg < s.createtxg <= plan.to.createtxg]
    top = kept[-1].createtxg if kept else 0
    return kept + [s.model_copy(update={"createtxg": top + i}) for i, s in
                   enumerate(carried, 1)]
