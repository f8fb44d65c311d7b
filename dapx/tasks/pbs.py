"""Proxmox Backup Server API tasks: datastores, a guest's backups, prune.

A backup group is one guest's backups on a datastore (``vm/100``). Prune is PBS's own (it
never removes a protected backup); asking again after a lost answer prunes nothing more, so
retries are safe.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional

from dapx.core.backups import BackupType
from dapx.errors import InputError
from dapx.tasks.base import dapx_task

if TYPE_CHECKING:
    from dapx.blocks.node import ProxmoxNode
    from dapx.transports.pbs import PbsClient


def _api(node: "ProxmoxNode") -> "PbsClient":
    if node.kind != "pbs":
        raise InputError(f"node {node.name} is a {node.kind} node, not a Proxmox Backup Server")
    return node.api()  # type: ignore[return-value]


@dapx_task(name="pbs-datastores")
def read_datastores(pbs: "ProxmoxNode") -> list[str]:
    """The datastore names of ``pbs`` (``GET /admin/datastore``)."""
    return [str(d["store"]) for d in _api(pbs).datastores()]


@dapx_task(name="pbs-group-backups")
def read_group(pbs: "ProxmoxNode", store: str, backup_type: BackupType, backup_id: int,
               ns: Optional[str] = None) -> list[dict[str, Any]]:
    """The backups of one guest on ``store``: backup-time, size, protected, files..."""
    return _api(pbs).datastore_snapshots(store, backup_type, str(backup_id), ns=ns)


@dapx_task(name="pbs-prune")
def prune_group(pbs: "ProxmoxNode", store: str, backup_type: BackupType, backup_id: int,
                counts: dict[str, int], ns: Optional[str] = None) -> list[int]:
    """Prune one guest's backups with PBS's keep options ``counts`` (``keep_last``...: at
    least one). Returns the backup times PBS removed, newest first."""
    marks = _api(pbs).prune(store, backup_type, str(backup_id), ns=ns, **counts)
    removed = [int(m["backup-time"]) for m in marks if not m.get("keep")]
    return sorted(removed, reverse=True)
