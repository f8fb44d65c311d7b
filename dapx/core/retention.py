"""Retention: which of a dataset's snapshots to destroy (after zrepl's pruning rules).

Pure: a snapshot list in, the ones to delete out. Only snapshots carrying one of dapx's own
prefixes are candidates; the newest ``keep`` of those stay; protected names (the newest
snapshot both sides share) are never selected, whatever ``keep`` says.
"""

from __future__ import annotations

from collections.abc import Iterable

from dapx.core.snapnames import OWN_PREFIXES, SNAPSHOT_PREFIX
from dapx.core.snapshots import Snapshot, ordered
from dapx.errors import InputError


def select_for_deletion(snapshots: Iterable[Snapshot], *, keep: int,
                        prefixes: tuple[str, ...] = OWN_PREFIXES,
                        protect: set[str] | frozenset[str] = frozenset()) -> list[Snapshot]:
    """The snapshots to destroy, oldest first.

    In: one dataset's snapshots; ``keep`` (>= 0) how many of the owned ones to keep;
    ``prefixes`` the names that count as owned (each must start with ``dapx_``);
    ``protect`` names never to select. Out: owned, unprotected snapshots older than the
    newest ``keep`` owned ones. Raises InputError for a negative keep or a foreign prefix.
    """
    if keep < 0:
        raise InputError(f"versions to keep must not be negative, got {keep}")
    if not prefixes or any(not p.startswith(SNAPSHOT_PREFIX) for p in prefixes):
        raise InputError(f"retention prefixes {prefixes!r} must all start with "
                         f"{SNAPSHOT_PREFIX!r}; dapx only prunes its own snapshots")
    owned = [s for s in ordered(list(snapshots)) if s.name.startswith(prefixes)]
    candidates = owned[:-keep] if keep else owned
    return [s for s in candidates if s.name not in protect]
