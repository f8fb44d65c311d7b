"""``register-vm``: make a replicated guest known to PVE on the destination (feature R3).

The source config is rewritten by ``dapx.core.registration`` (new VMID, disks on the
destination storage, bridges mapped, optional ``cpu: host``, no snapshots/PENDING/onboot)
and written to ``/etc/pve/nodes/<dest>/{qemu-server,lxc}/<vmid>.conf``. The first
description line marks it as ours (``#dapx-replica-of: pve1/100``): a re-run replaces our
own config; a VMID that belongs to any other guest is refused. Keys that would run code as
root on the destination or pass host devices through (``hookscript``, ``args``, ``hostpciN``,
``usbN``, raw ``lxc.*``...) are left out unless the job's ``carry_keys`` names them; the
registration result names every key left out (``registration_note`` says it in the plan).

Destination storage (ZFS): PVE needs a storage whose pool is ``<dest_pool>/<subfolder>``.
An existing zfspool storage with that pool is used; otherwise dapx adds one,
``dapx-<pool>-<subfolder>``, restricted to the destination node, through the PVE API
(``POST /storage``, what ``pvesm add zfspool`` does).
"""

from __future__ import annotations

import asyncio

import re
from typing import Literal

from prefect import flow
from pydantic import BaseModel, Field

from dapx.flows import KEPT_RESULTS
from dapx.blocks.manage import aload_nodes
from dapx.blocks.node import ProxmoxNode
from dapx.core.guestconfig import list_disks, serialise
from dapx.core.jobspec import ReplicaJob
from dapx.core.registration import (RegistrationOptions, dropped_keys, failed_over_from,
                                    rewrite_for_destination)
from dapx.core.validate import validate_storage_id
from dapx.errors import ConflictError, TransientError
from dapx.tasks.guests import (
    SourceGuest,
    config_path,
    is_replica_of,
    read_files,
    read_guest,
    replica_mark,
    write_file,
)
from dapx.tasks.base import dapx_task
from dapx.tasks.ssh import node_sessions
from dapx.ui_extensions.artifacts import readable


class Registration(BaseModel):
    """The outcome of one registration."""

    node: str = Field(description="Destination node.", examples=["pve3"])
    vmid: int = Field(description="VMID on the destination.", examples=[9100])
    kind: str = Field(description="qemu or lxc.", examples=["qemu"])
    storage: str = Field(description="Destination storage id the disks point at.")
    action: Literal["created", "updated", "unchanged"] = Field(description="What happened.")
    storage_created: bool = Field(default=False, description="The storage was added now.")
    dropped_keys: list[str] = Field(
        default_factory=list, description="Config keys left out of the replica: they run code "
        "as root or pass host devices through on the destination (keep them with the job's "
        "carry_keys).", examples=[["hookscript", "hostpci0"]])

    def __str__(self) -> str:
        text = f"{self.action} {self.kind} {self.vmid} on {self.node} (storage {self.storage})"
        return text + dropped_note(self.dropped_keys)


def dropped_note(keys: list[str]) -> str:
    """``"; left out hookscript, hostpci0 (...)"`` for a result or plan line; "" for none."""
    if not keys:
        return ""
    return (f"; left out {', '.join(keys)} (root hooks or host devices; name them in the "
            "job's carry_keys to keep them)")


def registration_note(job: ReplicaJob, guest: SourceGuest) -> str:
    """The plan's line about registration: VMID, bridges, cpu host and every config key the
    replica will not carry."""
    bridges = readable(job.bridge_map) if job.bridge_map else "unchanged"
    return (f"would register the guest as VMID {job.target_vmid} on {job.destination} "
            f"(bridges {bridges}{', cpu host' if job.cpu_host else ''})"
            + dropped_note(dropped_keys(guest.config, job.carry_keys)))


def zfs_storage_id(pool: str, subfolder: str) -> str:
    """``dapx-rpool-replica`` for the pool ``rpool/replica``."""
    raw = "-".join(p for p in ("dapx", pool, subfolder) if p)
    return validate_storage_id(re.sub(r"[^A-Za-z0-9-]+", "-", raw)[:64].rstrip("-"))


def find_zfs_storage(storages: dict[str, dict[str, str]], pool: str) -> str | None:
    """The id of a zfspool storage whose pool is ``pool``, if any."""
    return next((sid for sid, opts in sorted(storages.items())
                 if opts.get("type") == "zfspool" and opts.get("pool") == pool), None)


def with_mark(text: str, source: str, vmid: int) -> str:
    """The config text with our mark as its first description line."""
    return replica_mark(source, vmid) + "\n" + text


