"""Proxmox Backup Server API client: the same pinned-TLS, token-auth transport as PVE.

Paths as in the PBS API viewer. Tokens are sent as ``PBSAPIToken=user@realm!name:secret``
(proxmoxer does this for ``service="PBS"``). PBS tasks are read through ``/nodes/localhost``.
"""

from __future__ import annotations

from typing import Any, Literal, Optional

from dapx.errors import InputError
from dapx.transports.pve import ApiClient

BackupType = Literal["vm", "ct", "host"]


class PbsClient(ApiClient):
    """Proxmox Backup Server API: version, datastores, snapshots, prune, status."""

    service = "PBS"

    def task_node(self, upid: str) -> str:
        """PBS serves every task of the host under ``/nodes/localhost``."""
        super().task_node(upid)  # validates the UPID
        return "localhost"

    def datastores(self) -> list[dict[str, Any]]:
        """GET /admin/datastore: ``[{"store": "store1", "comment": ...}]``."""
        return self.get("admin", "datastore")

    def datastore_status(self, store: str) -> dict[str, Any]:
        """GET /admin/datastore/{store}/status: ``total``, ``used``, ``avail`` bytes."""
        return self.get("admin", "datastore", store, "status")

    def snapshots(self, store: str, backup_type: Optional[BackupType] = None,
                  backup_id: Optional[str] = None) -> list[dict[str, Any]]:
        """GET /admin/datastore/{store}/snapshots: backup-type, backup-id, backup-time, size, files."""
        return self.get("admin", "datastore", store, "snapshots",
                        **{"backup-type": backup_type, "backup-id": backup_id})

    def delete_snapshot(self, store: str, backup_type: BackupType, backup_id: str, backup_time: int) -> Any:
        """DELETE /admin/datastore/{store}/snapshots for one backup."""
        return self.delete("admin", "datastore", store, "snapshots",
                           **{"backup-type": backup_type, "backup-id": backup_id,
                              "backup-time": int(backup_time)})

    def datastore_snapshots(self, store: str, backup_type: BackupType, backup_id: str,
                            ns: Optional[str] = None) -> list[dict[str, Any]]:
        """The snapshots of one group (``ns``: the datastore namespace, if the storage has one)."""
        return self.get("admin", "datastore", store, "snapshots", ns=ns,
                        **{"backup-type": backup_type, "backup-id": backup_id})

    def prune(self, store: str, backup_type: BackupType, backup_id: str, *,
              keep_last: Optional[int] = None, keep_hourly: Optional[int] = None,
              keep_daily: Optional[int] = None, keep_weekly: Optional[int] = None,
              keep_monthly: Optional[int] = None, keep_yearly: Optional[int] = None,
              dry_run: bool = False, ns: Optional[str] = None) -> list[dict[str, Any]]:
        """POST /admin/datastore/{store}/prune for one group with PBS's keep options.

        Returns PBS's list of ``{"backup-time": ..., "keep": bool, "protected": bool}``; PBS
        never removes a protected snapshot. Raises InputError when no keep option is given:
        PBS would then keep everything, silently disabling retention.
        """
        keep = {"keep-last": keep_last, "keep-hourly": keep_hourly, "keep-daily": keep_daily,
                "keep-weekly": keep_weekly, "keep-monthly": keep_monthly,
                "keep-yearly": keep_yearly}
        keep = {k: int(v) for k, v in keep.items() if v}
        if not keep:
            raise InputError(f"prune of {store}:{backup_type}/{backup_id} needs at least one "
                             "keep option; without one PBS keeps every backup")
        return self.post("admin", "datastore", store, "prune", ns=ns,
                         **{"backup-type": backup_type, "backup-id": backup_id,
                            "dry-run": int(dry_run)}, **keep)

    def status(self) -> dict[str, Any]:
        """GET /nodes/localhost/status: host CPU, memory, uptime."""
        return self.get("nodes", "localhost", "status")
