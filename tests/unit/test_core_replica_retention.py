"""Retention of a replica job on both sides: only the job's own snapshots, never the newest
common one (property tests over any snapshot lists and any keep)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from dapx.core.replica_retention import plan_retention
from dapx.core.snapshots import Snapshot, newest_common

PREFIX = "dapx_pve3-9100_"


def snap(name: str, txg: int, guid: int | None = None) -> Snapshot:
    return Snapshot(name=name, guid=guid if guid is not None else txg * 7 + 1, createtxg=txg,
                    creation=txg)


def test_tight_policy_keeps_the_newest_common_and_ignores_others() -> None:
    source = [snap("dapx_pve3-9100_1", 1), snap("autosnap_x_hourly", 2),
              snap("dapx_pve3-9100_2", 3), snap("dapx_pve2-100_1", 4),
              snap("dapx_pve3-9100_3", 5)]
    target = [snap("dapx_pve3-9100_1", 1), snap("dapx_pve3-9100_2", 3)]
    plan = plan_retention(source, target, keep=1, prefix=PREFIX)
    assert plan.common == "dapx_pve3-9100_2"
    assert plan.source.delete == ["dapx_pve3-9100_1"]
    assert plan.source.kept == ["dapx_pve3-9100_2", "dapx_pve3-9100_3"]
    assert plan.target.delete == ["dapx_pve3-9100_1"]
    assert plan.source.foreign == 2
    reasons = {d.name: d.reason for d in plan.source.decisions}
    assert "both sides share" in reasons["dapx_pve3-9100_2"]
    assert "newest 1" in reasons["dapx_pve3-9100_3"]
    assert "older than" in reasons["dapx_pve3-9100_1"]


def test_common_is_matched_by_guid_not_name() -> None:
    source = [snap("dapx_pve3-9100_a", 1, guid=11), snap("dapx_pve3-9100_b", 2, guid=22)]
    target = [snap("dapx_pve3-9100_b", 2, guid=99), snap("dapx_pve3-9100_a", 1, guid=11)]
    plan = plan_retention(source, target, keep=1, prefix=PREFIX)
    assert plan.common == "dapx_pve3-9100_a"
    assert "dapx_pve3-9100_a" in plan.source.kept and "dapx_pve3-9100_a" in plan.target.kept


_names = st.sampled_from(["dapx_pve3-9100_", "dapx_other_", "autosnap_", "syncoid_h_",
                          "pve", "manual-", "dapx_pve3-9100"])


@st.composite
def histories(draw):  # noqa: ANN201
    """A source list and a target list sharing some GUIDs (received copies)."""
    count = draw(st.integers(0, 25))
    source = [snap(f"{draw(_names)}{i}", i + 1, guid=1000 + i) for i in range(count)]
    shared = draw(st.lists(st.sampled_from(source), unique_by=lambda s: s.name)) if source else []
    extra = draw(st.lists(st.tuples(_names, st.integers(0, 10**6)), max_size=8,
                          unique_by=lambda t: t))  # names are unique within a dataset
    target = [snap(s.name, s.createtxg + 500, guid=s.guid) for s in shared]
    target += [snap(f"{p}t{n}", 100 + i, guid=5_000_000 + n) for i, (p, n) in enumerate(extra)]
    return source, target


@settings(max_examples=300, deadline=None)
@given(history=histories(), keep=st.integers(0, 8))
def test_property_common_survives_and_only_owned_are_candidates(history, keep) -> None:  # noqa: ANN001
    source, target = history
    plan = plan_retention(source, target, keep=keep, prefix=PREFIX)
    common = newest_common(source, target)
    for side, snaps in ((plan.source, source), (plan.target, target)):
        assert set(side.delete) <= {s.name for s in snaps}
        assert all(name.startswith(PREFIX) for name in side.delete)
        owned = [s for s in snaps if s.name.startswith(PREFIX)]
        assert len(side.decisions) == len(owned)
        if common is not None:
            assert not {s.name for s in snaps if s.guid == common.guid} & set(side.delete)
        assert len(side.kept) >= min(keep, len(owned))
    if common is not None:
        left_source = [s for s in source if s.name not in plan.source.delete]
        left_target = [s for s in target if s.name not in plan.target.delete]
        assert newest_common(left_source, left_target).guid == common.guid
