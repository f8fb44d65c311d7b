"""The PBS flows against fakepve's faults: what a user reads when PVE fails them.

fakepve (the PVE 9 API, schema-checked) stands for the node, the small PBS fake of
``test_pbs_client`` for pbs1. fakepve's vzdump backs nothing up, its task-error fault ends a
task with ``TASK ERROR``, and a guest can be left locked: each must end the run with one clear
error naming the guest and PVE's own words.
"""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest
from pydantic import SecretStr

from dapx.blocks import ProxmoxNode
from dapx.core.jobspec import BackupJob, RestoreRequest
from dapx.errors import GuestLocked, PermanentError
from dapx.transports.pve import format_fingerprint
from tests.api.test_pbs_client import TOKEN, pbs  # noqa: F401 - the PBS fake's fixture

SECRET = "0f1e2d3c-4b5a-4968-8776-a5b4c3d2e1f0"


@pytest.fixture(scope="module")
def harness(prefect_harness):  # noqa: ANN001 - the session's test server (tests.helpers.lab)
    yield


@pytest.fixture
async def nodes(harness, fakepve, fakepve_cafile, pbs):  # noqa: F811 - pytest fixture
    """pve1 (fakepve, VM 100, a PBS storage with one backup of it) and pbs1 as blocks."""
    fakepve.apitokens["root@pam!dapx"] = SECRET
    fakepve.add_vm(100, "web", config={"scsi0": "local-dir:100/vm-100-disk-0.raw,size=4G",
                                       "net0": "virtio=BC:24:11:00:00:01,bridge=vmbr0"})
    fakepve.storages["pbs"] = {"type": "pbs", "active": 1, "content": "backup", "files": set(),
                               "server": "127.0.0.1", "datastore": "store1", "shared": 1}
    fakepve.storages["local-dir"] = {"type": "dir", "active": 1, "content": "images,rootdir",
                                     "files": set(), "path": "/var/lib/dir"}
    fakepve.store_file("pbs", "vm/100/2026-01-01T00:00:00Z", 4096, content="backup")
    fakepve.storages["pbs"]["volumes"]["backup/vm/100/2026-01-01T00:00:00Z"]["vmid"] = 100
    host, port = fakepve.url.split("//")[1].rsplit(":", 1)
    cert = format_fingerprint(ssl.PEM_cert_to_DER_cert(Path(fakepve_cafile).read_text()))
    await ProxmoxNode(name="pve1", host=host, api_port=int(port), api_token_id="root@pam!dapx",
                      api_token_secret=SecretStr(SECRET), tls_fingerprint=cert
                      ).asave("pve1", overwrite=True)
    pbs_port, pbs_cert = pbs
    await ProxmoxNode(name="pbs1", host="127.0.0.1", kind="pbs", api_port=pbs_port,
                      api_token_id="root@pam!dapx", api_token_secret=SecretStr(
                          TOKEN.rpartition(":")[2]), tls_fingerprint=pbs_cert
                      ).asave("pbs1", overwrite=True)
    return fakepve


def backup_job() -> BackupJob:
    return BackupJob(node="pve1", guests=[100], storage="pbs", retention={"keep_last": 2})


async def test_vzdump_task_error_fails_the_guest_with_pves_message(nodes):
    from dapx.flows.backup import pbs_backup

    nodes.fail("POST", "/nodes/pve1/vzdump", error="internal_error")
    with pytest.raises(PermanentError) as failed:
        await pbs_backup(backup_job())
    message = str(failed.value)
    assert message.startswith("backup failed for 1 of 1 guest(s): 100: backup of guest 100 on "
                              "pve1 failed: internal error")
    assert "\n" not in message


async def test_vzdump_ok_that_made_no_backup_is_not_counted(nodes):
    """fakepve's vzdump ends OK and stores nothing: the run must not report a backup."""
    from dapx.flows.backup import pbs_backup

    with pytest.raises(PermanentError, match="100: vzdump reported success but PBS shows no "
                                             "new backup"):
        await pbs_backup(backup_job())


async def test_restore_over_a_locked_guest_is_refused_naming_the_lock(nodes):
    from dapx.flows.restore import pbs_restore

    nodes.snapshot_lock(100, "backup")
    request = RestoreRequest(storage="pbs", backup="vm/100/latest", destination="pve1",
                             dest_storage="local-dir")
    with pytest.raises(GuestLocked, match=r"VMID 100 is qemu guest 'web' on pve1 and locked "
                                          r"\(backup\)"):
        await pbs_restore(request, force=True)
    assert not [r for r in nodes.requests if r[0] == "POST" and r[1].endswith("/qemu")]
