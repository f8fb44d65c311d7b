"""Proxmox Backup Server API tasks: datastores, a guest's backups, prune.

A backup group is one guest's backups on a datastore (``vm/100``). Prune is PBS's own (it
never removes a protected backup); asking again after a lost answer prunes nothing more, so
retries are safe.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional

from dapx.core.backups import BackupType, find_new_backup
from dapx.errors import InputError
from dapx.tasks.base import dapx_task

if TYPE_CHECKING:
    from dapx.blocks.node import ProxmoxNode
    from dapx.transports.pbs import PbsClient


def _api(node: "ProxmoxNode") -> "PbsClient":
    return node.pbs_api()


@dapx_task(name="pbs-read-groups")
def read_groups(pbs: "ProxmoxNode", store: str, groups: list[tuple[BackupType, int]],
                ns: Optional[str] = None) -> dict[int, list[dict[str, Any]]]:
    """The backups of each guest (``(backup type, VMID)``) on datastore ``store``: backup-time,
    size, protected... Raises InputError when ``pbs`` has no such datastore."""
    api = _api(pbs)
    stores = [str(d["store"]) for d in api.datastores()]
    if store not in stores:
        raise InputError(f"PBS {pbs.name} has no datastore {store!r}; it has: "
                         f"{', '.join(stores) or 'none'}")
    return {vmid: api.datastore_snapshots(store, btype, str(vmid), ns=ns)
            for btype, vmid in groups}


@dapx_task(name="pbs-record-and-prune")
def record_and_prune(pbs: "ProxmoxNode", store: str, backup_type: BackupType, backup_id: int,
                     archive: str, since: float, counts: dict[str, int] | None,
                     ns: Optional[str] = None) -> tuple[dict[str, Any], list[int]]:
    """After a vzdump: the new backup as PBS lists it (the one logged as ``archive``, else the
    newest since ``since``), then, with keep ``counts`` (``keep_last``...), PBS's prune of the
    guest's backups. Returns (the backup, the backup times PBS removed, newest first). Raises
    PermanentError when PBS holds no new backup."""
    api = _api(pbs)
    found = find_new_backup(api.datastore_snapshots(store, backup_type, str(backup_id), ns=ns),
                            archive, since)
    if not counts:
        return found, []
    marks = api.prune(store, backup_type, str(backup_id), ns=ns, **counts)
    removed = [int(m["backup-time"]) for m in marks if not m.get("keep")]
    return found, sorted(removed, reverse=True)
