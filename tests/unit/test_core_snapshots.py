"""Replication planning with a tiny notation (zrepl-style).

``snaps("a b c")``: snapshots a, b, c in creation order; each name's GUID is derived from the
name, so the same letter on both sides is the same snapshot. ``a'`` is a snapshot *named*
like ``a`` but with different data (another GUID): matching must go by GUID, not by name.
"""

from __future__ import annotations

import zlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dapx.core.snapshots import (Diverged, ForeignTarget, FullSend, Incremental,
                                 NoCommonSnapshot, NothingToSend, Snapshot, UpToDate,
                                 after_receive, describe, ordered, plan_incremental, plan_staged,
                                 size_text)
from dapx.errors import ConflictError, PermanentError


def snaps(spec: str, *, start_txg: int = 10) -> list[Snapshot]:
    """``"a b c"`` -> three snapshots in that creation order (``x'`` = new data named x)."""
    out = []
    for index, token in enumerate(spec.split()):
        name = token.rstrip("'")
        out.append(Snapshot(name=name, guid=zlib.crc32(token.encode()) + 1,
                            createtxg=start_txg + 10 * index, creation=1_700_000_000 + index))
    return out


def test_no_target_dataset_is_a_full_send_of_the_newest() -> None:
    plan = plan_incremental(snaps("a b c"), None)
    assert plan == FullSend(to=snaps("a b c")[-1])


def test_incremental_from_newest_common() -> None:
    source, target = snaps("a b c d"), snaps("a b", start_txg=500)
    plan = plan_incremental(source, target)
    assert isinstance(plan, Incremental)
    assert (plan.base.name, plan.to.name, plan.rollback_to) == ("b", "d", None)


def test_target_txgs_differ_from_source_but_guids_match() -> None:
    # createtxg is per pool: the target's numbers are unrelated to the source's.
    plan = plan_incremental(snaps("a b c"), snaps("a b", start_txg=9_000))
    assert isinstance(plan, Incremental) and plan.base.name == "b"


def test_source_pruned_older_snapshots_still_incremental() -> None:
    plan = plan_incremental(snaps("c d e"), snaps("a b c"))
    assert isinstance(plan, Incremental) and (plan.base.name, plan.to.name) == ("c", "e")


def test_up_to_date() -> None:
    assert plan_incremental(snaps("a b"), snaps("a b")) == UpToDate(common=snaps("a b")[1])


def test_input_order_does_not_matter() -> None:
    source = list(reversed(snaps("a b c")))
    plan = plan_incremental(source, list(reversed(snaps("a b"))))
    assert isinstance(plan, Incremental) and (plan.base.name, plan.to.name) == ("b", "c")


def test_diverged_target_has_newer_snapshots() -> None:
    with pytest.raises(Diverged) as exc:
        plan_incremental(snaps("a b c"), snaps("a b x"), dataset="rpool/data/vm-9100-disk-0")
    message = str(exc.value)
    assert "rpool/data/vm-9100-disk-0" in message and "x" in message
    assert "run with force to roll it back to b" in message
    assert exc.value.common.name == "b" and exc.value.extra == ("x",)
    assert isinstance(exc.value, ConflictError) and isinstance(exc.value, PermanentError)


def test_diverged_by_name_only_is_caught() -> None:
    # The target's "c" has the source's name but other data: common is b, and c' diverged.
    with pytest.raises(Diverged, match=r"\(c\)"):
        plan_incremental(snaps("a b c"), snaps("a b c'"))


def test_written_target_diverged_and_says_how_much() -> None:
    with pytest.raises(Diverged, match=r"written to since its newest snapshot \(1\.5 MiB "
                       r"written\); run with force to roll it back to b \(discards what was "
                       r"written\)"):
        plan_incremental(snaps("a b c"), snaps("a b"), target_written=3 * 512 * 1024)


def test_written_and_up_to_date_is_still_diverged() -> None:
    with pytest.raises(Diverged):
        plan_incremental(snaps("a b"), snaps("a b"), target_written=1)


def test_size_text() -> None:
    assert [size_text(n) for n in (0, 1023, 131072, 3 * 2**30)] == [
        "0 bytes", "1023 bytes", "128.0 KiB", "3.0 GiB"]


def test_force_rolls_diverged_target_back() -> None:
    plan = plan_incremental(snaps("a b c"), snaps("a b x y"), force=True)
    assert isinstance(plan, Incremental)
    assert (plan.base.name, plan.to.name, plan.rollback_to.name) == ("b", "c", "b")
    assert plan.destroys == ("x", "y")
    assert describe(plan) == "roll back to b, then incremental b -> c"


def test_force_on_written_up_to_date_target_is_a_rollback_only() -> None:
    plan = plan_incremental(snaps("a b"), snaps("a b"), target_written=4096, force=True)
    assert isinstance(plan, UpToDate) and plan.rollback_to.name == "b"


def test_no_common_snapshot() -> None:
    with pytest.raises(NoCommonSnapshot, match="force to send everything again .the old copy "
                       "stays until the new one has arrived"):
        plan_incremental(snaps("c d"), snaps("a b"))


def test_same_names_different_guids_share_nothing() -> None:
    with pytest.raises(NoCommonSnapshot):
        plan_incremental(snaps("a b"), snaps("a' b'"))


