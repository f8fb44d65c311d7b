"""sanoid.conf policies per guest (S2): templates, one block of our own, the rest untouched.

Decision (how the product marks what it owns in ``/etc/sanoid/sanoid.conf``): everything DAPX
writes sits between two marker comments, ``BEGIN_MARK`` and ``END_MARK``, at the end of the
file the first time. Inside: one ``# dapx-policy`` record per guest (so the block can be
written again without reading every guest), the five templates ``[template_dapx_<name>]``
and one section per dataset of each guest with a policy. Every byte outside the block is
the administrator's and is written back unchanged; a dataset the administrator already
configures is refused rather than configured twice.

Templates (retention counts hourly/daily/weekly/monthly/yearly, as the seed product defined
them): production 48/90/12/24/5, default 24/30/4/12/0, minimal 12/7/0/0/0, backup
0/30/8/12/2, vm 24/14/4/6/0; ``frequently`` is 0 and autosnap/autoprune are on in all.

Parsing follows Config::IniFiles (what sanoid reads with): blank lines, ``#``/``;``
comments, ``[section]`` headers, ``key = value`` (and ``key = <<EOT`` here-documents);
anything else, or a parameter before the first section, makes sanoid refuse the whole file,
so ``parse`` refuses it too and names the line. Pure: text in, text out.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field

from dapx.core.validate import validate_dataset_name, validate_vmid
from dapx.errors import InputError

CONF_PATH = "/etc/sanoid/sanoid.conf"
BEGIN_MARK = "# >>> BEGIN DAPX MANAGED BLOCK (snapshot-policy): do not edit inside <<<"
END_MARK = "# >>> END DAPX MANAGED BLOCK <<<"
RECORD = "# dapx-policy "
TEMPLATE_PREFIX = "dapx_"
PERIODS = ("hourly", "daily", "weekly", "monthly", "yearly")
COUNT_MAX = 100_000

TemplateName = Literal["production", "default", "minimal", "backup", "vm"]
TEMPLATES: dict[str, dict[str, int]] = {
    "production": {"hourly": 48, "daily": 90, "weekly": 12, "monthly": 24, "yearly": 5},
    "default": {"hourly": 24, "daily": 30, "weekly": 4, "monthly": 12, "yearly": 0},
    "minimal": {"hourly": 12, "daily": 7, "weekly": 0, "monthly": 0, "yearly": 0},
    "backup": {"hourly": 0, "daily": 30, "weekly": 8, "monthly": 12, "yearly": 2},
    "vm": {"hourly": 24, "daily": 14, "weekly": 4, "monthly": 6, "yearly": 0},
}

_SECTION = re.compile(r"\s*\[\s*(\S|\S.*\S)\s*\]\s*")
_PARAM = re.compile(r"\s*([^=]*?[^=\s])\s*=\s*(.*)")
_COMMENT = re.compile(r"\s*[#;].*")
_RECORD = re.compile(r"# dapx-policy guest=([0-9]+) template=([a-z]+)((?: [a-z]+=[0-9]+)*)"
                     r" datasets=(\S+)")


class SanoidConfError(InputError):
    """The node's sanoid.conf is one sanoid itself would refuse, or one we must not touch."""


class SanoidPolicy(BaseModel):
    """A guest's sanoid policy: a template and optional per-period overrides."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = Field(default=True, description="Off removes the guest's sections; "
                          "snapshots sanoid took stay until deleted.", examples=[True])
    template: TemplateName = Field(default="default", description="Retention template.",
                                   examples=["production"])
    hourly: Optional[int] = Field(default=None, ge=0, le=COUNT_MAX,
                                  description="Override: hourly snapshots to keep.",
                                  examples=[12])
    daily: Optional[int] = Field(default=None, ge=0, le=COUNT_MAX,
                                 description="Override: daily snapshots to keep.", examples=[7])
    weekly: Optional[int] = Field(default=None, ge=0, le=COUNT_MAX,
                                  description="Override: weekly snapshots to keep.", examples=[4])
    monthly: Optional[int] = Field(default=None, ge=0, le=COUNT_MAX,
                                   description="Override: monthly snapshots to keep.",
                                   examples=[6])
    yearly: Optional[int] = Field(default=None, ge=0, le=COUNT_MAX,
                                  description="Override: yearly snapshots to keep.",
                                  examples=[0])

    @property
    def overrides(self) -> dict[str, int]:
        return {p: getattr(self, p) for p in PERIODS if getattr(self, p) is not None}

    def counts(self) -> dict[str, int]:
        """The effective counts: the template's, then the overrides."""
        return TEMPLATES[self.template] | self.overrides


