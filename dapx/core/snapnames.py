"""The names of the snapshots dapx makes, and how to recognise them.

Decision: dapx takes its replication snapshots itself (syncoid runs with ``--no-sync-snap``)
and names them ``dapx_<job>_<UTC stamp>``, e.g. ``dapx_pve3-100_20250101T120000Z``. The job
tag keeps two jobs replicating one guest to two places from pruning each other's common
snapshot. Retention only ever considers names starting with ``SNAPSHOT_PREFIX``; sanoid's
``autosnap_``, syncoid's ``syncoid_`` and PVE's own snapshots are foreign and never pruned.
"""

from __future__ import annotations

import re
from datetime import datetime, timezone

from dapx.errors import InputError

SNAPSHOT_PREFIX = "dapx_"
OWN_PREFIXES: tuple[str, ...] = (SNAPSHOT_PREFIX,)
OWNER_PROPERTY = "dapx:owner"  # ZFS user property marking datasets dapx created
STAMP_FORMAT = "%Y%m%dT%H%M%SZ"
_JOB_TAG = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9.-]{0,62})")


def validate_job_tag(tag: str) -> str:
    """A job tag for snapshot names: 1..63 of ``[A-Za-z0-9.-]``, starting alphanumeric.

    No '_' so the tag cannot run into the stamp. Raises InputError.
    """
    if not isinstance(tag, str) or not _JOB_TAG.fullmatch(tag):
        raise InputError(f"job tag {tag!r} is invalid; use letters, digits, '.' and '-' "
                         "(at most 63), e.g. pve3-100")
    return tag


def job_prefix(tag: str) -> str:
    """``dapx_<tag>_``: the prefix retention uses for one job's snapshots."""
    return f"{SNAPSHOT_PREFIX}{validate_job_tag(tag)}_"


def new_snapshot_name(tag: str, when: datetime) -> str:
    """``dapx_<tag>_<YYYYmmddTHHMMSSZ>`` for ``when`` (naive datetimes are taken as UTC)."""
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return job_prefix(tag) + when.astimezone(timezone.utc).strftime(STAMP_FORMAT)


def is_own(name: str, prefixes: tuple[str, ...] = OWN_PREFIXES) -> bool:
    """True when a snapshot's short name starts with one of dapx's prefixes."""
    return any(name.startswith(p) for p in prefixes)
