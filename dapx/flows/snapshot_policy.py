"""``snapshot-policy``: a guest's sanoid policy written into the node's sanoid.conf (S2).

Shape of a run: read the guest's config with storage.cfg and the node's sanoid.conf (exact
bytes) at once; map the guest's disks to ZFS datasets (sanoid manages ZFS only: other disks
are named in the result); parse the file as sanoid would (a file sanoid refuses is refused
here, naming the line, and nothing is written); put the guest's record into the DAPX block
(``dapx.core.sanoidconf``) or take it out when the policy is off; then, holding the node's
sanoid.conf lock, let sanoid itself check the new file and replace the old one atomically,
keeping it as ``sanoid.conf.dapx-previous``. A dry run stops after sanoid's check and shows
the change. ``sanoid --cron`` (its timer) then takes and prunes ``autosnap_*`` snapshots.
"""

from __future__ import annotations

import asyncio
import difflib

from prefect import flow
from pydantic import BaseModel, Field

from dapx.flows import KEPT_RESULTS
from dapx.blocks.manage import aload_nodes
from dapx.core import sanoidconf
from dapx.core.guestconfig import list_disks
from dapx.core.sanoidconf import SanoidPolicy
from dapx.core.types import NodeName, Vmid
from dapx.core.units import key_values
from dapx.core.volumes import zfs_dataset
from dapx.tasks import sanoid
from dapx.tasks.guests import read_guest
from dapx.tasks.locks import exclusive
from dapx.tasks.ssh import node_sessions
from dapx.ui_extensions.artifacts import artifact_key, publish_markdown

LOCK_WAIT = 120.0


class PolicyResult(BaseModel):
    """What a snapshot-policy run did."""

    node: str
    guest: int
    enabled: bool
    template: str
    counts: dict[str, int] = Field(default_factory=dict, description="Effective counts.")
    datasets: list[str] = Field(default_factory=list, description="Datasets the policy covers.")
    skipped: list[str] = Field(default_factory=list, description="Disks sanoid cannot manage.")
    changed: bool = Field(default=False, description="True when sanoid.conf changed "
                          "(or would, for a dry run).")
    dry_run: bool = False
    backup: str = Field(default="", description="Where the previous file was kept.")
    diff: str = Field(default="", description="The change as a unified diff.")
    sanoid_output: str = Field(default="", description="What sanoid's check printed.")

    def __str__(self) -> str:
        counts = key_values(self.counts, " ")
        state = f"template {self.template} ({counts})" if self.enabled else "off"
        verb = ("would change" if self.dry_run else "changed") if self.changed else "unchanged"
        return (f"guest {self.guest} on {self.node}: sanoid policy {state} on "
                f"{', '.join(self.datasets) or 'no dataset'}; {sanoidconf.CONF_PATH} {verb}"
                + (f" (previous kept as {self.backup})" if self.backup else "")
                + "".join(f"\n  skipped {s}" for s in self.skipped))


def guest_datasets(guest) -> tuple[list[str], list[str]]:  # noqa: ANN001 - a SourceGuest
    """(ZFS datasets, disks sanoid cannot manage) of a guest."""
    datasets, skipped = [], []
    for disk in list_disks(guest.config):
        storage = guest.storages.get(disk.storage or "", {})
        if storage.get("type") == "zfspool" and "pool" in storage:
            datasets.append(zfs_dataset(storage["pool"], disk.volname))
        else:
            skipped.append(f"{disk.key} ({disk.volid}): not on ZFS, sanoid cannot snapshot it")
    return datasets, skipped


def new_conf(text: str, vmid: int, policy: SanoidPolicy, datasets: list[str]) -> str:
    """The new sanoid.conf text. Raises SanoidConfError (InputError) naming the line."""
    conf = sanoidconf.parse(text)
    records = dict(conf.records)
    if policy.enabled:
        records[vmid] = sanoidconf.record_for(vmid, policy, datasets)
    else:
        records.pop(vmid, None)
    return sanoidconf.with_records(conf, records)


def unified(old: str, new: str) -> str:
    return "".join(difflib.unified_diff(old.splitlines(keepends=True),
                                        new.splitlines(keepends=True),
                                        sanoidconf.CONF_PATH, sanoidconf.CONF_PATH + " (new)"))


@flow(name="snapshot-policy", log_prints=False, **KEPT_RESULTS)
async def snapshot_policy(node: NodeName, guest: Vmid, policy: SanoidPolicy = SanoidPolicy(),
                          dry_run: bool = False) -> PolicyResult:
    """S2: set guest ``guest``'s sanoid policy on node ``node`` (template, per-period
    overrides, or off) in ``/etc/sanoid/sanoid.conf``; ``dry_run`` only shows the change.

    Raises InputError for a guest not on the node, one without ZFS disks, a sanoid.conf
    sanoid would refuse (naming the line) or a new file sanoid refuses; ConflictError when
    the file changed meanwhile; PermanentError when sanoid is not installed.
    """
    (block,) = await aload_nodes(node)
    async with node_sessions():
        source, (text, digest) = await asyncio.gather(read_guest(block, guest),
                                                      sanoid.read_conf(block))
        datasets, skipped = guest_datasets(source)
        new = new_conf(text, guest, policy, datasets)
        result = PolicyResult(node=node, guest=guest, enabled=policy.enabled,
                              template=policy.template, counts=policy.counts(),
                              datasets=datasets if policy.enabled else [], skipped=skipped,
                              changed=new != text, dry_run=dry_run, diff=unified(text, new))
        if result.changed and dry_run:
            result.sanoid_output = await sanoid.install_conf(block, new, digest, check_only=True)
        elif result.changed:
            async with exclusive(f"dapx-sanoid-conf-{node}", f"changing sanoid.conf on {node}",
                                 LOCK_WAIT):
                result.sanoid_output = await sanoid.install_conf(block, new, digest,
                                                                 check_only=False)
            result.backup = sanoidconf.CONF_PATH + sanoid.BACKUP_SUFFIX if digest != \
                sanoid.ABSENT else ""
    await publish_markdown(artifact_key("snapshot-policy", node, guest),
                           f"# sanoid policy of guest {guest} on {node}\n\n{result}\n\n"
                           f"```diff\n{result.diff or 'no change'}\n```\n",
                           str(result).splitlines()[0])
    return result


def run_snapshot_policy(**kwargs) -> PolicyResult:  # noqa: ANN003
    """Run the flow from sync code (the CLI)."""
    return asyncio.run(snapshot_policy(**kwargs))