@dataclass(frozen=True)
class GuestRecord:
    """One guest's policy as the block stores it."""

    guest: int
    template: str
    overrides: dict[str, int]
    datasets: tuple[str, ...]

    def line(self) -> str:
        extra = "".join(f" {k}={v}" for k, v in self.overrides.items())
        return f"{RECORD}guest={self.guest} template={self.template}{extra} " \
               f"datasets={','.join(self.datasets)}"


@dataclass
class ConfFile:
    """A parsed sanoid.conf: its lines (without ``\\n``), its sections and our block."""

    lines: list[str]
    sections: dict[str, int] = field(default_factory=dict)
    """section name -> 1-based line of its first header outside our block"""
    block: tuple[int, int] | None = None
    """0-based indexes of our BEGIN and END marker lines"""
    records: dict[int, GuestRecord] = field(default_factory=dict)


def parse(text: str, path: str = CONF_PATH) -> ConfFile:
    """Parse ``text`` (a sanoid.conf). Raises SanoidConfError naming the line sanoid (via
    Config::IniFiles) would refuse, or a damaged DAPX block."""
    lines = text.split("\n")
    conf = ConfFile(lines)
    conf.block = _find_block(lines, path)
    in_section, heredoc = False, None
    for index, raw in enumerate(lines):
        line = raw.rstrip("\r")
        if heredoc is not None:
            if line == heredoc[0]:
                heredoc = None
            continue
        if line.strip() == "" or _COMMENT.fullmatch(line):
            continue
        header = _SECTION.fullmatch(line)
        if header:
            in_section = True
            if not _inside(conf.block, index):
                conf.sections.setdefault(header[1], index + 1)
            continue
        param = _PARAM.fullmatch(line)
        if not param:
            raise SanoidConfError(f"{path} line {index + 1} is malformed ({line.strip()[:60]!r}); "
                                  "sanoid refuses the file: fix that line first")
        if not in_section:
            raise SanoidConfError(f"{path} line {index + 1}: parameter "
                                  f"{param[1]!r} is outside any [section]; sanoid refuses the "
                                  "file: fix that line first")
        if param[2].startswith("<<"):
            heredoc = (param[2][2:], index + 1)
    if heredoc is not None:
        raise SanoidConfError(f"{path} line {heredoc[1]}: no end marker {heredoc[0]!r} for its "
                              "value; sanoid refuses the file: fix that line first")
    _check_after_block(conf, path)
    conf.records = _records(conf, path)
    return conf


def _inside(block: tuple[int, int] | None, index: int) -> bool:
    return block is not None and block[0] <= index <= block[1]


def _find_block(lines: list[str], path: str) -> tuple[int, int] | None:
    begins = [i for i, ln in enumerate(lines) if ln.rstrip("\r") == BEGIN_MARK]
    ends = [i for i, ln in enumerate(lines) if ln.rstrip("\r") == END_MARK]
    if not begins and not ends:
        return None
    if len(begins) != 1 or len(ends) != 1 or ends[0] < begins[0]:
        where = ", ".join(str(i + 1) for i in sorted(begins + ends))
        raise SanoidConfError(f"{path}: the DAPX block markers are damaged (lines {where}); "
                              "restore one BEGIN and one END marker (or remove both with the "
                              "sections between them) before changing policies")
    return begins[0], ends[0]


