"""Guests and storages as PVE's API lists them, and the decisions made from those lists.

In: rows of ``GET /cluster/resources?type=vm`` (every guest of a cluster, with the node that
holds it) and storage.cfg sections from ``GET /storage/{id}``. Out: typed guests, the guests
a job means, free VMIDs for a restore beside an existing guest, a checked PBS storage.
"""

from __future__ import annotations

from typing import Any, Iterable, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field

from dapx.core.validate import VMID_MAX, VMID_MIN
from dapx.errors import InputError

TEMPORARY_VMIDS = (999_000_000, VMID_MAX)
"""Where a restore beside an existing guest, and the guest set aside, take their VMIDs: high
above the ids PVE hands out itself (``/cluster/nextid`` counts up from 100)."""


class ClusterGuest(BaseModel):
    """One guest of a cluster."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    vmid: int = Field(description="VMID.", examples=[100])
    node: str = Field(description="Node that holds it.", examples=["pve1"])
    kind: Literal["qemu", "lxc"] = Field(description="qemu or lxc.", examples=["qemu"])
    name: str = Field(default="", description="Guest name.", examples=["web01"])
    status: str = Field(default="unknown", description="running, stopped...",
                        examples=["running"])
    lock: str = Field(default="", description="PVE lock (backup, migrate...), empty if none.")
    template: bool = Field(default=False, description="A template, not a guest.")


def cluster_guests(rows: Iterable[dict[str, Any]]) -> dict[int, ClusterGuest]:
    """``{vmid: guest}`` from ``/cluster/resources`` rows (non-guest rows are skipped)."""
    found = {}
    for row in rows:
        kind = row.get("type")
        if kind not in ("qemu", "lxc") or row.get("vmid") is None:
            continue
        vmid = int(row["vmid"])
        found[vmid] = ClusterGuest(vmid=vmid, node=str(row.get("node", "")), kind=kind,
                                   name=str(row.get("name") or ""),
                                   status=str(row.get("status") or "unknown"),
                                   lock=str(row.get("lock") or ""),
                                   template=bool(int(row.get("template") or 0)))
    return found


def guests_to_back_up(guests: dict[int, ClusterGuest], wanted: list[int],
                      node: str) -> list[ClusterGuest]:
    """The guests a backup job means: ``wanted`` (wherever in the cluster each is), or every
    guest on ``node`` when ``wanted`` is empty (templates too: PVE backs them up).

    Raises InputError naming every wanted VMID that is on no node of the cluster, or when
    ``node`` holds no guest at all.
    """
    if not wanted:
        mine = sorted((g for g in guests.values() if g.node == node), key=lambda g: g.vmid)
        if not mine:
            raise InputError(f"node {node} holds no guest to back up")
        return mine
    missing = [v for v in wanted if v not in guests]
    if missing:
        raise InputError(f"guest(s) {', '.join(map(str, missing))} are on no node of "
                         f"{node}'s cluster; check the VMIDs")
    return [guests[v] for v in wanted]


def free_vmids(used: Iterable[int], count: int,
               span: tuple[int, int] = TEMPORARY_VMIDS) -> list[int]:
    """``count`` VMIDs not in ``used``, the lowest of ``span``. Raises InputError if full."""
    taken, found = set(used), []
    low, high = max(span[0], VMID_MIN), min(span[1], VMID_MAX)
    vmid = low
    while len(found) < count and vmid <= high:
        if vmid not in taken:
            found.append(vmid)
        vmid += 1
    if len(found) < count:
        raise InputError(f"no free VMID left between {low} and {high}")
    return found


class PbsStorage(BaseModel):
    """A PVE storage of type pbs: which PBS datastore it writes to."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    storage: str = Field(description="PVE storage id.", examples=["pbs"])
    server: str = Field(description="PBS host as storage.cfg names it.",
                        examples=["198.18.213.21"])
    datastore: str = Field(description="PBS datastore.", examples=["store1"])
    namespace: Optional[str] = Field(default=None, description="PBS namespace, if any.")


def pbs_storage(storage: str, section: dict[str, Any]) -> PbsStorage:
    """A storage.cfg section (``GET /storage/{id}``) as a PbsStorage; InputError when the
    storage is not of type pbs or lacks its server or datastore."""
    kind = section.get("type")
    if kind != "pbs":
        raise InputError(f"storage {storage!r} is of type {kind}, not a Proxmox Backup Server "
                         "storage (type pbs)")
    if not section.get("server") or not section.get("datastore"):
        raise InputError(f"PBS storage {storage!r} names no server or datastore")
    return PbsStorage(storage=storage, server=str(section["server"]),
                      datastore=str(section["datastore"]),
                      namespace=str(section["namespace"]) if section.get("namespace") else None)


def storage_holds(section: dict[str, Any], kind: str) -> bool:
    """True when a storage (a ``GET /nodes/{n}/storage`` row) takes ``kind``'s disks:
    content ``images`` for qemu, ``rootdir`` for lxc."""
    want = "images" if kind == "qemu" else "rootdir"
    return want in str(section.get("content", "")).split(",")


def require_pbs_storage(storages: dict[str, dict[str, Any]], storage: str, node: str) -> None:
    """InputError unless ``node``'s storages (``GET /nodes/{n}/storage`` rows by id) include
    ``storage`` and it is a PBS storage."""
    found = storages.get(storage)
    if found is None:
        raise InputError(f"node {node} has no storage {storage!r} (it has: "
                         f"{', '.join(sorted(storages)) or 'none'})")
    if found.get("type") != "pbs":
        raise InputError(f"storage {storage!r} on {node} is of type {found.get('type')}, not a "
                         "Proxmox Backup Server storage")


def require_target_storage(storages: dict[str, dict[str, Any]], storage: str, node: str,
                           kind: str, replacing: bool) -> None:
    """InputError unless ``storage`` is on ``node``, active, holds ``kind``'s disks, and (when
    replacing a guest) is of a type whose volumes dapx can rename."""
    from dapx.core.renumber import SWAPPABLE_TYPES

    found = storages.get(storage)
    if found is None:
        raise InputError(f"node {node} has no storage {storage!r} for the restored disks (it "
                         f"has: {', '.join(sorted(storages)) or 'none'})")
    if not storage_holds(found, kind):
        want = "images" if kind == "qemu" else "rootdir"
        raise InputError(f"storage {storage!r} on {node} does not hold {want} (content: "
                         f"{found.get('content') or 'none'}); choose one that does")
    if not int(found.get("active", 1)):
        raise InputError(f"storage {storage!r} on {node} is not active")
    if replacing and found.get("type") not in SWAPPABLE_TYPES:
        raise InputError(f"storage {storage!r} is of type {found.get('type')}: a restore over "
                         f"an existing guest renames the new volumes, which dapx can do only "
                         f"on {', '.join(SWAPPABLE_TYPES)} storages; restore to a free VMID")
