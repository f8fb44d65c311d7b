"""Retention selects only dapx's own snapshots and never the newest common one."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dapx.core.retention import select_for_deletion
from dapx.core.snapnames import (OWN_PREFIXES, SNAPSHOT_PREFIX, is_own, job_prefix,
                                 new_snapshot_name)
from dapx.core.snapshots import Snapshot
from dapx.errors import InputError


def snap(name: str, txg: int) -> Snapshot:
    return Snapshot(name=name, guid=txg * 7 + 1, createtxg=txg, creation=txg)


def names(found: list[Snapshot]) -> list[str]:
    return [s.name for s in found]


def test_keeps_newest_owned_and_ignores_foreign() -> None:
    history = [snap("autosnap_1", 1), snap("dapx_j_1", 2), snap("manual", 3),
               snap("dapx_j_2", 4), snap("syncoid_h_1", 5), snap("dapx_j_3", 6),
               snap("dapx_j_4", 7)]
    assert names(select_for_deletion(history, keep=2, prefixes=("dapx_j_",))) == \
        ["dapx_j_1", "dapx_j_2"]


def test_protected_common_snapshot_survives_keep_zero() -> None:
    history = [snap("dapx_j_1", 1), snap("dapx_j_2", 2)]
    assert names(select_for_deletion(history, keep=0, prefixes=("dapx_j_",),
                                     protect={"dapx_j_1"})) == ["dapx_j_2"]


def test_other_jobs_snapshots_are_left_alone() -> None:
    history = [snap("dapx_a_1", 1), snap("dapx_b_1", 2), snap("dapx_a_2", 3)]
    assert names(select_for_deletion(history, keep=1, prefixes=(job_prefix("a"),))) == \
        ["dapx_a_1"]


def test_order_is_by_createtxg_not_by_name_or_input_order() -> None:
    history = [snap("dapx_j_z", 1), snap("dapx_j_a", 3), snap("dapx_j_m", 2)]
    assert names(select_for_deletion(history, keep=1, prefixes=("dapx_j_",))) == \
        ["dapx_j_z", "dapx_j_m"]


def test_refuses_foreign_prefixes_and_negative_keep() -> None:
    with pytest.raises(InputError, match="only prunes its own"):
        select_for_deletion([], keep=1, prefixes=("autosnap_",))
    with pytest.raises(InputError, match="only prunes its own"):
        select_for_deletion([], keep=1, prefixes=("",))
    with pytest.raises(InputError, match="negative"):
        select_for_deletion([], keep=-1)


def test_snapshot_names() -> None:
    when = datetime(2025, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
    assert new_snapshot_name("pve3-100", when) == "dapx_pve3-100_20250102T030405Z"
    assert OWN_PREFIXES == (SNAPSHOT_PREFIX,) == ("dapx_",)
    assert is_own("dapx_x_1") and not is_own("autosnap_x")
    for bad in ["a_b", "", "-x", "a b", "x;y"]:
        with pytest.raises(InputError):
            job_prefix(bad)


# Property: whatever the history, keep and protection, retention never selects a foreign
# snapshot, never the protected (newest common) one, and always leaves `keep` owned ones.
_history = st.lists(
    st.tuples(st.sampled_from(["dapx_j_", "dapx_other_", "autosnap_", "syncoid_h_", "pve-",
                               "dapx", "DAPX_j_"]), st.integers(0, 10_000)),
    max_size=40, unique_by=lambda t: t[1])


@given(history=_history, keep=st.integers(0, 10), data=st.data())
def test_property_never_foreign_never_protected(history, keep, data) -> None:  # noqa: ANN001
    snapshots = [snap(f"{prefix}{txg}", txg) for prefix, txg in history]
    common = data.draw(st.sampled_from(snapshots)) if snapshots else None
    protect = {common.name} if common else set()
    chosen = select_for_deletion(snapshots, keep=keep, prefixes=("dapx_j_",), protect=protect)
    chosen_names = set(names(chosen))
    assert all(n.startswith("dapx_j_") for n in chosen_names)
    assert common is None or common.name not in chosen_names
    owned = [s for s in snapshots if s.name.startswith("dapx_j_")]
    assert len(owned) - len(chosen) >= min(keep, len(owned))
    newest_owned = sorted(owned, key=lambda s: s.createtxg)[-keep:] if keep else []
    assert not chosen_names & set(names(newest_owned))