@dapx_task
async def ensure_zfs_storage(dest: ProxmoxNode, pool: str, subfolder: str) -> tuple[str, bool]:
    """(storage id, created now) of the destination zfspool storage for ``pool/subfolder``.

    Reads and adds storages through the PVE API (``GET/POST /storage``), as `pvesm add` does
    (in a thread: the flow's other steps go on meanwhile).
    """
    return await asyncio.to_thread(_ensure_zfs_storage, dest, pool, subfolder)


def _ensure_zfs_storage(dest: ProxmoxNode, pool: str, subfolder: str) -> tuple[str, bool]:
    dataset = "/".join(p for p in (pool, subfolder) if p)
    api = dest.pve_api()
    storages = {s["storage"]: s for s in api.get("storage")}
    found = find_zfs_storage(storages, dataset)
    if found:
        return found, False
    sid = zfs_storage_id(pool, subfolder)
    if sid in storages:
        raise ConflictError(f"storage id {sid!r} on {dest.name} exists with pool "
                            f"{storages[sid].get('pool')!r}, not {dataset!r}; rename it")
    api.post("storage", storage=sid, type="zfspool", pool=dataset, content="images,rootdir",
             sparse=1, nodes=dest.name)
    return sid, True


API_CHECK_TIMEOUT = 10.0
"""Seconds the pre-copy cluster check waits for the destination's API before going on."""


def vmid_owner(dest: ProxmoxNode, vmid: int, timeout: float = 30.0) -> dict | None:
    """The cluster resource using ``vmid`` as the destination's API lists it, or None."""
    return next((g for g in dest.api(timeout=timeout).guests()
                 if int(g.get("vmid", 0)) == vmid), None)


async def existing_config(dest: ProxmoxNode, kind: str, vmid: int, source: str,
                          source_vmid: int) -> str | None:
    """Our earlier registration's text (None when the VMID is free on ``dest``).

    Raises ConflictError when a config that is not our replica of ``source``/``source_vmid``
    holds the VMID on ``dest``.
    """
    paths = vmid_config_paths(kind, vmid, dest.name)
    files = (await read_files(dest, list(paths))).files
    return our_config(files, paths, source, source_vmid, vmid, dest.name)


def vmid_config_paths(kind: str, vmid: int, node: str) -> tuple[str, str]:
    """(the config path of a ``kind`` guest ``vmid`` on ``node``, the other kind's path)."""
    return (config_path(kind, vmid, node),
            config_path("lxc" if kind == "qemu" else "qemu", vmid, node))


def our_config(files: dict[str, str], paths: tuple[str, str], source: str, source_vmid: int,
               vmid: int, node: str) -> str | None:
    """Our earlier registration's text among ``files`` (read at ``paths``), None when the
    VMID is free. Raises ConflictError when another guest's config holds it."""
    path, other = paths
    existing = files.get(path)
    refuse_failed_over(existing or "", source, source_vmid, vmid, node)
    if other in files or (existing is not None and not is_replica_of(existing, source,
                                                                      source_vmid)):
        raise ConflictError(f"VMID {vmid} on {node} belongs to another guest, not to "
                            f"the replica of {source}/{source_vmid}; choose another "
                            "destination VMID")
    return existing


def refuse_failed_over(text: str, source: str, source_vmid: int, vmid: int, node: str) -> None:
    """ConflictError when the config ``text`` of ``vmid`` on ``node`` is ``source``/
    ``source_vmid``'s replica that the failover flow started as the live guest."""
    failed_over = failed_over_from(text)
    if failed_over and failed_over.startswith(f"{source}/{source_vmid} "):
        raise ConflictError(f"guest {vmid} on {node} is {source}/{source_vmid} failed over "
                            f"({failed_over.split(' ', 1)[1]}): it is the live copy now, and no "
                            "replica is written into it; remove the job, or replicate to "
                            "another destination VMID")


@dapx_task
async def check_not_failed_over(job: ReplicaJob, dest: ProxmoxNode) -> None:
    """For a job that does not register (and so makes no VMID check): refuse (ConflictError)
    when the failover flow started this job's copy as the live guest. One read of the
    destination's config files, before any data moves."""
    for text in (await vmid_configs(dest, job.target_vmid))[1].values():
        refuse_failed_over(text, job.source, job.guest, job.target_vmid, dest.name)


async def vmid_configs(dest: ProxmoxNode, vmid: int) -> tuple[tuple[str, str], dict[str, str]]:
    """((the qemu config path of ``vmid`` on ``dest``, the lxc one), those that exist: path ->
    text), in one read."""
    paths = vmid_config_paths("qemu", vmid, dest.name)
    return paths, (await read_files(dest, list(paths))).files


