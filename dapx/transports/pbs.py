"""Proxmox Backup Server API client: the same pinned-TLS, token-auth transport as PVE.

Paths as in the PBS API viewer. Tokens are sent as ``PBSAPIToken=user@realm!name:secret``
(proxmoxer does this for ``service="PBS"``). PBS tasks are read through ``/nodes/localhost``.
"""

from __future__ import annotations

from typing import Any, Literal, Optional

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

    def prune(self, store: str, backup_type: BackupType, backup_id: str, *, keep_last: int,
              dry_run: bool = False) -> list[dict[str, Any]]:
        """POST /admin/datastore/{store}/prune for one group, keeping the last ``keep_last``.

        Returns PBS's list of ``{"backup-time": ..., "keep": bool}``.
        """
        return self.post("admin", "datastore", store, "prune",
                         **{"backup-type": backup_type, "backup-id": backup_id,
                            "keep-last": int(keep_last), "dry-run": int(dry_run)})

    def status(self) -> dict[str, Any]:
        """GET /nodes/localhost/status: host CPU, memory, uptime."""
        return self.get("nodes", "localhost", "status")
