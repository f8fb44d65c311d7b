"""The PBS simulator's API: snapshots, protection, prune (dry-run), status, verify, with real files."""

from __future__ import annotations

import hashlib
import json
import time

import pytest
import requests

from dapx.lab.pvesim import pbsstore
from tests.api.test_sim_pve import SECRET, api, sim, wait, _create  # noqa: F401 - shared fixture

pytestmark = pytest.mark.usefixtures("sim")


def pbs(sim, method: str, path: str, **params):
    """One PBS call with PBSAPIToken auth, certificate verified against the sim's CA."""
    r = requests.request(method, f"https://127.0.0.1:{sim['pbs_port']}/api2/json{path}", params=params,
                         headers={"Authorization": f"PBSAPIToken=root@pam!dapx:{SECRET}"}, verify=sim["ca"],
                         timeout=30)
    return r


def _backup(sim, vmid: int) -> None:
    px = api(sim)
    if not (sim["root"] / f"etc/pve/nodes/pve1/qemu-server/{vmid}.conf").exists():
        _create(px, vmid)
    st = wait(px, px.nodes("pve1").vzdump.post(vmid=str(vmid), storage="pbs"))
    assert st["exitstatus"] == "OK"
    time.sleep(1.05)  # backup times are whole seconds


def test_snapshots_protect_prune_verify(sim):
    for _ in range(3):
        _backup(sim, 400)
    snaps = pbs(sim, "GET", "/admin/datastore/store1/snapshots", **{"backup-id": "400"}).json()["data"]
    assert len(snaps) == 3 and all(s["backup-type"] == "vm" for s in snaps)
    assert any(f["filename"] == "drive-scsi0.img.fidx" for f in snaps[0]["files"])
    oldest = min(s["backup-time"] for s in snaps)
    r = pbs(sim, "PUT", "/admin/datastore/store1/protected", **{"backup-type": "vm", "backup-id": "400",
                                                                 "backup-time": oldest, "protected": 1})
    assert r.status_code == 200
    r = pbs(sim, "DELETE", "/admin/datastore/store1/snapshots", **{"backup-type": "vm", "backup-id": "400",
                                                                    "backup-time": oldest})
    assert r.status_code == 400
    dry = pbs(sim, "POST", "/admin/datastore/store1/prune", **{"backup-type": "vm", "backup-id": "400",
                                                                "keep-last": 1, "dry-run": 1}).json()["data"]
    assert sorted(d["keep"] for d in dry) == [False, True, True]  # newest + protected kept
    assert len(pbs(sim, "GET", "/admin/datastore/store1/snapshots").json()["data"]) >= 3
    pbs(sim, "POST", "/admin/datastore/store1/prune", **{"backup-type": "vm", "backup-id": "400", "keep-last": 1})
    left = pbs(sim, "GET", "/admin/datastore/store1/snapshots", **{"backup-id": "400"}).json()["data"]
    assert len(left) == 2
    assert pbs(sim, "GET", "/admin/datastore/store1/status").json()["data"]["total"] > 0
    groups = pbs(sim, "GET", "/admin/datastore/store1/groups").json()["data"]
    assert any(g["backup-id"] == "400" and g["backup-count"] == 2 for g in groups)


def _verify(sim, **params) -> dict:
    upid = pbs(sim, "POST", "/admin/datastore/store1/verify", **params).json()["data"]
    assert upid.startswith("UPID:")
    for _ in range(100):
        st = pbs(sim, "GET", f"/nodes/localhost/tasks/{upid}/status").json()["data"]
        if st["status"] == "stopped":
            return st
        time.sleep(0.1)
    raise AssertionError("verify did not finish")


def test_verify_detects_corruption(sim):
    _backup(sim, 410)
    assert _verify(sim, **{"backup-type": "vm", "backup-id": "410"})["exitstatus"] == "OK"
    store = sim["root"] / "datastore/store1/vm/410"
    snapdir = sorted(store.iterdir())[-1]
    man = json.loads((snapdir / "index.json.blob").read_text())
    img = snapdir / "drive-scsi0.img.fidx"
    assert hashlib.sha256(img.read_bytes()).hexdigest() == next(
        f["csum"] for f in man["files"] if f["filename"] == img.name)
    data = bytearray(img.read_bytes())
    data[0] ^= 0xFF
    img.write_bytes(bytes(data))
    st = _verify(sim, **{"backup-type": "vm", "backup-id": "410"})
    assert st["exitstatus"] != "OK"
    snaps = pbs(sim, "GET", "/admin/datastore/store1/snapshots", **{"backup-id": "410"}).json()["data"]
    assert snaps[-1]["verification"]["state"] == "failed"


def test_pbs_wrong_token_401(sim):
    r = requests.get(f"https://127.0.0.1:{sim['pbs_port']}/api2/json/version",
                     headers={"Authorization": "PBSAPIToken=root@pam!dapx:nope"}, verify=sim["ca"], timeout=10)
    assert r.status_code == 401


def test_time_dir_round_trip():
    assert pbsstore.time_dir(pbsstore.parse_time("2026-11-26T02:00:00Z")) == "2026-11-26T02:00:00Z"
