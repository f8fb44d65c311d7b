"""`dapx job create backup|recovery` and `dapx backup ...`: bad input is one line on stderr,
exit 2, before anything talks to Prefect or a node."""

from __future__ import annotations

import pytest

from dapx.cli import main


@pytest.fixture(autouse=True)
def no_server(monkeypatch: pytest.MonkeyPatch) -> None:
    # A closed port: any call that reached Prefect would fail loudly, not quietly succeed.
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:9/api")


@pytest.mark.parametrize("argv,expected", [
    (["job", "create", "backup", "--node", "pve1", "--storage", "pbs"],
     "retention: retention sets no keep count; PBS would keep every backup"),
    (["job", "create", "backup", "--node", "pve1", "--storage", "pbs", "--keep-last", "-1"],
     "retention.keep_last: versions to keep -1"),
    (["job", "create", "backup", "--node", "pve1", "--storage", "pbs", "--keep-last", "1",
      "--guests", "100;reboot"], "--guests '100;reboot' must be VMIDs"),
    (["job", "create", "backup", "--node", "pve1"], "job create backup needs --node and --storage"),
    (["job", "create", "backup", "--node", "pve1", "--storage", "pbs", "--keep-last", "1",
      "--dest", "pve3"], "job create backup does not take --dest"),
    (["job", "create", "backup", "--node", "pve1", "--storage", "p;s", "--keep-last", "1"],
     "storage"),
    (["job", "create", "recovery", "--source", "pve3", "--guest", "300"],
     "job create recovery needs --dest, --storage, --dest-storage"),
    (["job", "create", "recovery", "--source", "pve3", "--guest", "300", "--dest", "pve1",
      "--storage", "pbs", "--dest-storage", "local", "--dest-vmid", "99"], "dest_vmid"),
    (["job", "create", "replica", "--source", "pve1", "--guest", "100", "--dest", "pve3",
      "--keep-last", "2"], "job create replica does not take --keep-last"),
    (["job", "create", "replica", "--guest", "100", "--dest", "pve3"],
     "job create replica needs --source"),
    (["backup", "restore", "--backup", "vm/300", "--dest", "pve1", "--dest-storage", "local"],
     "backup: backup 'vm/300' must look like"),
    (["backup", "list", "--node", "pve1", "--guest", "99"], "VMID 99"),
    (["backup", "list", "--node", "PVE 1"], "node name"),
])
def test_bad_input_is_one_line_and_exit_2(argv, expected, capsys) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("dapx: error: ") and expected in err, err
    assert err.count("\n") == 1 and "Traceback" not in err
