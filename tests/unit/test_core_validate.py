"""Validators refuse hostile or malformed input with a one-line message saying what to fix."""

from __future__ import annotations

import pytest
from pydantic import BaseModel, ValidationError

from dapx.core import validate as v
from dapx.core.cron import validate_cron
from dapx.core.types import CronLine, PoolName, Vmid
from dapx.errors import InputError

HOSTILE = ["a;rm -rf /", "$(x)", "`id`", "../x", "a/../b", "x\ny", "a b", "-rf", "a|b",
           "a&b", "a>b", "rpoöl", "a'b", 'a"b', "a\tb", "a\\b", "a*", "a?", "~root", "a\x00b",
           "", "a//b", "a/", "/a", "a@b", "a#b", "a/-x", "a/.", "a%b", "ünïcode"]


def _one_line(exc: pytest.ExceptionInfo) -> str:
    message = str(exc.value)
    assert "\n" not in message and message
    return message


@pytest.mark.parametrize("name", HOSTILE)
def test_dataset_names_refuse_hostile_input(name: str) -> None:
    with pytest.raises(InputError) as exc:
        v.validate_dataset_name(name)
    _one_line(exc)


@pytest.mark.parametrize("name", HOSTILE)
def test_subfolder_refuses_hostile_input(name: str) -> None:
    if name in ("", "a/", "/a"):  # empty means none; surrounding slashes are trimmed
        return
    with pytest.raises(InputError):
        v.validate_subfolder(name)


@pytest.mark.parametrize("name", ["rpool", "rpool/data", "tank/replica/vm-100-disk-0",
                                  "rpool/data/subvol-101-disk-0", "p1/a.b:c_d-e"])
def test_dataset_names_accept_zfs_names(name: str) -> None:
    assert v.validate_dataset_name(name) == name


@pytest.mark.parametrize("name,why", [
    ("1pool", "start with a letter"), ("mirror", "reserved"), ("raidz2x", "reserved"),
    ("log", "reserved"), ("c0t0d0", "disk name"), ("host:pool", "contains ':'"),
])
def test_pool_names_follow_zfs_and_syncoid_rules(name: str, why: str) -> None:
    with pytest.raises(InputError, match=why):
        v.validate_pool_name(name)


def test_name_length_limits() -> None:
    v.validate_dataset_name("p/" + "a" * 253)
    with pytest.raises(InputError, match="255"):
        v.validate_dataset_name("p/" + "a" * 254)
    with pytest.raises(InputError, match="longer than 255"):
        v.snapshot_path("p/" + "a" * 250, "snap-12")


def test_message_names_the_bad_character() -> None:
    with pytest.raises(InputError, match="contains ';'"):
        v.validate_dataset_name("rpool/a;b")


def test_subfolder() -> None:
    assert v.validate_subfolder("") == ""
    assert v.validate_subfolder("/replica/site-b/") == "replica/site-b"


@pytest.mark.parametrize("name", ["dapx_pve3-100_20250101T000000Z",
                                  "syncoid_host_2025-01-01:00:00:00-GMT00:00", "autosnap_x"])
def test_snapshot_names_accepted(name: str) -> None:
    assert v.validate_snapshot_name(name) == name


@pytest.mark.parametrize("name", ["a@b", "a/b", "-x", "a b", "$(x)", "", "a\n", "..", "a#b"])
def test_snapshot_names_refused(name: str) -> None:
    with pytest.raises(InputError):
        v.validate_snapshot_name(name)


@pytest.mark.parametrize("vmid", [100, 999_999_999, "100", "9100"])
def test_vmid_in_range(vmid: int | str) -> None:
    assert v.validate_vmid(vmid) == int(vmid)


@pytest.mark.parametrize("vmid", [99, 1_000_000_000, 0, -100, "99", "1e3", "100;", " 100",
                                  True, 100.0, None, "٣٠٠"])
def test_vmid_out_of_range_or_not_a_number(vmid: object) -> None:
    with pytest.raises(InputError) as exc:
        v.validate_vmid(vmid)  # type: ignore[arg-type]
    _one_line(exc)


def test_vmid_message_says_the_range() -> None:
    with pytest.raises(InputError, match=r"100\.\.999999999"):
        v.validate_vmid(99)


@pytest.mark.parametrize("name", ["pve1", "pve-2", "a", "n" * 63])
def test_node_names(name: str) -> None:
    assert v.validate_node_name(name) == name


@pytest.mark.parametrize("name", ["-pve", "PVE1", "pve1\n", "pve-", "pve_1", "pve.lab", "n" * 64, "a;b", ""])
def test_node_names_refused(name: str) -> None:
    with pytest.raises(InputError):
        v.validate_node_name(name)


@pytest.mark.parametrize("host", ["198.18.213.13", "pve3", "pve3.lab.example"])
def test_hosts(host: str) -> None:
    assert v.validate_host(host) == host


@pytest.mark.parametrize("host", ["::1", "fe80::1", "a;b", "-oProxyCommand=x", "a..b", ""])
def test_hosts_refused(host: str) -> None:
    with pytest.raises(InputError):
        v.validate_host(host)


