"""PVE's ``/etc/pve/storage.cfg``: parse it into storage ids and their options.

The file is a list of sections, ``type: id`` followed by indented ``key value`` lines.
"""

from __future__ import annotations


def parse_storage_cfg(text: str) -> dict[str, dict[str, str]]:
    """``storage.cfg`` text -> ``{storage id: {"type": ..., option: value, ...}}`` in file order.

    Comments and blank lines are skipped; an option line before any section is ignored.
    """
    storages: dict[str, dict[str, str]] = {}
    current: dict[str, str] | None = None
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if not line[0].isspace() and ":" in line:
            kind, _, sid = line.partition(":")
            current = storages.setdefault(sid.strip(), {"type": kind.strip()})
        elif current is not None:
            key, _, value = line.strip().partition(" ")
            current[key] = value.strip()
    return storages
