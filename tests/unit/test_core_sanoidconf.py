"""sanoid.conf: our block only, the administrator's bytes untouched, refusals that name the line."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from dapx.core import sanoidconf as sc
from dapx.errors import InputError

ADMIN = ("# my own policies\r\n[template_mine]\n\thourly = 3\n  daily=1\n\n"
         "[rpool/data/subvol-101-disk-0]\n    use_template = mine ; odd spacing kept\n"
         "\tnote = <<EOT\nfree text [not a section]\nEOT\n")
DISKS = ["rpool/data/vm-100-disk-0", "rpool/data/vm-100-disk-1"]


def record(guest: int = 100, **policy) -> sc.GuestRecord:
    return sc.record_for(guest, sc.SanoidPolicy(**policy), DISKS if guest == 100 else
                         [f"rpool/data/vm-{guest}-disk-0"])


def test_first_policy_appends_a_block_and_keeps_every_admin_byte() -> None:
    new = sc.with_records(sc.parse(ADMIN), {100: record(template="vm", hourly=2)})
    assert new.startswith(ADMIN)
    assert sc.admin_text(new).rstrip("\n") == ADMIN.rstrip("\n")
    conf = sc.parse(new)
    assert conf.records[100].template == "vm" and conf.records[100].overrides == {"hourly": 2}
    assert "[rpool/data/vm-100-disk-1]\n\t# guest 100\n\tuse_template = dapx_vm\n\thourly = 2" \
        in new
    assert "[template_dapx_production]\n\tfrequently = 0\n\thourly = 48\n\tdaily = 90\n" \
           "\tweekly = 12\n\tmonthly = 24\n\tyearly = 5" in new


def test_second_guest_and_changes_replace_only_the_block() -> None:
    first = sc.with_records(sc.parse(ADMIN + "[tail]\n\thourly = 1\n"), {100: record()})
    conf = sc.parse(first)
    records = conf.records | {200: record(200, template="minimal")}
    second = sc.with_records(conf, records)
    assert second.startswith(ADMIN)
    assert "[rpool/data/vm-200-disk-0]" in second and "[tail]" in second
    assert sc.admin_text(second) == sc.admin_text(first)
    removed = sc.with_records(sc.parse(second), {})
    assert sc.BEGIN_MARK not in removed and sc.admin_text(removed) == sc.admin_text(first)


def test_block_written_again_is_identical() -> None:
    once = sc.with_records(sc.parse(ADMIN), {100: record(template="backup", yearly=1)})
    again = sc.with_records(sc.parse(once), sc.parse(once).records)
    assert once == again


@pytest.mark.parametrize("text, where", [
    ("hourly = 2\n[x]\n", "line 1: parameter 'hourly' is outside"),
    ("[x]\nhourly 2\n", "line 2 is malformed"),
    ("[x]\n\tv = <<END\nno end\n", "line 2: no end marker"),
    (f"[x]\n{sc.BEGIN_MARK}\n", "markers are damaged"),
])
def test_a_file_sanoid_would_refuse_is_refused_naming_the_line(text: str, where: str) -> None:
    with pytest.raises(sc.SanoidConfError, match=where):
        sc.parse(text)


def test_a_dataset_the_administrator_configures_is_not_configured_twice() -> None:
    text = "[rpool/data/vm-100-disk-1]\n\thourly = 1\n"
    with pytest.raises(sc.SanoidConfError, match="line 1 already has its own section"):
        sc.with_records(sc.parse(text), {100: record()})


def test_a_parameter_after_our_block_is_refused() -> None:
    text = sc.with_records(sc.parse("[a]\n"), {100: record()}) + "hourly = 5\n"
    with pytest.raises(sc.SanoidConfError, match="right after the DAPX block"):
        sc.parse(text)


def test_bad_policies_are_refused() -> None:
    with pytest.raises(ValidationError):
        sc.SanoidPolicy(template="weekly-ish")
    with pytest.raises(ValidationError):
        sc.SanoidPolicy(hourly=-1)
    with pytest.raises(InputError, match="no ZFS disk"):
        sc.record_for(100, sc.SanoidPolicy(), [])
    with pytest.raises(InputError):
        sc.record_for(100, sc.SanoidPolicy(), ["rpool/x; rm -rf /"])
    assert sc.SanoidPolicy(template="minimal", daily=1).counts() == \
        {"hourly": 12, "daily": 1, "weekly": 0, "monthly": 0, "yearly": 0}


_admin_line = st.sampled_from(["", "# c", "; c", "  ", "\tk = v", "x=1", "  [s]  ", "[t]",
                               "key = value with = sign", "\r"])


@settings(max_examples=200, deadline=None)
@given(lines=st.lists(_admin_line, max_size=15), trailing=st.booleans())
def test_property_admin_bytes_survive(lines: list[str], trailing: bool) -> None:
    text = "[first]\n" + "\n".join(lines) + ("\n" if trailing else "")
    new = sc.with_records(sc.parse(text), {100: record()})
    assert new.startswith(text)
    again = sc.with_records(sc.parse(new), {100: record(template="vm")})
    assert again.startswith(text) and "use_template = dapx_vm" in again