def test_force_turns_no_common_into_replacing_full_send() -> None:
    plan = plan_incremental(snaps("c d"), snaps("a b"), force=True)
    assert plan == FullSend(to=snaps("c d")[-1], replace_target=True)
    assert describe(plan) == ("full send of d beside the old copy, swapped in when every disk "
                              "arrived")


def test_foreign_target_refused_even_with_force() -> None:
    for force in (False, True):
        with pytest.raises(ForeignTarget, match="not created by dapx"):
            plan_incremental(snaps("a"), snaps("a"), target_owned=False, force=force)


def test_target_of_another_job_refused_naming_it_even_with_force() -> None:
    for target in (snaps("a"), snaps("x y"), []):
        for force in (False, True):
            with pytest.raises(ForeignTarget, match=r"replica of another dapx job \(pve1/100\)"
                               ".*never overwritten, force or not"):
                plan_incremental(snaps("a b"), target, other_owner="pve1/100", force=force)


def test_branching_target_keeps_later_snapshots_without_force() -> None:
    # BTRFS: the source deleted c; b is the newest snapshot both hold, c stays on the target.
    plan = plan_incremental(snaps("a b d"), snaps("a b c"), target_can_branch=True)
    assert isinstance(plan, Incremental) and (plan.base.name, plan.to.name) == ("b", "d")
    assert plan.rollback_to is None and plan.destroys == ()
    with pytest.raises(Diverged, match="written"):  # written data still needs force
        plan_incremental(snaps("a b d"), snaps("a b c"), target_can_branch=True,
                         target_written=4096)


def test_staged_copy_is_full_or_resumes_from_what_it_holds() -> None:
    source = snaps("c d e")
    assert plan_staged(source, None) == FullSend(to=source[-1])
    assert plan_staged(source, []) == FullSend(to=source[-1], replace_target=True)
    resumed = plan_staged(source, snaps("c d", start_txg=700))
    assert isinstance(resumed, Incremental) and (resumed.base.name, resumed.to.name) == ("d", "e")
    assert plan_staged(source, snaps("x")).replace_target  # nothing shared: sent again


def test_owned_empty_target_is_replaced() -> None:
    assert plan_incremental(snaps("a"), []) == FullSend(to=snaps("a")[0], replace_target=True)


def test_empty_source() -> None:
    with pytest.raises(NothingToSend, match="take one first"):
        plan_incremental([], None)


def test_describe() -> None:
    assert describe(plan_incremental(snaps("a b"), snaps("a"))) == "incremental a -> b"
    assert describe(plan_incremental(snaps("a"), snaps("a"))) == "up to date at a"


# Property: for any two histories, a plan without force never sends from a snapshot the target
# lacks, never loses target snapshots, and an incremental's base is shared by GUID.
_letters = st.lists(st.sampled_from("abcdefgh"), unique=True, max_size=6)


@given(source=_letters, target=_letters, written=st.sampled_from([0, 1, 4096]))
def test_property_plan_is_safe_without_force(source, target, written) -> None:  # noqa: ANN001
    src = [s for s in snaps("a b c d e f g h") if s.name in source]
    dst = [s for s in snaps("a b c d e f g h", start_txg=900) if s.name in target]
    try:
        plan = plan_incremental(src, dst, target_written=written)
    except (Diverged, NoCommonSnapshot, NothingToSend):
        return
    assert not written
    if isinstance(plan, FullSend):
        assert plan.replace_target and dst == []
    else:
        base = plan.base if isinstance(plan, Incremental) else plan.common
        assert base.guid in {s.guid for s in src} and base.name == max(
            dst, key=lambda s: s.createtxg).name
        assert plan.rollback_to is None


def test_owned_empty_but_written_target_needs_force() -> None:
    with pytest.raises(NoCommonSnapshot, match=r"written data \(2\.0 MiB\)"):
        plan_incremental(snaps("a"), [], target_written=2 * 2**20)
    assert plan_incremental(snaps("a"), [], target_written=2 * 2**20, force=True).replace_target


def names(snapshots: list[Snapshot]) -> list[str]:
    return [s.name for s in ordered(snapshots)]


def test_after_receive_is_the_target_then_what_send_dash_i_carries() -> None:
    source, target = snaps("a b c d e"), snaps("a b", start_txg=500)
    plan = plan_incremental(source, target)
    after = after_receive(source, target, plan)
    assert names(after) == ["a", "b", "c", "d", "e"]
    assert [s.guid for s in ordered(after)] == [s.guid for s in source]
    assert min(s.createtxg for s in after[2:]) > 510  # numbered after the target's own


def test_after_receive_of_a_forced_plan_drops_what_the_rollback_removes() -> None:
    source, target = snaps("a b c"), snaps("a b x", start_txg=500)
    plan = plan_incremental(source, target, force=True)
    assert names(after_receive(source, target, plan)) == ["a", "b", "c"]


def test_after_receive_keeps_the_targets_older_snapshots_the_source_pruned() -> None:
    source, target = snaps("c d e", start_txg=30), snaps("a b c")
    plan = plan_incremental(source, target)
    assert names(after_receive(source, target, plan)) == ["a", "b", "c", "d", "e"]