@dapx_task
async def check_vmid_available(job: ReplicaJob, source: ProxmoxNode, dest: ProxmoxNode,
                               kind: str, api_optional: bool = False) -> str:
    """Refuse (ConflictError) a destination VMID another guest uses: its config files on the
    destination, read over SSH, and the cluster's guest list from the destination's API.

    ``api_optional`` (the check before any data moves): an API that cannot be reached only
    skips the cluster part and is returned as a note, so the copy goes on; registration
    checks again and needs the API. Returns "" or that note.
    """
    await existing_config(dest, kind, job.target_vmid, source.name, job.guest)
    try:
        owner = await asyncio.to_thread(vmid_owner, dest, job.target_vmid,
                                        API_CHECK_TIMEOUT if api_optional else 30.0)
    except TransientError as exc:
        if not api_optional:
            raise
        from prefect.logging import get_run_logger

        note = f"cluster-wide VMID check skipped, the API cannot be reached: {exc}"
        get_run_logger().warning("%s (copying anyway; registration checks again)", note)
        return note
    if owner is not None and owner.get("node") != dest.name:
        raise ConflictError(f"VMID {job.target_vmid} is in use on node {owner.get('node')}; "
                            "choose another destination VMID")
    return ""


@dapx_task
async def write_registration(dest: ProxmoxNode, guest: SourceGuest, vmid: int,
                             text: str) -> Literal["created", "updated", "unchanged"]:
    """Write the config unless a config that is not our replica holds the VMID."""
    existing = await existing_config(dest, guest.kind, vmid, guest.node, guest.vmid)
    path = config_path(guest.kind, vmid, dest.name)
    if existing == text:
        return "unchanged"
    await write_file(dest, path, text)
    return "updated" if existing is not None else "created"


def registration_options(job: ReplicaJob, guest: SourceGuest, storage: str) -> RegistrationOptions:
    """Every source storage the guest's disks use maps to ``storage``."""
    storages = {d.storage for d in list_disks(guest.config) if d.storage}
    return RegistrationOptions(new_vmid=job.target_vmid, storage_map={s: storage for s in storages},
                               bridge_map=job.bridge_map, cpu_host=job.cpu_host,
                               carry_keys=tuple(job.carry_keys))


async def register_guest(job: ReplicaJob, source: ProxmoxNode, dest: ProxmoxNode,
                         storage_kind: Literal["zfs", "btrfs"] = "zfs",
                         storage: str | None = None,
                         guest: SourceGuest | None = None,
                         cluster_checked: bool = False) -> Registration:
    """The registration steps, for use inside a flow that holds the node sessions.

    ZFS: the destination storage for ``dest_pool/subfolder`` (created when missing).
    BTRFS: ``storage`` (the destination's BTRFS storage id), default ``job.dest_pool``.
    ``guest``: the source guest when the caller has read it already. ``cluster_checked``:
    the caller checked the VMID against the cluster's API moments ago; the destination's
    config files are checked again as the config is written, in any case.
    """
    guest = guest or await read_guest(source, job.guest)
    if storage_kind == "zfs":
        storage, created = await ensure_zfs_storage(dest, job.dest_pool, job.subfolder)
    else:
        storage, created = validate_storage_id(storage or job.dest_pool), False
    if not cluster_checked:
        await check_vmid_available(job, source, dest, guest.kind)
    text, dropped = registration_text(job, guest, storage)
    action = await write_registration(dest, guest, job.target_vmid, text)
    return Registration(node=dest.name, vmid=job.target_vmid, kind=guest.kind, storage=storage,
                        action=action, storage_created=created, dropped_keys=dropped)


def registration_text(job: ReplicaJob, guest: SourceGuest, storage: str) -> tuple[str, list[str]]:
    """(the config text the destination gets, with our mark; the source keys left out)."""
    options = registration_options(job, guest, storage)
    config = rewrite_for_destination(guest.config, job.guest, options)
    return (with_mark(serialise(config), job.source, job.guest),
            dropped_keys(guest.config, options.carry_keys))


@flow(name="register-vm", log_prints=False, **KEPT_RESULTS)
async def register_vm(job: ReplicaJob, storage_kind: Literal["zfs", "btrfs"] = "zfs",
                      storage: str | None = None) -> Registration:
    """Register the replica of ``job.guest`` on ``job.destination`` (after a replication);
    ``storage`` names the destination BTRFS storage for ``storage_kind="btrfs"``."""
    source, dest = await aload_nodes(job.source, job.destination)
    async with node_sessions():
        return await register_guest(job, source, dest, storage_kind, storage)