def _check_after_block(conf: ConfFile, path: str) -> None:
    """A parameter right after our block would belong to our last section: refuse it."""
    if conf.block is None:
        return
    for index in range(conf.block[1] + 1, len(conf.lines)):
        line = conf.lines[index].rstrip("\r")
        if line.strip() == "" or _COMMENT.fullmatch(line):
            continue
        if _SECTION.fullmatch(line):
            return
        raise SanoidConfError(f"{path} line {index + 1}: a parameter right after the DAPX "
                              "block belongs to no section of yours; move it into a [section]")


def _records(conf: ConfFile, path: str) -> dict[int, GuestRecord]:
    records: dict[int, GuestRecord] = {}
    if conf.block is None:
        return records
    for index in range(conf.block[0] + 1, conf.block[1]):
        line = conf.lines[index].rstrip("\r")
        if not line.startswith(RECORD):
            continue
        match = _RECORD.fullmatch(line)
        if not match or match[2] not in TEMPLATES:
            raise SanoidConfError(f"{path} line {index + 1}: damaged DAPX policy record; "
                                  "set the guest's policy again or remove the line")
        overrides = {k: int(v) for k, v in (p.split("=") for p in match[3].split())}
        records[int(match[1])] = GuestRecord(int(match[1]), match[2], overrides,
                                             tuple(match[4].split(",")))
    return records


# -----------------------------------------------------------------------------------------------
# Writing


def record_for(guest: int, policy: SanoidPolicy, datasets: list[str]) -> GuestRecord:
    """The block's record of ``policy`` for ``guest`` over ``datasets``. Raises InputError."""
    if not datasets:
        raise InputError(f"guest {guest} has no ZFS disk: sanoid manages ZFS datasets only")
    return GuestRecord(validate_vmid(guest), policy.template, policy.overrides,
                       tuple(validate_dataset_name(d) for d in datasets))


def block_lines(records: dict[int, GuestRecord]) -> list[str]:
    """Our block, markers included (no lines at all when there is no policy)."""
    if not records:
        return []
    lines = [BEGIN_MARK, "# Written by DAPX; changes inside this block are replaced. Keep "
             "your own sections outside it."]
    lines += [records[g].line() for g in sorted(records)]
    for name, counts in TEMPLATES.items():
        lines += ["", f"[template_{TEMPLATE_PREFIX}{name}]", "\tfrequently = 0"]
        lines += [f"\t{p} = {counts[p]}" for p in PERIODS]
        lines += ["\tautosnap = yes", "\tautoprune = yes"]
    for guest in sorted(records):
        record = records[guest]
        for dataset in record.datasets:
            lines += ["", f"[{dataset}]", f"\t# guest {guest}",
                      f"\tuse_template = {TEMPLATE_PREFIX}{record.template}"]
            lines += [f"\t{k} = {v}" for k, v in record.overrides.items()]
    return lines + ["", END_MARK]


def with_records(conf: ConfFile, records: dict[int, GuestRecord],
                 path: str = CONF_PATH) -> str:
    """The new file text: the administrator's lines unchanged, our block replaced (or
    appended, or removed when ``records`` is empty). Raises SanoidConfError when the
    administrator configures a dataset (or a template name) we would write."""
    ours = {f"template_{TEMPLATE_PREFIX}{t}" for t in TEMPLATES} | {
        d for r in records.values() for d in r.datasets}
    clash = sorted((conf.sections[name], name) for name in ours if name in conf.sections)
    if clash:
        line, name = clash[0]
        raise SanoidConfError(f"{path} line {line} already has its own section [{name}]; "
                              "DAPX will not configure it twice: remove that section or "
                              "leave this guest to it")
    block = block_lines(records)
    if conf.block is not None:
        start, end = conf.block
        lines = conf.lines[:start] + block + conf.lines[end + 1:]
        return "\n".join(lines)
    if not block:
        return "\n".join(conf.lines)
    head = "\n".join(conf.lines)
    if head and not head.endswith("\n"):
        head += "\n"
    return head + ("\n" if head.strip() else "") + "\n".join(block) + "\n"


def admin_text(text: str) -> str:
    """``text`` without our block: what must stay byte for byte (for checks and tests)."""
    conf = parse(text)
    if conf.block is None:
        return text
    start, end = conf.block
    return "\n".join(conf.lines[:start] + conf.lines[end + 1:])