def test_bridge_names() -> None:
    assert v.validate_bridge_name("vmbr0") == "vmbr0"
    assert v.validate_bridge_name("vmbr0.100") == "vmbr0.100"
    for bad in ["vmbr0;id", "a" * 16, "-x", "..", "br 0", "br/0", "", "vmbr0\n"]:
        with pytest.raises(InputError):
            v.validate_bridge_name(bad)


def test_bridge_map() -> None:
    assert v.parse_bridge_map("vmbr0=vmbr1,vmbr2=vmbr3") == {"vmbr0": "vmbr1", "vmbr2": "vmbr3"}
    assert v.parse_bridge_map(" vmbr0 = vmbr1 ") == {"vmbr0": "vmbr1"}
    assert v.parse_bridge_map("") == {}


@pytest.mark.parametrize("text,why", [
    ("vmbr0", "old=new"), ("vmbr0=vmbr1,vmbr0=vmbr2", "twice"), ("vmbr0=$(reboot)", "bridge"),
    ("vmbr0=vmbr1,", "old=new"), ("=vmbr1", "bridge"),
])
def test_bridge_map_refused(text: str, why: str) -> None:
    with pytest.raises(InputError, match=why):
        v.parse_bridge_map(text)


def test_compression() -> None:
    assert [v.validate_compression(c) for c in ("lz4", "ZSTD", "gzip", "none")] == \
        ["lz4", "zstd", "gzip", "none"]
    with pytest.raises(InputError, match="lz4, zstd, gzip, none"):
        v.validate_compression("xz")


@pytest.mark.parametrize("text,normal,nbytes", [
    ("10M", "10M", 10 * 1024**2), ("10m", "10M", 10 * 1024**2), ("500k", "500k", 500 * 1024),
    ("500K", "500k", 500 * 1024), ("1g", "1G", 1024**3), ("128k", "128k", 128 * 1024),
])
def test_bandwidth(text: str, normal: str, nbytes: int) -> None:
    assert v.parse_bandwidth(text) == normal
    assert v.bandwidth_bytes(text) == nbytes


@pytest.mark.parametrize("text", ["10", "10 M", "1.5M", "0M", "-1M", "10MB", "10M;x", "100k",
                                  "", "1T"])
def test_bandwidth_refused(text: str) -> None:
    with pytest.raises(InputError):
        v.parse_bandwidth(text)


def test_storage_ids_and_paths() -> None:
    assert v.validate_storage_id("local-zfs") == "local-zfs"
    for bad in ["1local", "local-", "a b", "a:b", ""]:
        with pytest.raises(InputError):
            v.validate_storage_id(bad)
    assert v.validate_abs_path("/root/.ssh/id_ed25519") == "/root/.ssh/id_ed25519"
    for bad in ["relative", "/a/../b", "/a b", "/a;b", "/$(x)", "", "/a\n"]:
        with pytest.raises(InputError):
            v.validate_abs_path(bad)


GOOD_CRONS = ["*/15 * * * *", "0 2 * * *", "0 */6 * * 1-5", "5,35 1-23/2 1 jan-jun mon-fri",
              "0 0 1 * 0", "0 0 * * 7", "30 3 * * SUN", "0-59/5 * * * *", "5/15 * * * *",
              "0 0 31 12 *", "@daily", "@HOURLY", "  0   2 * * *  "]
BAD_CRONS = ["* * * *", "* * * * * *", "60 * * * *", "* 24 * * *", "* * 0 * *", "* * 32 * *",
             "* * * 13 *", "* * * * 8", "*/0 * * * *", "5-1 * * * *", "* * * foo *",
             "* * * * mon-sun#2", "* * L * *", "H * * * *", "@reboot", "*/61 * * * *",
             "0 2 * * *\n* * * * *", "a;b * * * *", "", "1,,2 * * * *", "* * * * fri-mon"]


@pytest.mark.parametrize("line", GOOD_CRONS)
def test_cron_good(line: str) -> None:
    expected = " ".join(line.split())
    assert validate_cron(line) == (expected.lower() if expected.startswith("@") else expected)


@pytest.mark.parametrize("line", BAD_CRONS)
def test_cron_bad(line: str) -> None:
    with pytest.raises(InputError) as exc:
        validate_cron(line)
    _one_line(exc)


def test_cron_message_names_field() -> None:
    with pytest.raises(InputError, match="hour 24 .* out of range 0-23"):
        validate_cron("0 24 * * *")


def test_every_accepted_cron_is_one_prefect_accepts() -> None:
    # Prefect's CronSchedule validates with its vendored croniter: what we accept must pass.
    from prefect._vendor.croniter import croniter

    for line in GOOD_CRONS:
        assert croniter.is_valid(validate_cron(line)), line


def test_pydantic_types_report_field_errors() -> None:
    class Job(BaseModel):
        vmid: Vmid
        pool: PoolName
        schedule: CronLine

    job = Job(vmid="9100", pool="rpool", schedule="*/15  * * * *")
    assert (job.vmid, job.schedule) == (9100, "*/15 * * * *")
    with pytest.raises(ValidationError, match="out of range"):
        Job(vmid=99, pool="rpool", schedule="@daily")
    with pytest.raises(ValidationError, match="contains ';'"):
        Job(vmid=100, pool="a;b", schedule="@daily")
